"""Batched NMS: torchvision.ops.batched_nms (what the official mask generator calls) against sam-edge's."""

import numpy as np
import pytest

COUNT = 1000  # boxes, as a generator's crop yields with 32 x 32 points x 3 masks before filtering


@pytest.fixture(scope="module")
def boxes_scores():
    rng = np.random.default_rng(0)
    xy = rng.random((COUNT, 2)).astype(np.float32) * 1000
    boxes = np.concatenate([xy, xy + 20 + rng.random((COUNT, 2)).astype(np.float32) * 200], axis=1)
    return boxes, rng.random(COUNT).astype(np.float32), np.zeros(COUNT, np.int64)


def test_official(benchmark, boxes_scores):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    benchmark.group = "nms"
    benchmark.extra_info.update(implementation="torchvision.ops.batched_nms", boxes=COUNT)
    benchmark(ops.batched_nms, *map(torch.from_numpy, boxes_scores), 0.7)


def test_ours(benchmark, boxes_scores, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "nms"
    benchmark.extra_info.update(implementation=postprocess_path, boxes=COUNT)
    benchmark(pp.batched_nms, *boxes_scores, 0.7)
