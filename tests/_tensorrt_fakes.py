"""Host-memory doubles of TensorRT and the CUDA runtime, to test the backend's own
plumbing (buffers, channel selection, profile choice, batching, CUDA-graph caching)
on a machine without either. They say nothing about TensorRT itself: the GPU tests do.

"Device" memory is host memory from ctypes; copies are memmoves. The fake engines
compute simple functions whose results identify what they were given:

    encoder   image (B, 3, S, S) -> embeddings (B, C, g, g) filled with image[b, 0, 0, 0] + b_in_call
    decoder   -> iou[b, c] = 10 b + c + first point's x / 1000,  low_res[b, c] = the same constant
"""

import ctypes
from unittest import mock

import numpy as np

INPUT, OUTPUT = "input", "output"


class FakeCudaRuntime:
    """The subset of cuda.bindings.runtime the backend calls, over host memory."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.blocks = {}
        self.events = []

    def _alloc(self, n):
        block = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr):
        self.blocks.pop(ptr, None)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaSetDevice(self, device):
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.events.append("capture")
        return (0,)

    def cudaStreamEndCapture(self, stream):
        return 0, f"graph{len(self.events)}"

    def cudaGraphInstantiate(self, graph, flags):
        return 0, "exec-" + graph

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        self.events.append(("destroy", graph))
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        self.events.append(("launch", graph))
        return (0,)


def _view(ptr, shape):
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * max(count, 1)).from_address(ptr))[:count].reshape(shape)


class FakeEngine:
    def __init__(self, io, profiles, run):
        self.io, self.profiles, self.run = io, profiles, run
        self.num_io_tensors = len(io)
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_shape(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_mode(self, name):
        return self.io[name][1]

    def get_tensor_profile_shape(self, name, profile):
        return self.profiles[profile][name]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.fed = engine, {}, {}, []

    def set_optimization_profile_async(self, profile, stream):
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        self.engine.run(self)
        return True


def fake_tensorrt(image_size=64, channels=8, grid=4, max_batch=2, max_prompts=3, max_points=4):
    """A fake `tensorrt` module and the encoder / decoder plans (bytes) it deserializes."""
    s, g, m = image_size, grid, 4 * grid

    def encode(ctx):
        b = ctx.shapes["image"][0]
        image = _view(ctx.addresses["image"], (b, 3, s, s))
        out = _view(ctx.addresses["image_embeddings"], (b, channels, g, g))
        out[...] = image[:, 0, 0, 0][:, None, None, None] + np.arange(b)[:, None, None, None]

    def decode(ctx):
        b, n = ctx.shapes["point_coords"][:2]
        coords = _view(ctx.addresses["point_coords"], (b, n, 2)).copy()
        labels = _view(ctx.addresses["point_labels"], (b, n)).copy()
        ctx.fed.append((coords, labels))
        value = 10 * np.arange(b)[:, None] + np.arange(4)[None] + coords[:, :1, 0] / 1000
        _view(ctx.addresses["iou_predictions"], (b, 4))[...] = value
        _view(ctx.addresses["low_res_masks"], (b, 4, m, m))[...] = value[:, :, None, None]

    def decoder_profile(b):
        return {"point_coords": ((1, 1, 2), (1, 2, 2), (b, max_points, 2)),
                "point_labels": ((1, 1), (1, 2), (b, max_points)),
                "mask_input": ((1, 1, m, m), (1, 1, m, m), (b, 1, m, m)),
                "has_mask_input": ((1,), (1,), (b,))}

    encoder = FakeEngine(
        {"image": ((-1, 3, s, s), INPUT), "image_embeddings": ((-1, channels, g, g), OUTPUT)},
        [{"image": ((1, 3, s, s), (1, 3, s, s), (max_batch, 3, s, s))}], encode,
    )
    decoder = FakeEngine(
        {"image_embeddings": ((1, channels, g, g), INPUT), "point_coords": ((-1, -1, 2), INPUT),
         "point_labels": ((-1, -1), INPUT), "mask_input": ((-1, 1, m, m), INPUT), "has_mask_input": ((-1,), INPUT),
         "iou_predictions": ((-1, 4), OUTPUT), "low_res_masks": ((-1, 4, m, m), OUTPUT)},
        [decoder_profile(1), decoder_profile(max_prompts)], decode,
    )
    trt = mock.MagicMock()
    trt.__version__ = "10.13.0"
    trt.TensorIOMode.INPUT = INPUT
    trt.nptype = lambda dtype: np.float32
    plans = {b"encoder": encoder, b"decoder": decoder}
    trt.Runtime.return_value.deserialize_cuda_engine.side_effect = lambda plan: plans.get(plan)
    return trt, encoder, decoder
