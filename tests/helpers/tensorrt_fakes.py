"""Spec'd fakes of TensorRT 10's Python API (`tensorrt`) and cuda-python's runtime
(`cuda.bindings.runtime`), so that build_engine, build_tensorrt_bundle and
TensorRTBackend run end to end on a machine with neither.

They hold only names the real APIs have: the module is a ModuleType with the real
names and nothing else, every class uses __slots__, so an unknown name raises
AttributeError as the real bindings do. They refuse what TensorRT refuses; each
refusal cites the page it follows. Names starting with `fake_` are for tests to
inspect and exist in neither real API.

What they are not: TensorRT. An engine built from an ONNX graph runs that graph with
ONNX Runtime on the CPU (so results are the graph's, not TensorRT's kernels);
"device" memory is host memory from ctypes, every copy is checked against the
allocation it touches, and work queued on a capturing stream is recorded into the
CUDA graph and replayed by cudaGraphLaunch.

This module assembles the fake `tensorrt` module and the backend's synthetic engines; the
fakes live in fake_cuda_runtime.py (cuda-python), fake_tensorrt_types.py (enums, plan
format), fake_tensorrt_builder.py (build side) and fake_tensorrt_runtime.py (run side).

Documentation followed (cited below by the short name in brackets):
  [builder-perf]   TensorRT 10 Developer Guide, "Optimizing Builder Performance: Timing Cache",
                   https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/performance/builder-performance.html
  [precision]      TensorRT 10 Developer Guide, "Precision Control: Strongly Typed Networks",
                   https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/precision-control.html;
                   the API usage error it gives for precision flags: NVIDIA/TensorRT #4253, #4228
  [builder-api]    TensorRT Python API, "Builder" (NetworkDefinitionCreationFlag.STRONGLY_TYPED: "Setting
                   layer precision and layer output types is not allowed"; IBuilderConfig),
                   https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Builder.html
  [builder-flag]   TensorRT C++ API, "BuilderFlag": kTF32 "Enabled by default"
  [onnx-parser]    "No importer registered for op" for com.microsoft nodes: NVIDIA/TensorRT #3558
  [shape-tensors]  TensorRT C++ API, "ITensor::isShapeTensor" (shape-tensor network I/O must be Int32 /
                   Int64; NVIDIA forum 197588), and onnx/onnx-tensorrt #483
  [version-compat] TensorRT 10 Developer Guide, "Version Compatibility" (setEngineHostCodeAllowed),
                   https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/version-compatibility.html
  [runtime-api]    TensorRT Python API, "Runtime": deserialize_cuda_engine returns None when it fails,
                   https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-860-ea/api/python_api/infer/Core/Runtime.html
  [enqueue]        TensorRT C++ API, "IExecutionContext::setTensorAddress / enqueueV3": every I/O tensor
                   needs an address and every dynamic input a shape (NVIDIA/TensorRT #2930; the
                   "Address is not set for input tensor" API usage error)
  [multi-gpu]      TensorRT Developer Guide FAQ, "How do I use TensorRT on multiple GPUs?": an engine is
                   bound to the device current when it was deserialized; execution needs that device current
  [cuda-capture]   CUDA Programming Guide, "CUDA Graphs: Stream Capture": synchronizing a capturing stream
                   is invalid (cudaErrorStreamCaptureUnsupported) and invalidates the capture
  [cuda-api]       CUDA Runtime API, cudaGraphInstantiateWithFlags (CUDA >= 11.4; the same signature in
                   cuda-python 11.8, 12 and 13, unlike cudaGraphInstantiate)
"""

import types
from typing import List, Tuple

import numpy as np

from fake_cuda_runtime import COMPUTE_CAPABILITY, GPU_NAME, FakeCudaRuntime  # noqa: F401 (tests import them from here)
from fake_tensorrt_builder import builder_classes
from fake_tensorrt_runtime import runtime_classes
from fake_tensorrt_types import _NUMPY_TYPES, SYNTHETIC_KERNELS, TENSORRT_VERSION, BuilderFlag, DataType  # noqa: F401
from fake_tensorrt_types import (HardwareCompatibilityLevel, LayerType, MemoryPoolType, NetworkDefinitionCreationFlag,
                                 TensorIOMode, plan_header, synthetic_plan)  # noqa: F401 (plan_header: for tests)


def fake_tensorrt(cuda: FakeCudaRuntime, version: str = TENSORRT_VERSION) -> types.ModuleType:
    """A `tensorrt` module over `cuda` (whose current device and memory the engines use)."""
    built = builder_classes(version)
    ran = runtime_classes(cuda, version, built["_error"], built["_require_logger"])
    ILogger, Logger, IProgressMonitor, Builder = built["ILogger"], built["Logger"], built["IProgressMonitor"], built["Builder"]
    IBuilderConfig, INetworkDefinition, OnnxParser = built["IBuilderConfig"], built["INetworkDefinition"], built["OnnxParser"]
    IParserError, ITimingCache, IOptimizationProfile = built["IParserError"], built["ITimingCache"], built["IOptimizationProfile"]
    IHostMemory, ITensor, ILayer = built["IHostMemory"], built["ITensor"], built["ILayer"]
    Runtime, ICudaEngine, IExecutionContext = ran["Runtime"], ran["ICudaEngine"], ran["IExecutionContext"]

    def nptype(trt_type):
        dtype = DataType(int(trt_type))
        if dtype not in _NUMPY_TYPES:
            raise TypeError(f"Could not resolve TensorRT datatype {dtype.name} to an equivalent numpy datatype.")
        return _NUMPY_TYPES[dtype]

    module = types.ModuleType("tensorrt")
    for name, value in dict(
        __version__=version, ILogger=ILogger, Logger=Logger, IProgressMonitor=IProgressMonitor, Builder=Builder,
        IBuilderConfig=IBuilderConfig, INetworkDefinition=INetworkDefinition, OnnxParser=OnnxParser,
        IParserError=IParserError, ITimingCache=ITimingCache, IOptimizationProfile=IOptimizationProfile,
        IHostMemory=IHostMemory, ITensor=ITensor, ILayer=ILayer, Runtime=Runtime, ICudaEngine=ICudaEngine,
        IExecutionContext=IExecutionContext, DataType=DataType, BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, TensorIOMode=TensorIOMode,
        MemoryPoolType=MemoryPoolType, HardwareCompatibilityLevel=HardwareCompatibilityLevel, LayerType=LayerType,
        nptype=nptype, float32=DataType.FLOAT, float16=DataType.HALF, int8=DataType.INT8, int32=DataType.INT32,
        int64=DataType.INT64, bool=DataType.BOOL, uint8=DataType.UINT8, bfloat16=DataType.BF16,
    ).items():
        setattr(module, name, value)
    return module


# ---------------------------------------------------------------- the backend's synthetic engines


class FakeStack:
    """A fake `tensorrt` module, a fake CUDA runtime, and the synthetic plans of `synthetic_engines`."""

    __slots__ = ("trt", "cuda", "plans", "fed")

    def __init__(self, trt, cuda, plans, fed) -> None:
        self.trt, self.cuda, self.plans, self.fed = trt, cuda, plans, fed


def synthetic_engines(image_size=64, channels=8, grid=4, max_batch=2, max_prompts=3, max_points=4,
                      device_count=1, decoder_extra_inputs=(), version_compatible=False) -> FakeStack:
    """TensorRT and CUDA fakes and two plans whose engines compute functions that identify their inputs:

        encoder  image (B, 3, S, S) -> embeddings (B, C, g, g) filled with image[b, 0, 0, 0] + b (b within the call)
        decoder  -> iou[b, c] = 10 b + c + first point's x / 1000; low_res[b, c] = the same constant

    The decoder records the (coords, labels) it was given in `fed`."""
    s, g, m = image_size, grid, 4 * grid
    fed: List[Tuple[np.ndarray, np.ndarray]] = []
    tag = f"{id(fed):x}"

    def encode(inputs):
        image = inputs["image"]
        b = image.shape[0]
        value = image[:, 0, 0, 0][:, None, None, None] + np.arange(b)[:, None, None, None]
        return {"image_embeddings": np.broadcast_to(value, (b, channels, g, g)).astype(np.float32)}

    def decode(inputs):
        coords, labels = inputs["point_coords"], inputs["point_labels"]
        fed.append((coords.copy(), labels.copy()))
        b = coords.shape[0]
        value = (10 * np.arange(b)[:, None] + np.arange(4)[None] + coords[:, :1, 0] / 1000).astype(np.float32)
        return {"iou_predictions": value, "low_res_masks": np.broadcast_to(value[:, :, None, None], (b, 4, m, m))}

    SYNTHETIC_KERNELS["encoder-" + tag], SYNTHETIC_KERNELS["decoder-" + tag] = encode, decode

    def decoder_profile(b):
        profile = {"point_coords": ((1, 1, 2), (1, 2, 2), (b, max_points, 2)),
                   "point_labels": ((1, 1), (1, 2), (b, max_points)),
                   "mask_input": ((1, 1, m, m), (1, 1, m, m), (b, 1, m, m)),
                   "has_mask_input": ((1,), (1,), (b,))}
        profile.update({name: ((1,), (1,), (1,)) for name in decoder_extra_inputs})
        return profile

    decoder_io = {"image_embeddings": ((1, channels, g, g), "input"), "point_coords": ((-1, -1, 2), "input"),
                  "point_labels": ((-1, -1), "input"), "mask_input": ((-1, 1, m, m), "input"),
                  "has_mask_input": ((-1,), "input")}
    decoder_io.update({name: ((-1,), "input") for name in decoder_extra_inputs})
    decoder_io.update({"iou_predictions": ((-1, 4), "output"), "low_res_masks": ((-1, 4, m, m), "output")})
    plans = {
        "encoder": synthetic_plan(
            {"image": ((-1, 3, s, s), "input"), "image_embeddings": ((-1, channels, g, g), "output")},
            [{"image": ((1, 3, s, s), (1, 3, s, s), (max_batch, 3, s, s))}], "encoder-" + tag,
            version_compatible=version_compatible),
        "decoder": synthetic_plan(decoder_io, [decoder_profile(1), decoder_profile(max_prompts)], "decoder-" + tag,
                                  version_compatible=version_compatible),
    }
    cuda = FakeCudaRuntime(device_count)
    return FakeStack(fake_tensorrt(cuda), cuda, plans, fed)
