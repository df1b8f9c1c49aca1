"""Connected components and small-region removal: OpenCV (what the official
amg.remove_small_regions calls) against sam-edge's."""

import numpy as np
import pytest

from op_inputs import blobby_masks

SHAPE = (4, 480, 640)
AREA = 100


@pytest.fixture(scope="module")
def masks():
    return blobby_masks(*SHAPE, seed=1)


def test_components_official(benchmark, masks):
    cv2 = pytest.importorskip("cv2")
    benchmark.group = "connected-components"
    benchmark.extra_info.update(implementation="cv2.connectedComponentsWithStats (8-connected)", shape=SHAPE)
    benchmark(lambda: [cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8) for m in masks])


def test_components_ours(benchmark, masks, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "connected-components"
    benchmark.extra_info.update(implementation=postprocess_path, shape=SHAPE)
    benchmark(lambda: [pp.connected_components(m) for m in masks])


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_official(benchmark, masks, mode):
    pytest.importorskip("cv2")
    amg = pytest.importorskip("segment_anything.utils.amg")
    benchmark.group = f"remove-small-regions-{mode}"
    benchmark.extra_info.update(implementation="official amg.remove_small_regions (cv2)", shape=SHAPE, area=AREA)
    benchmark(lambda: [amg.remove_small_regions(m, AREA, mode) for m in masks])


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_ours(benchmark, masks, mode, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = f"remove-small-regions-{mode}"
    benchmark.extra_info.update(implementation=postprocess_path + " (batch)", shape=SHAPE, area=AREA)
    benchmark(pp.remove_small_regions_batch, masks, AREA, mode)
