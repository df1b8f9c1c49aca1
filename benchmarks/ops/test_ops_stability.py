"""Stability score: segment_anything.utils.amg.calculate_stability_score against sam-edge's."""

import pytest

from op_inputs import mask_logits

SHAPE = (8, 480, 640)  # 8 masks at a VGA original size


@pytest.fixture(scope="module")
def logits():
    return mask_logits(*SHAPE)


def test_official(benchmark, logits):
    torch = pytest.importorskip("torch")
    amg = pytest.importorskip("segment_anything.utils.amg")
    benchmark.group = "stability"
    benchmark.extra_info.update(implementation="official amg.calculate_stability_score (torch)", shape=SHAPE)
    x = torch.from_numpy(logits)
    benchmark(amg.calculate_stability_score, x, 0.0, 1.0)


def test_ours(benchmark, logits, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "stability"
    benchmark.extra_info.update(implementation=postprocess_path, shape=SHAPE)
    benchmark(pp.stability_score, logits, 0.0, 1.0)
