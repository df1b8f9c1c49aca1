"""The fake TensorRT's run side: Runtime deserializes fake plans into ICudaEngines whose
IExecutionContexts run the ONNX graph with ONNX Runtime (or a synthetic kernel) on fake
device memory. Each refusal cites its page in brackets; see tensorrt_fakes.py."""

from typing import Any, Callable, Dict

import numpy as np

from fake_cuda_runtime import FakeCudaRuntime, cudaError_t
from fake_tensorrt_types import _NUMPY_TYPES, SYNTHETIC_KERNELS, DataType, TensorIOMode, _device_view, _unpack_plan


def runtime_classes(cuda: FakeCudaRuntime, version: str, _error: Callable, _require_logger: Callable) -> Dict[str, Any]:
    """The fake `tensorrt` module's Runtime, ICudaEngine and IExecutionContext over `cuda`, with the
    build side's error reporting (`_error`, `_require_logger`)."""
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

    return dict(IExecutionContext=IExecutionContext, ICudaEngine=ICudaEngine, Runtime=Runtime)
