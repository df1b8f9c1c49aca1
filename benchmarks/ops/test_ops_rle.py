"""Run-length encoding: segment_anything.utils.amg (and pycocotools) against sam-edge's,
for the three forms the mask generator uses."""

import numpy as np
import pytest

from op_inputs import blobby_masks

SHAPE = (8, 480, 640)


@pytest.fixture(scope="module")
def masks():
    return blobby_masks(*SHAPE)


def test_encode_official(benchmark, masks):
    torch = pytest.importorskip("torch")
    amg = pytest.importorskip("segment_anything.utils.amg")
    benchmark.group = "rle-encode"
    benchmark.extra_info.update(implementation="official amg.mask_to_rle_pytorch", shape=SHAPE)
    benchmark(amg.mask_to_rle_pytorch, torch.from_numpy(masks))


def test_encode_ours(benchmark, masks, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "rle-encode"
    benchmark.extra_info.update(implementation=postprocess_path, shape=SHAPE)
    benchmark(pp.mask_to_rle, masks)


def test_compressed_official(benchmark, masks):
    mask_utils = pytest.importorskip("pycocotools.mask")
    benchmark.group = "rle-compressed"
    benchmark.extra_info.update(implementation="pycocotools.mask.encode (Fortran order)", shape=SHAPE)
    benchmark(lambda: mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))))


def test_compressed_ours(benchmark, masks, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "rle-compressed"
    benchmark.extra_info.update(implementation=postprocess_path, shape=SHAPE)
    benchmark(pp.encode_rle, masks)


def test_decode_official(benchmark, masks):
    amg = pytest.importorskip("segment_anything.utils.amg")
    import sam_edge.postprocess as pp

    rles = pp.mask_to_rle(masks)
    benchmark.group = "rle-decode"
    benchmark.extra_info.update(implementation="official amg.rle_to_mask", shape=SHAPE)
    benchmark(lambda: [amg.rle_to_mask(r) for r in rles])


def test_decode_ours(benchmark, masks, postprocess_path):
    import sam_edge.postprocess as pp

    rles = pp.mask_to_rle(masks)
    benchmark.group = "rle-decode"
    benchmark.extra_info.update(implementation=postprocess_path, shape=SHAPE)
    benchmark(pp.decode_rle, rles)
