"""The fake TensorRT's shared machinery: its enums (the real names only), the ONNX-to-TensorRT
tables, and the plan format that the fake builder writes and the fake runtime reads
(`synthetic_plan` writes plans for the backend's tests; `plan_header` is for tests to
inspect)."""

import ctypes
import enum
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fake_cuda_runtime import COMPUTE_CAPABILITY, FakeCudaRuntime

TENSORRT_VERSION = "10.13.0.35"
_PLAN_MAGIC = b"FAKE-TENSORRT-PLAN\n"
_CACHE_MAGIC = b"FAKE-TENSORRT-TIMING-CACHE\n"


# ---------------------------------------------------------------- TensorRT: enums


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11
    REJECT_EMPTY_ALGORITHMS = 12
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14
    FP8 = 15
    BF16 = 17
    INT4 = 22


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1


class LayerType(enum.IntEnum):
    """TensorRT's layer type names (the values are not TensorRT's)."""

    CONVOLUTION = 0
    ACTIVATION = 1
    POOLING = 2
    SCALE = 3
    SOFTMAX = 4
    CONCATENATION = 5
    ELEMENTWISE = 6
    UNARY = 7
    SHUFFLE = 8
    REDUCE = 9
    CONSTANT = 10
    MATRIX_MULTIPLY = 11
    GATHER = 12
    SLICE = 13
    SHAPE = 14
    RESIZE = 15
    IDENTITY = 16
    CAST = 17
    QUANTIZE = 18
    DEQUANTIZE = 19
    NORMALIZATION = 20
    SELECT = 21
    FILL = 22
    EINSUM = 23


#: Precision flags that a strongly typed network refuses: it takes its types from the graph. [precision]
_TYPE_FLAGS = (BuilderFlag.FP16, BuilderFlag.INT8, BuilderFlag.BF16, BuilderFlag.FP8, BuilderFlag.INT4)
_ONNX_LAYER_TYPES = {
    "Conv": LayerType.CONVOLUTION, "MatMul": LayerType.MATRIX_MULTIPLY, "Gemm": LayerType.MATRIX_MULTIPLY,
    "Softmax": LayerType.SOFTMAX, "LayerNormalization": LayerType.NORMALIZATION, "Concat": LayerType.CONCATENATION,
    "ReduceMean": LayerType.REDUCE, "ReduceSum": LayerType.REDUCE, "ReduceMax": LayerType.REDUCE,
    "Relu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION, "Tanh": LayerType.ACTIVATION,
    "Erf": LayerType.UNARY, "Sqrt": LayerType.UNARY, "Exp": LayerType.UNARY, "Cos": LayerType.UNARY,
    "Sin": LayerType.UNARY, "Reshape": LayerType.SHUFFLE, "Transpose": LayerType.SHUFFLE,
    "Squeeze": LayerType.SHUFFLE, "Unsqueeze": LayerType.SHUFFLE, "Flatten": LayerType.SHUFFLE,
    "Constant": LayerType.CONSTANT, "Gather": LayerType.GATHER, "Slice": LayerType.SLICE,
    "Shape": LayerType.SHAPE, "Resize": LayerType.RESIZE, "Identity": LayerType.IDENTITY, "Cast": LayerType.CAST,
    "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE, "Where": LayerType.SELECT,
    "ConstantOfShape": LayerType.FILL, "Einsum": LayerType.EINSUM,
}
_ONNX_TO_TRT_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32,
                      9: DataType.BOOL, 2: DataType.UINT8, 16: DataType.BF16, 7: DataType.INT64}
_NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
                DataType.INT64: np.int64}
#: Operands that TensorRT must read as shape tensors. [shape-tensors]
_SHAPE_TENSOR_OPERANDS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
                          "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Range": (0, 1, 2), "Pad": (1,),
                          "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "TopK": (1,), "OneHot": (1,)}

#: Kernels of synthetic plans (plans written by `synthetic_plan`, not by the fake builder).
SYNTHETIC_KERNELS: Dict[str, Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = {}


def _pack_plan(header: Dict[str, Any], payload: bytes = b"") -> bytes:
    return _PLAN_MAGIC + json.dumps(header).encode() + b"\n" + payload


def _unpack_plan(plan: bytes) -> Tuple[Optional[Dict[str, Any]], bytes]:
    if not plan.startswith(_PLAN_MAGIC):
        return None, b""
    head, _, payload = plan[len(_PLAN_MAGIC):].partition(b"\n")
    return json.loads(head), payload


def synthetic_plan(io: Dict[str, Tuple[Sequence[int], str]], profiles: Sequence[Dict[str, Sequence]],
                   kernel: str, version: str = TENSORRT_VERSION, version_compatible: bool = False) -> bytes:
    """A plan whose engine runs SYNTHETIC_KERNELS[kernel]: io is {name: (shape with -1, "input" | "output")},
    all float32; profiles are {input: (min, opt, max)}."""
    header = {
        "tensorrt": version, "compute_capability": list(COMPUTE_CAPABILITY), "hardware_compatibility": "NONE",
        "version_compatible": version_compatible, "kernel": kernel,
        "io": [[name, list(shape), int(DataType.FLOAT), int(TensorIOMode.INPUT if mode == "input" else TensorIOMode.OUTPUT)]
               for name, (shape, mode) in io.items()],
        "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
    }
    return _pack_plan(header)



def _topological_order(graph) -> List[int]:
    """Node indexes with every producer before its consumers."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(range(len(graph.node))), []
    while pending:
        still = [i for i in pending if not all(name in ready for name in graph.node[i].input)]
        for i in pending:
            if i not in still:
                order.append(i)
                ready.update(graph.node[i].output)
        if len(still) == len(pending):
            raise ValueError("fake parser: the graph has a cycle or an input nobody produces")
        pending = still
    return order


def plan_header(plan: bytes) -> Dict[str, Any]:
    """What a fake plan records (flags, typing, profiles, I/O): for tests to inspect."""
    header, _ = _unpack_plan(bytes(plan))
    if header is None:
        raise ValueError("not a fake TensorRT plan")
    return header


def _device_view(cuda: FakeCudaRuntime, ptr: int, shape: Sequence[int], dtype) -> np.ndarray:
    """A numpy view of fake device memory; an access outside every allocation fails as an illegal address."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if not cuda.fake_device_range(ptr, count * dtype.itemsize):
        raise AssertionError(f"fake engine: illegal address 0x{ptr:x} for {count * dtype.itemsize} bytes")
    raw = (ctypes.c_ubyte * max(count * dtype.itemsize, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=count * dtype.itemsize).view(dtype).reshape(tuple(shape))
