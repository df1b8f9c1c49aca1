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

import ctypes
import enum
import json
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

TENSORRT_VERSION = "10.13.0.35"
GPU_NAME = "NVIDIA Fake GPU"
COMPUTE_CAPABILITY = (9, 0)
_PLAN_MAGIC = b"FAKE-TENSORRT-PLAN\n"
_CACHE_MAGIC = b"FAKE-TENSORRT-TIMING-CACHE\n"


# ---------------------------------------------------------------- cuda-python runtime


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class _DeviceProperties:
    __slots__ = ("name", "major", "minor")

    def __init__(self, name: bytes, major: int, minor: int) -> None:
        self.name, self.major, self.minor = name, major, minor


class FakeCudaRuntime:
    """The cuda.bindings.runtime calls sam-edge makes, with cuda-python's (status, *values) results."""

    __slots__ = ("fake_device_count", "fake_device", "fake_events", "_blocks", "_streams", "_captures",
                 "_graphs", "_execs", "_next_handle")
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self, device_count: int = 1) -> None:
        self.fake_device_count, self.fake_device = device_count, 0
        self.fake_events: List[Any] = []
        self._blocks: Dict[int, Tuple[Any, int, str]] = {}  # start -> (buffer, size, "device" | "pinned")
        self._streams = {0}  # the legacy default stream
        self._captures: Dict[int, Optional[list]] = {}  # capturing stream -> recorded work (None: invalidated)
        self._graphs: Dict[int, list] = {}
        self._execs: Dict[int, list] = {}
        self._next_handle = 0x7000

    # ---- fake-side helpers (used by the TensorRT fake too)
    def _handle(self) -> int:
        self._next_handle += 16
        return self._next_handle

    def fake_device_range(self, ptr: int, nbytes: int) -> bool:
        """Whether [ptr, ptr + nbytes) lies inside one device allocation."""
        for start, (_, size, kind) in self._blocks.items():
            if kind == "device" and start <= ptr and ptr + nbytes <= start + size:
                return True
        return False

    def fake_enqueue(self, stream: int, work: Callable[[], None]) -> int:
        """Run `work` now, or record it when `stream` is capturing; returns a status."""
        if stream not in self._streams:
            return cudaError_t.cudaErrorInvalidResourceHandle
        if stream in self._captures:
            if self._captures[stream] is not None:
                self._captures[stream].append(work)
            return cudaError_t.cudaSuccess
        work()
        return cudaError_t.cudaSuccess

    # ---- errors
    def cudaGetErrorName(self, error):
        return cudaError_t.cudaSuccess, cudaError_t(int(error)).name.encode()

    def cudaGetErrorString(self, error):
        return cudaError_t.cudaSuccess, f"fake CUDA error {int(error)}".encode()

    # ---- devices
    def cudaGetDeviceCount(self):
        return cudaError_t.cudaSuccess, self.fake_device_count

    def cudaSetDevice(self, device):
        if not 0 <= int(device) < self.fake_device_count:
            return (cudaError_t.cudaErrorInvalidDevice,)
        self.fake_device = int(device)
        self.fake_events.append(("set_device", int(device)))
        return (cudaError_t.cudaSuccess,)

    def cudaGetDevice(self):
        return cudaError_t.cudaSuccess, self.fake_device

    def cudaGetDeviceProperties(self, device):
        if not 0 <= int(device) < self.fake_device_count:
            return cudaError_t.cudaErrorInvalidDevice, None
        return cudaError_t.cudaSuccess, _DeviceProperties(GPU_NAME.encode(), *COMPUTE_CAPABILITY)

    def cudaRuntimeGetVersion(self):
        return cudaError_t.cudaSuccess, 12090

    # ---- memory
    def _alloc(self, size: int, kind: str):
        if int(size) < 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        block = ctypes.create_string_buffer(max(int(size), 1))
        self._blocks[ctypes.addressof(block)] = (block, int(size), kind)
        return cudaError_t.cudaSuccess, ctypes.addressof(block)

    def cudaMalloc(self, size):
        return self._alloc(size, "device")

    def cudaMallocHost(self, size):
        return self._alloc(size, "pinned")

    def _free(self, ptr: int, kind: str):
        if int(ptr) not in self._blocks or self._blocks[int(ptr)][2] != kind:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self._blocks[int(ptr)]
        return (cudaError_t.cudaSuccess,)

    def cudaFree(self, ptr):
        return self._free(ptr, "device")

    def cudaFreeHost(self, ptr):
        return self._free(ptr, "pinned")

    def _check_copy(self, dst: int, dst_bytes: int, src: int, src_bytes: int, kind) -> bool:
        """Whether the device side(s) of a copy lie inside device allocations."""
        kind = cudaMemcpyKind(int(kind))
        device_dst = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        device_src = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        return (not device_dst or self.fake_device_range(dst, dst_bytes)) and (
            not device_src or self.fake_device_range(src, src_bytes))

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        dst, src, count = int(dst), int(src), int(count)
        if not self._check_copy(dst, count, src, count, kind):
            return (cudaError_t.cudaErrorInvalidValue,)
        return (self.fake_enqueue(int(stream), lambda: ctypes.memmove(dst, src, count)),)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        dst, src, dpitch, spitch, width, height = map(int, (dst, src, dpitch, spitch, width, height))
        if width > dpitch or width > spitch:
            return (cudaError_t.cudaErrorInvalidValue,)
        span_dst, span_src = (height - 1) * dpitch + width, (height - 1) * spitch + width
        if height and not self._check_copy(dst, span_dst, src, span_src, kind):
            return (cudaError_t.cudaErrorInvalidValue,)

        def copy() -> None:
            for row in range(height):
                ctypes.memmove(dst + row * dpitch, src + row * spitch, width)

        return (self.fake_enqueue(int(stream), copy),)

    # ---- streams and graphs
    def cudaStreamCreateWithFlags(self, flags):
        handle = self._handle()
        self._streams.add(handle)
        return cudaError_t.cudaSuccess, handle

    def cudaStreamSynchronize(self, stream):
        stream = int(stream)
        if stream not in self._streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if stream in self._captures:  # [cuda-capture]
            self._captures[stream] = None
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        stream = int(stream)
        cudaStreamCaptureMode(int(mode))
        if stream == 0 or stream not in self._streams or stream in self._captures:
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)  # [cuda-capture]: not the legacy stream
        self._captures[stream] = []
        self.fake_events.append("capture")
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        if int(stream) not in self._captures:
            return cudaError_t.cudaErrorInvalidValue, None
        work = self._captures.pop(int(stream))
        if work is None:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        graph = self._handle()
        self._graphs[graph] = work
        return cudaError_t.cudaSuccess, graph

    def cudaGraphInstantiateWithFlags(self, graph, flags):  # [cuda-api]
        if int(graph) not in self._graphs:
            return cudaError_t.cudaErrorInvalidResourceHandle, None
        executable = self._handle()
        self._execs[executable] = list(self._graphs[int(graph)])
        return cudaError_t.cudaSuccess, executable

    def cudaGraphDestroy(self, graph):
        if self._graphs.pop(int(graph), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        if self._execs.pop(int(graph_exec), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.fake_events.append(("destroy", int(graph_exec)))
        return (cudaError_t.cudaSuccess,)

    def cudaGraphLaunch(self, graph_exec, stream):
        work = self._execs.get(int(graph_exec))
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.fake_events.append(("launch", int(graph_exec)))
        for step in work:
            status = self.fake_enqueue(int(stream), step)
            if status:
                return (status,)
        return (cudaError_t.cudaSuccess,)


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


# ---------------------------------------------------------------- TensorRT: the module


def fake_tensorrt(cuda: FakeCudaRuntime, version: str = TENSORRT_VERSION) -> types.ModuleType:
    """A `tensorrt` module over `cuda` (whose current device and memory the engines use)."""
    Severity = _Severity

    class ILogger:
        __slots__ = ()

        def __init__(self) -> None:
            pass

        def log(self, severity, msg) -> None:
            raise NotImplementedError("ILogger.log is implemented by the application")

    ILogger.Severity = Severity

    class Logger(ILogger):
        __slots__ = ("min_severity", "fake_messages")
        Severity = _Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING,
                                                         _Severity.INFO, _Severity.VERBOSE)

        def __init__(self, min_severity=_Severity.WARNING) -> None:
            self.min_severity, self.fake_messages = min_severity, []

        def log(self, severity, msg) -> None:
            self.fake_messages.append((Severity(int(severity)), str(msg)))

    class IProgressMonitor:
        __slots__ = ()

        def __init__(self) -> None:
            pass

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            raise NotImplementedError

        def step_complete(self, phase_name, step) -> bool:
            raise NotImplementedError

        def phase_finish(self, phase_name) -> None:
            raise NotImplementedError

    def _require_logger(logger) -> None:
        if not isinstance(logger, ILogger):  # pybind11 refuses other types
            raise TypeError(f"incompatible constructor arguments: expected a tensorrt.ILogger, got {type(logger)}")

    def _error(logger, message: str) -> None:
        logger.log(Severity.ERROR, message)

    class IHostMemory:
        __slots__ = ("_data",)

        def __init__(self, data: bytes) -> None:
            self._data = bytes(data)

        @property
        def nbytes(self) -> int:
            return len(self._data)

        def __bytes__(self) -> bytes:
            return self._data

        def __buffer__(self, flags):
            return memoryview(self._data)

    class ITensor:
        __slots__ = ("name", "shape", "dtype", "is_network_input", "is_network_output")

        def __init__(self, name, shape, dtype, is_input=False) -> None:
            self.name, self.shape, self.dtype = name, tuple(shape), dtype
            self.is_network_input, self.is_network_output = is_input, False

    class ILayer:
        __slots__ = ("name", "type", "_network", "_outputs", "_precision", "_output_types")

        def __init__(self, network, name, layer_type, outputs) -> None:
            self._network, self.name, self.type, self._outputs = network, name, layer_type, outputs
            self._precision, self._output_types = None, {}

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, index):
            return self._outputs[index]

        @property
        def precision(self):
            return DataType.FLOAT if self._precision is None else self._precision

        @precision.setter
        def precision(self, dtype) -> None:
            if self._network._check_typing("ILayer::setPrecision"):
                self._precision = DataType(int(dtype))

        @property
        def precision_is_set(self) -> bool:
            return self._precision is not None

        def set_output_type(self, index, dtype) -> None:
            if self._network._check_typing("ILayer::setOutputType"):
                self._output_types[index] = DataType(int(dtype))

        def get_output_type(self, index):
            return self._output_types.get(index, self._outputs[index].dtype)

    class INetworkDefinition:
        __slots__ = ("_flags", "_logger", "_inputs", "_outputs", "_layers", "_onnx", "_typing_errors")

        def __init__(self, flags: int, logger) -> None:
            self._flags, self._logger = int(flags), logger
            self._inputs: List[ITensor] = []
            self._outputs: List[ITensor] = []
            self._layers: List[ILayer] = []
            self._onnx = b""
            self._typing_errors = 0

        def get_flag(self, flag) -> bool:
            return bool(self._flags & (1 << int(flag)))

        def _check_typing(self, what: str) -> bool:
            # [builder-api] a strongly typed network refuses per-layer precision; modelled as an
            # API usage error that fails the build.
            if self.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED):
                _error(self._logger, f"{what}: Error Code 3: API Usage Error (setting layer precision and layer "
                                     "output types is not allowed in a strongly typed network)")
                self._typing_errors += 1
                return False
            return True

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))
        num_layers = property(lambda self: len(self._layers))

        def get_input(self, index):
            return self._inputs[index]

        def get_output(self, index):
            return self._outputs[index]

        def get_layer(self, index):
            return self._layers[index]

    class IParserError:
        __slots__ = ("_node", "_name", "_operator", "_desc")

        def __init__(self, node: int, name: str, operator: str, desc: str) -> None:
            self._node, self._name, self._operator, self._desc = node, name, operator, desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._operator

        def desc(self) -> str:
            return self._desc

        def __str__(self) -> str:
            return f"In node {self._node} with name: {self._name} and operator: {self._operator}: {self._desc}"

    class OnnxParser:
        __slots__ = ("_network", "_logger", "_errors")

        def __init__(self, network, logger) -> None:
            _require_logger(logger)
            self._network, self._logger, self._errors = network, logger, []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index):
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

        def parse_from_file(self, model) -> bool:
            import onnx

            return self._parse(onnx.load(str(model)))

        def parse(self, model, path=None) -> bool:
            import onnx

            return self._parse(onnx.load_from_string(bytes(model)))

        def _parse(self, model) -> bool:
            import onnx

            graph = model.graph
            order = _topological_order(graph)  # the parser sorts; ONNX Runtime's QDQ graphs are not sorted
            for index, node in enumerate(graph.node):
                if node.domain not in ("", "ai.onnx"):  # [onnx-parser]
                    self._errors.append(IParserError(
                        index, node.name, node.op_type,
                        f"No importer registered for op: {node.op_type} (domain {node.domain}). Attempting to import "
                        "as plugin: Assertion failed: creator && \"Plugin not found, are the plugin name, version, "
                        "and namespace correct?\""))
            initializers = {t.name for t in graph.initializer}
            floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
            derived = {i.name: i.name for i in graph.input
                       if i.name not in initializers and i.type.tensor_type.elem_type in floats}
            for index in order:
                node = graph.node[index]
                sources = [derived[name] for name in node.input if name in derived]
                if not sources or node.op_type in ("Shape", "Size"):
                    continue
                for operand, name in enumerate(node.input):
                    if name in derived and operand in _SHAPE_TENSOR_OPERANDS.get(node.op_type, ()):  # [shape-tensors]
                        self._errors.append(IParserError(
                            index, node.name, node.op_type,
                            f"operand {operand} is a shape tensor computed from the float network input "
                            f"{derived[name]!r}; shape-tensor network inputs must be Int32 or Int64"))
                for out in node.output:
                    derived[out] = sources[0]
            if self._errors:
                return False
            self._populate(model)
            return True

        def _populate(self, model) -> None:
            import onnx

            inferred = onnx.shape_inference.infer_shapes(model)
            types_ = {v.name: v.type.tensor_type.elem_type for v in
                      list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}

            def dims(value):
                return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

            def dtype(name):
                return _ONNX_TO_TRT_TYPES.get(types_.get(name, 1), DataType.FLOAT)

            network = self._network
            initializers = {t.name for t in model.graph.initializer}
            for value in model.graph.input:
                if value.name not in initializers:
                    network._inputs.append(ITensor(value.name, dims(value), dtype(value.name), is_input=True))
            for index, node in enumerate(model.graph.node):
                outputs = [ITensor(out, (), dtype(out)) for out in node.output]
                layer_type = _ONNX_LAYER_TYPES.get(node.op_type, LayerType.ELEMENTWISE)
                network._layers.append(ILayer(network, node.name or f"{node.op_type}_{index}", layer_type, outputs))
            for value in model.graph.output:
                tensor = ITensor(value.name, dims(value), dtype(value.name))
                tensor.is_network_output = True
                network._outputs.append(tensor)
            network._onnx = model.SerializeToString()

    class ITimingCache:
        __slots__ = ("_key", "_entries")

        def __init__(self, key, entries) -> None:
            self._key, self._entries = list(key), dict(entries)

        def serialize(self):
            return IHostMemory(_CACHE_MAGIC + json.dumps({"key": self._key, "entries": self._entries}).encode())

        def combine(self, input_cache, ignore_mismatch) -> bool:
            if input_cache._key != self._key and not ignore_mismatch:
                return False
            for key, value in input_cache._entries.items():
                self._entries.setdefault(key, value)
            return True

        def reset(self) -> bool:
            self._entries = {}
            return True

    def _cache_key() -> List[Any]:
        return [version, list(COMPUTE_CAPABILITY)]

    class IOptimizationProfile:
        __slots__ = ("_shapes", "_valid", "_logger")

        def __init__(self, logger) -> None:
            self._shapes: Dict[str, Tuple[tuple, tuple, tuple]] = {}
            self._valid, self._logger = True, logger

        def set_shape(self, input, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
            shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
            ranks_equal = len({len(s) for s in shapes}) == 1
            if not ranks_equal or not all(0 <= a <= b <= c for a, b, c in zip(*shapes)):
                _error(self._logger, f"IOptimizationProfile::setDimensions: Error Code 3: API Usage Error ({input}: "
                                     f"min {shapes[0]}, opt {shapes[1]}, max {shapes[2]} violate min <= opt <= max)")
                self._valid = False
                return
            self._shapes[input] = shapes

        def get_shape(self, input):  # noqa: A002
            return [tuple(s) for s in self._shapes.get(input, ())]

    class IBuilderConfig:
        __slots__ = ("_flags", "_pools", "_profiles", "_cache", "_logger", "progress_monitor",
                     "hardware_compatibility_level")

        def __init__(self, logger) -> None:
            self._flags = {BuilderFlag.TF32}  # [builder-flag]: TF32 is on by default
            self._pools: Dict[int, int] = {}
            self._profiles: List[IOptimizationProfile] = []
            self._cache: Optional[ITimingCache] = None
            self._logger = logger
            self.progress_monitor = None
            self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE

        def set_flag(self, flag) -> None:
            self._flags.add(BuilderFlag(int(flag)))

        def clear_flag(self, flag) -> None:
            self._flags.discard(BuilderFlag(int(flag)))

        def get_flag(self, flag) -> bool:
            return BuilderFlag(int(flag)) in self._flags

        def set_memory_pool_limit(self, pool, pool_size) -> None:
            if int(pool_size) < 0:
                raise ValueError("pool_size must be >= 0")
            self._pools[int(MemoryPoolType(int(pool)))] = int(pool_size)

        def get_memory_pool_limit(self, pool) -> int:
            return self._pools.get(int(pool), 1 << 40)

        def add_optimization_profile(self, profile) -> int:
            if not profile._valid:  # [builder-api]: -1 for an invalid profile
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        num_optimization_profiles = property(lambda self: len(self._profiles))

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(serialized_timing_cache)
            if not data:
                return ITimingCache(_cache_key(), {})
            try:
                if not data.startswith(_CACHE_MAGIC):
                    raise ValueError("magic tag does not match")
                record = json.loads(data[len(_CACHE_MAGIC):])
                return ITimingCache(record["key"], record["entries"])
            except ValueError as exc:
                _error(self._logger, f"IBuilderConfig::createTimingCache: Error Code 1: Serialization ({exc})")
                return None

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            if cache._key != _cache_key() and not ignore_mismatch:
                _error(self._logger, "IBuilderConfig::setTimingCache: the timing cache was built by another "
                                     f"TensorRT version or GPU ({cache._key}; this is {_cache_key()})")
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            # [builder-perf]: without an attached cache the builder times into a temporary local
            # one and destroys it, so there is nothing to get.
            return self._cache

    class Builder:
        __slots__ = ("_logger",)

        def __init__(self, logger) -> None:
            _require_logger(logger)
            self._logger = logger

        def create_network(self, flags=0):
            return INetworkDefinition(flags, self._logger)

        def create_builder_config(self):
            return IBuilderConfig(self._logger)

        def create_optimization_profile(self):
            return IOptimizationProfile(self._logger)

        def build_serialized_network(self, network, config):
            strongly_typed = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            if strongly_typed:
                refused = [f for f in _TYPE_FLAGS if f in config._flags]
                if refused:  # [precision]: the build fails with an API usage error, no engine
                    _error(self._logger, "IBuilder::buildSerializedNetwork: Error Code 3: API Usage Error (Parameter "
                                         f"check failed, condition: !config.getFlag(BuilderFlag::k{refused[0].name}).)")
                    return None
            if network._typing_errors:
                return None
            dynamic = [t for t in network._inputs if -1 in t.shape]
            if dynamic and not config._profiles:
                _error(self._logger, "Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
            for index, profile in enumerate(config._profiles):
                for tensor in dynamic:
                    shapes = profile._shapes.get(tensor.name)
                    fits = shapes is not None and all(
                        len(s) == len(tensor.shape) and all(d == g for d, g in zip(s, tensor.shape) if g != -1)
                        for s in shapes)
                    if not fits:
                        _error(self._logger, f"IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error "
                                             f"({tensor.name}: dynamic input is missing dimensions or has wrong ones "
                                             f"in profile {index}: {shapes})")
                        return None
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for step in range(2):
                    if not monitor.step_complete("Building engine", step):
                        monitor.phase_finish("Building engine")
                        _error(self._logger, "Build was cancelled by the progress monitor.")
                        return None
                monitor.phase_finish("Building engine")
            if config._cache is not None:
                for layer in network._layers:
                    config._cache._entries.setdefault(f"{layer.type.name}:{layer.name}", 1.0)
            io = [[t.name, list(t.shape), int(t.dtype), int(TensorIOMode.INPUT)] for t in network._inputs]
            io += [[t.name, list(t.shape), int(t.dtype), int(TensorIOMode.OUTPUT)] for t in network._outputs]
            header = {
                "tensorrt": version, "compute_capability": list(COMPUTE_CAPABILITY),
                "hardware_compatibility": HardwareCompatibilityLevel(int(config.hardware_compatibility_level)).name,
                "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config._flags, "kernel": "onnxruntime",
                "strongly_typed": strongly_typed, "flags": sorted(f.name for f in config._flags), "io": io,
                "profiles": [{t.name: [list(s) for s in p._shapes[t.name]] for t in dynamic} for p in config._profiles],
                "fp32_layers": sorted(layer.name for layer in network._layers if layer._precision == DataType.FLOAT),
            }
            return IHostMemory(_pack_plan(header, network._onnx))

    class IExecutionContext:
        __slots__ = ("_engine", "_profile", "_shapes", "_addresses")

        def __init__(self, engine) -> None:
            self._engine, self._profile = engine, 0
            self._shapes: Dict[str, tuple] = {}
            self._addresses: Dict[str, int] = {}

        engine = property(lambda self: self._engine)
        active_optimization_profile = property(lambda self: self._profile)

        def set_optimization_profile_async(self, profile_index, stream_handle) -> bool:
            if not 0 <= int(profile_index) < self._engine.num_optimization_profiles:
                _error(self._engine._logger, f"setOptimizationProfileAsync: profile {profile_index} does not exist")
                return False
            self._profile, self._shapes = int(profile_index), {}  # switching invalidates input shapes
            return True

        def set_input_shape(self, name, shape) -> bool:
            engine, shape = self._engine, tuple(int(d) for d in shape)
            spec = engine._io.get(name)
            if spec is None or spec[2] != TensorIOMode.INPUT:
                _error(engine._logger, f"setInputShape: {name} is not an input tensor")
                return False
            declared = spec[0]
            ranges = engine._profiles[self._profile].get(name)
            ok = len(shape) == len(declared) and all(d == g for d, g in zip(shape, declared) if g != -1)
            if ok and ranges is not None:
                ok = all(lo <= d <= hi for lo, d, hi in zip(ranges[0], shape, ranges[2]))
            if not ok:
                _error(engine._logger, f"setInputShape: {name} {shape} is outside profile {self._profile} {ranges}")
                return False
            self._shapes[name] = shape
            return True

        def set_tensor_address(self, name, memory) -> bool:
            engine = self._engine
            if name not in engine._io:
                _error(engine._logger, f"setTensorAddress: {name} is not an I/O tensor of this engine")
                return False
            if int(memory) % np.dtype(_NUMPY_TYPES[engine._io[name][1]]).itemsize:
                _error(engine._logger, f"setTensorAddress: the address of {name} is misaligned")
                return False
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle) -> bool:
            engine = self._engine
            if cuda.fake_device != engine._device:  # [multi-gpu]
                _error(engine._logger, f"enqueueV3: the engine lives on device {engine._device}; device "
                                       f"{cuda.fake_device} is current")
                return False
            for name, (declared, _, mode) in engine._io.items():
                if name not in self._addresses:  # [enqueue]
                    _error(engine._logger, "IExecutionContext::enqueueV3: Error Code 3: API Usage Error (Address is "
                                           f"not set for {mode.name.lower()} tensor {name}. Call setTensorAddress)")
                    return False
                if mode == TensorIOMode.INPUT and -1 in declared and name not in self._shapes:  # [enqueue]
                    _error(engine._logger, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (the shape "
                                           f"of input tensor {name} is not specified)")
                    return False
            shapes = {n: self._shapes.get(n, tuple(s)) for n, (s, _, m) in engine._io.items() if m == TensorIOMode.INPUT}
            addresses = dict(self._addresses)
            status = cuda.fake_enqueue(int(stream_handle), lambda: engine._run(shapes, addresses))
            return status == cudaError_t.cudaSuccess

    class ICudaEngine:
        __slots__ = ("_header", "_payload", "_io", "_profiles", "_logger", "_device", "_session")

        def __init__(self, header, payload, logger) -> None:
            self._header, self._payload, self._logger = header, payload, logger
            self._io = {name: (tuple(shape), DataType(dtype), TensorIOMode(mode))
                        for name, shape, dtype, mode in header["io"]}
            self._profiles = [{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in header["profiles"]]
            self._device = cuda.fake_device  # [multi-gpu]
            self._session = None

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: max(len(self._profiles), 1))

        def get_tensor_name(self, index):
            return list(self._io)[index]

        def get_tensor_shape(self, name):
            return self._io[name][0]

        def get_tensor_dtype(self, name):
            return self._io[name][1]

        def get_tensor_mode(self, name):
            return self._io[name][2] if name in self._io else TensorIOMode.NONE

        def get_tensor_profile_shape(self, name, profile_index):
            return [tuple(s) for s in self._profiles[profile_index][name]]

        def create_execution_context(self):
            return IExecutionContext(self)

        def _run(self, shapes: Dict[str, tuple], addresses: Dict[str, int]) -> None:
            inputs = {}
            for name, shape in shapes.items():
                dtype = np.dtype(_NUMPY_TYPES[self._io[name][1]])
                inputs[name] = _device_view(cuda, addresses[name], shape, dtype).copy()
            kernel = self._header["kernel"]
            if kernel == "onnxruntime":
                if self._session is None:
                    import onnxruntime as ort

                    self._session = ort.InferenceSession(self._payload, providers=["CPUExecutionProvider"])
                names = [o.name for o in self._session.get_outputs()]
                outputs = dict(zip(names, self._session.run(None, inputs)))
            else:
                outputs = SYNTHETIC_KERNELS[kernel](inputs)
            for name, (declared, dtype, mode) in self._io.items():
                if mode != TensorIOMode.OUTPUT:
                    continue
                value = np.ascontiguousarray(outputs[name], dtype=_NUMPY_TYPES[dtype])
                if len(value.shape) != len(declared) or any(d != g for d, g in zip(value.shape, declared) if g != -1):
                    raise AssertionError(f"fake engine: output {name} {value.shape} does not fit {declared}")
                _device_view(cuda, addresses[name], value.shape, value.dtype)[...] = value

    class Runtime:
        __slots__ = ("_logger", "engine_host_code_allowed")

        def __init__(self, logger) -> None:
            _require_logger(logger)
            self._logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, serialized_engine):
            header, payload = _unpack_plan(bytes(serialized_engine))
            if header is None:  # [runtime-api]: None when it cannot deserialize
                _error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag "
                                     "does not match)")
                return None
            if header["version_compatible"]:
                if not self.engine_host_code_allowed:  # [version-compat]
                    _error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (the plan "
                                         "holds a lean runtime (host code); call setEngineHostCodeAllowed(true) to "
                                         "load a trusted version-compatible plan)")
                    return None
            elif header["tensorrt"] != version:
                _error(self._logger, f"The engine plan file is not compatible with this version of TensorRT, "
                                     f"expecting library version {version} got {header['tensorrt']}")
                return None
            props = cuda.cudaGetDeviceProperties(cuda.fake_device)[1]
            built = tuple(header["compute_capability"])
            here = (props.major, props.minor)
            if (header["hardware_compatibility"] == "NONE" and built != here) or here < (8, 0):
                _error(self._logger, f"The engine plan was built for compute capability {built}; this GPU has {here}")
                return None
            return ICudaEngine(header, payload, self._logger)

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
