"""The fake TensorRT's build side: ILogger and Logger, the network and its layers, the ONNX
parser, timing caches, optimization profiles, IBuilderConfig and Builder. Each refusal
cites its page in brackets; the citations are listed in tensorrt_fakes.py."""

import json
from typing import Any, Dict, List, Optional, Tuple

from fake_cuda_runtime import COMPUTE_CAPABILITY
from fake_tensorrt_types import (_CACHE_MAGIC, _ONNX_LAYER_TYPES, _ONNX_TO_TRT_TYPES, _SHAPE_TENSOR_OPERANDS, _TYPE_FLAGS,
                                 BuilderFlag, DataType, HardwareCompatibilityLevel, LayerType, MemoryPoolType,
                                 NetworkDefinitionCreationFlag, TensorIOMode, _pack_plan, _Severity, _topological_order)


def builder_classes(version: str) -> Dict[str, Any]:
    """The fake `tensorrt` module's logger, builder, network, ONNX parser and builder-config classes
    (fresh classes per module, as each real module has its own), by their TensorRT names."""
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

    return dict(ILogger=ILogger, Logger=Logger, IProgressMonitor=IProgressMonitor, _require_logger=_require_logger, _error=_error, IHostMemory=IHostMemory, ITensor=ITensor, ILayer=ILayer, INetworkDefinition=INetworkDefinition, IParserError=IParserError, OnnxParser=OnnxParser, ITimingCache=ITimingCache, _cache_key=_cache_key, IOptimizationProfile=IOptimizationProfile, IBuilderConfig=IBuilderConfig, Builder=Builder)
