"""CUDA buffers and error reporting (sam_edge.runtime.cuda_buffers): errors carry CUDA's message,
device-array views, the array provider."""

import numpy as np
import pytest

from sam_edge.runtime import cuda_buffers
from tensorrt_runtime_doubles import _FakeAllocation


# ---------------------------------------------------------------- CUDA errors


def test_cuda_errors_carry_cuda_s_message():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="needs cuda-python (cuda-bindings)")
    status = runtime.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(cuda_buffers.CudaError, match=r"cudaMalloc\(8\) failed: cudaErrorInvalidValue: invalid argument"):
        cuda_buffers.cuda_check((status, None), "cudaMalloc(8)")
    assert cuda_buffers.cuda_check((runtime.cudaError_t.cudaSuccess, 7), "x") == 7
    assert cuda_buffers.cuda_check((runtime.cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
    assert cuda_buffers.cuda_check((runtime.cudaError_t.cudaSuccess,), "x") is None


def test_a_real_cuda_call_is_checked():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="needs cuda-python (cuda-bindings)")
    result = runtime.cudaGetDeviceCount()
    if int(result[0]) == 0:
        assert cuda_buffers.cuda_check(result, "cudaGetDeviceCount") >= 0
    else:  # no driver or no GPU here: the error names itself
        name = runtime.cudaGetErrorName(result[0])[1].decode()
        with pytest.raises(cuda_buffers.CudaError, match=f"cudaGetDeviceCount failed: {name}"):
            cuda_buffers.cuda_check(result, "cudaGetDeviceCount")



# ---------------------------------------------------------------- device arrays


@pytest.mark.parametrize("index,offset,shape", [(0, 0, (3, 5)), (2, 2 * 60, (3, 5)), (-1, 3 * 60, (3, 5)),
                                                (slice(1, 3), 60, (2, 3, 5)), (slice(3, None), 180, (1, 3, 5)),
                                                (slice(2, 1), 120, (0, 3, 5))])
def test_device_array_views(index, offset, shape):
    """Views on the first axis are the parent's memory at row offsets (float32, rows of 3 x 5)."""
    parent = cuda_buffers.DeviceArray(_FakeAllocation.ptr, (4, 3, 5), np.float32, owner=_FakeAllocation())
    view = parent[index]
    assert view.ptr == parent.ptr + offset and view.shape == shape
    assert view.__cuda_array_interface__["data"] == (view.ptr, False)
    assert view.__cuda_array_interface__["typestr"] == "<f4"


@pytest.mark.parametrize("index,error", [(4, IndexError), (-5, IndexError), (slice(0, 4, 2), ValueError), ((0, 1), TypeError)])
def test_device_array_rejects(index, error):
    with pytest.raises(error):
        cuda_buffers.DeviceArray(_FakeAllocation.ptr, (4, 3), np.float32, owner=_FakeAllocation())[index]



def test_array_provider_rejects_unknown_library():
    with pytest.raises(ValueError, match="array library"):
        cuda_buffers.array_provider("jax")
