"""The TensorRT backend: an encoder and a decoder engine from a bundle, on one CUDA stream.

Embed once, query many: the image embedding stays on the GPU between
queries; prompts go through pinned host buffers into persistent device
buffers; the decoder of the interactive profile replays a CUDA graph per
prompt shape; the masks are resized on the GPU by sam_edge.postprocess.cuda
when _C_cuda is usable (else on the host, in numpy, said by `postprocess_path`). Every call that touches the GPU makes
the backend's device current and gives the caller's back afterwards.

Device arrays are torch tensors when torch with CUDA is importable, else CuPy
arrays, else this module's DeviceArray over cuda-python allocations
(`cuda.bindings.runtime`), which exposes __cuda_array_interface__. Every CUDA
call's status is checked and raised as CudaError with CUDA's own message.

Imports numpy at module level only; TensorRT, cuda-python, torch and CuPy
are imported when an engine is loaded. Not thread-safe: one backend per thread.
"""

import contextlib
import ctypes
import functools
import os
import shlex
import sys
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .prompt_layout import decoder_prompt_feed

PIXEL_MEAN = np.array((123.675, 116.28, 103.53), dtype=np.float32)
PIXEL_STD = np.array((58.395, 57.12, 57.375), dtype=np.float32)
#: Array libraries for device results, in the order "auto" tries them.
ARRAY_LIBRARIES = ("torch", "cupy", "cuda-python")
#: Captured decoder graphs kept (one per prompt shape and embedding); least recently used go first.
MAX_CUDA_GRAPHS = 16


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


class EngineCompatibilityError(RuntimeError):
    """A TensorRT engine cannot run here (GPU architecture or TensorRT version); says how to rebuild."""


# ---------------------------------------------------------------- TensorRT and CUDA, guarded


def import_tensorrt():
    """The tensorrt module (>= 10), or an ImportError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed: install NVIDIA TensorRT >= 10 with its Python bindings "
            f"(matching your CUDA and driver) to build or run TensorRT bundles ({exc})"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ImportError(f"sam-edge needs TensorRT >= 10; found {trt.__version__}")
    return trt


def cudart():
    """cuda-python's runtime module (cuda.bindings.runtime; cuda.cudart before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise ImportError("the TensorRT backend needs cuda-python: pip install cuda-python") from exc
    return runtime


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value)


def cuda_check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python result `(status, *values)`: the value(s), or CudaError naming `what`."""
    status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(status) != 0:
        rt = cudart()
        name = _text(rt.cudaGetErrorName(status)[1])
        message = _text(rt.cudaGetErrorString(status)[1])
        raise CudaError(f"{what} failed: {name}: {message}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _parse_version(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        raise ValueError(f"not a version number: {text!r}") from None


def _parse_compute_capability(text: Any) -> Tuple[int, int]:
    try:
        major, minor = str(text).split(".")
        return int(major), int(minor)
    except ValueError:
        raise ValueError(f"compute capability must look like '8.6'; got {text!r}") from None


def tensorrt_runtime_info(device: int = 0) -> Dict[str, str]:
    """What an engine must match: {"tensorrt", "gpu", "compute_capability", "cuda_runtime"}."""
    trt = import_tensorrt()
    rt = cudart()
    props = cuda_check(rt.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    version = cuda_check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "tensorrt": str(trt.__version__),
        "gpu": _text(props.name),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime": f"{version // 1000}.{(version % 1000) // 10}",
    }


def tensorrt_status(device: int = 0) -> str:
    """One line for sam_edge.info(): the TensorRT runtime and GPU, or why TensorRT bundles cannot run."""
    try:
        info = tensorrt_runtime_info(device)
    except (ImportError, CudaError) as exc:
        return f"unavailable ({exc})"
    _, postprocess = _cuda_postprocess()
    return (f"TensorRT {info['tensorrt']} on {info['gpu']} (compute capability {info['compute_capability']}, "
            f"CUDA {info['cuda_runtime']}); mask postprocess: {postprocess}")


# ---------------------------------------------------------------- compatibility (pure)


#: Build options recorded in the manifest and the flag each takes on the command line.
REBUILD_OPTIONS = (
    "decoder_precision",
    "max_batch",
    "opt_batch",
    "max_points",
    "max_prompts",
    "opt_points",
    "opt_prompts",
    "workspace_bytes",
    "hardware_compatibility",
)


def rebuild_command(manifest: Mapping[str, Any], bundle_dir: Optional[str] = None) -> str:
    """The `sam-edge build` command that rebuilds this TensorRT bundle on the current machine."""
    section = manifest.get("tensorrt") or {}
    build = dict(section.get("build") or {})
    # Compatibility choices are also recorded beside the build options; either place counts.
    for key in ("hardware_compatibility", "version_compatible"):
        if key not in build and section.get(key) not in (None, "none", False):
            build[key] = section[key]
    weights = manifest.get("weights") or {}
    parts = ["sam-edge", "build", "--model", str(build.get("model_type") or manifest.get("model_type", "MODEL"))]
    checkpoint = build.get("checkpoint") or (weights.get("checkpoint") if weights.get("source") == "checkpoint" else None)
    if checkpoint:
        parts += ["--checkpoint", str(checkpoint)]
    parts += ["--backend", "tensorrt", "--precision", str(build.get("precision") or manifest.get("precision", "fp16"))]
    for option in REBUILD_OPTIONS:
        if option in build:
            parts += ["--" + option.replace("_", "-"), str(build[option])]
    for flag in ("version_compatible", "weakly_typed"):
        if build.get(flag):
            parts.append("--" + flag.replace("_", "-"))
    parts += ["--output", bundle_dir or "BUNDLE_DIR", "--overwrite"]
    return shlex.join(parts)


def check_engine_compatibility(
    manifest: Mapping[str, Any], runtime_info: Mapping[str, Any], bundle_dir: Optional[str] = None
) -> None:
    """Raise EngineCompatibilityError, with the exact rebuild command, if the engines of a
    TensorRT bundle cannot run with `runtime_info` (see tensorrt_runtime_info).

    GPU: the same compute capability, or >= 8.0 for engines built with hardware
    compatibility "ampere_plus". TensorRT: the same major.minor.patch, or for
    version-compatible engines the same major and a runtime at least as new.
    """
    section = manifest.get("tensorrt")
    if not isinstance(section, Mapping):
        raise ValueError("not a TensorRT bundle manifest: it has no 'tensorrt' section")
    for key in ("version", "compute_capability"):
        if key not in section:
            raise ValueError(f"the manifest's tensorrt section lacks {key!r}; rebuild the bundle")
    for key in ("tensorrt", "compute_capability"):
        if key not in runtime_info:
            raise ValueError(f"runtime_info needs {key!r} (see tensorrt_runtime_info); got {sorted(runtime_info)}")
    built_gpu = section.get("gpu", "unknown GPU")
    here_gpu = runtime_info.get("gpu", "this GPU")
    built_cc = _parse_compute_capability(section["compute_capability"])
    here_cc = _parse_compute_capability(runtime_info["compute_capability"])
    level = section.get("hardware_compatibility", "none")
    problems = []
    if level == "ampere_plus":
        if here_cc < (8, 0):
            problems.append(
                f"the engines are hardware-compatible with Ampere and newer (compute capability >= 8.0); "
                f"{here_gpu} has {here_cc[0]}.{here_cc[1]}"
            )
    elif level == "none":
        if built_cc != here_cc:
            problems.append(
                f"the engines were built for compute capability {built_cc[0]}.{built_cc[1]} ({built_gpu}); "
                f"{here_gpu} has {here_cc[0]}.{here_cc[1]}, and TensorRT engines run only on the GPU "
                "architecture they were built for"
            )
    else:
        problems.append(f"unknown hardware compatibility level {level!r} in the manifest")
    built_v = _parse_version(section["version"])
    here_v = _parse_version(runtime_info["tensorrt"])
    if section.get("version_compatible"):
        if here_v[0] != built_v[0] or here_v < built_v:
            problems.append(
                f"the engines are version-compatible from TensorRT {section['version']} within major version "
                f"{built_v[0]}; this runtime is TensorRT {runtime_info['tensorrt']}"
            )
    elif here_v != built_v:
        problems.append(
            f"the engines were built with TensorRT {section['version']}; this runtime is TensorRT "
            f"{runtime_info['tensorrt']}, and an engine loads only in the TensorRT version that built it"
        )
    if problems:
        where = f"bundle {bundle_dir}: " if bundle_dir else ""
        raise EngineCompatibilityError(
            f"{where}cannot run these TensorRT engines here:\n  - " + "\n  - ".join(problems)
            + "\nRebuild the bundle on this machine:\n  " + rebuild_command(manifest, bundle_dir)
        )


# ---------------------------------------------------------------- memory


class _Allocation:
    """Owns a cudaMalloc'ed (or, pinned, cudaMallocHost'ed) block; freed with the object."""

    def __init__(self, nbytes: int, pinned: bool = False) -> None:
        rt = cudart()
        self.nbytes, self.pinned, self._rt = int(nbytes), pinned, rt
        size = max(self.nbytes, 1)
        if pinned:
            self.ptr = int(cuda_check(rt.cudaMallocHost(size), f"cudaMallocHost({size})"))
        else:
            self.ptr = int(cuda_check(rt.cudaMalloc(size), f"cudaMalloc({size})"))

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            # At interpreter exit the context may be gone; nothing useful to raise then.
            (self._rt.cudaFreeHost if self.pinned else self._rt.cudaFree)(ptr)


class DeviceArray:
    """A C-contiguous device array over a cuda-python allocation (no torch or CuPy needed).

    Supports .shape, .dtype, integer indexing on the first axis (a view), and
    __cuda_array_interface__ so torch.as_tensor / cupy.asarray / numba can
    take it without a copy.
    """

    def __init__(self, shape: Sequence[int], dtype: Any, allocation: Optional[_Allocation] = None, ptr: int = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._allocation = allocation if allocation is not None else _Allocation(self.nbytes)
        self.ptr = ptr or self._allocation.ptr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> "DeviceArray":
        """a[i] or a[start:stop] on the first axis: a view (step 1 only, so it stays contiguous)."""
        n = self.shape[0]
        row = self.nbytes // n if n else 0
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise ValueError("DeviceArray slices must have step 1")
            stop = max(stop, start)
            return DeviceArray((stop - start,) + self.shape[1:], self.dtype, self._allocation, self.ptr + start * row)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"DeviceArray supports an integer or a slice on the first axis; got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for first axis of size {n}")
        return DeviceArray(self.shape[1:], self.dtype, self._allocation, self.ptr + (index % n) * row)

    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3, "strides": None}

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"


class _PinnedArray:
    """A numpy view of page-locked host memory (async copies need it)."""

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._allocation = _Allocation(nbytes, pinned=True)
        raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(self._allocation.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self.ptr = self._allocation.ptr


class _TorchArrays:
    name = "torch"

    def __init__(self, device: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch has no CUDA device")
        self.torch, self.device = torch, torch.device("cuda", device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.stream_handle = int(self.stream.cuda_stream)

    def empty(self, shape, dtype):
        # On the caller's stream, where the tensor will be used and freed; our stream waits
        # for it (take_over) and the caller's waits for our results (hand_over).
        return self.torch.empty(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)

    def take_over(self) -> None:
        """Make our stream wait for work the caller queued (allocations, producing the inputs)."""
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))

    def hand_over(self) -> None:
        """Make the caller's current torch stream wait for our results (no host sync)."""
        self.torch.cuda.current_stream(self.device).wait_stream(self.stream)

    @staticmethod
    def is_device_array(array) -> bool:
        return getattr(array, "is_cuda", False)

    @staticmethod
    def host(array) -> np.ndarray:
        return array.detach().cpu().numpy()


class _CupyArrays:
    name = "cupy"

    def __init__(self, device: int) -> None:
        import cupy

        self.cupy = cupy
        cupy.cuda.Device(device).use()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.stream_handle = int(self.stream.ptr)

    def empty(self, shape, dtype):
        return self.cupy.empty(tuple(shape), dtype=np.dtype(dtype))

    def take_over(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def hand_over(self) -> None:
        self.stream.synchronize()

    @staticmethod
    def is_device_array(array) -> bool:
        return hasattr(array, "__cuda_array_interface__")

    def host(self, array) -> np.ndarray:
        return self.cupy.asnumpy(array)


class _CudaPythonArrays:
    name = "cuda-python"

    def __init__(self, device: int) -> None:
        rt = cudart()
        cuda_check(rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        self._rt = rt
        self.stream_handle = int(cuda_check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate"))

    @staticmethod
    def empty(shape, dtype) -> DeviceArray:
        return DeviceArray(shape, dtype)

    def take_over(self) -> None:
        """Nothing to wait for: every array of this library is written on our stream only."""

    def hand_over(self) -> None:
        cuda_check(self._rt.cudaStreamSynchronize(self.stream_handle), "cudaStreamSynchronize")

    @staticmethod
    def is_device_array(array) -> bool:
        return isinstance(array, DeviceArray) or hasattr(array, "__cuda_array_interface__")

    def host(self, array) -> np.ndarray:
        ptr = device_pointer(array)
        out = np.empty(array.shape, np.dtype(array.dtype))
        rt = self._rt
        cuda_check(rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                      self.stream_handle), "cudaMemcpyAsync (device to host)")
        cuda_check(rt.cudaStreamSynchronize(self.stream_handle), "cudaStreamSynchronize")
        return out


def device_pointer(array: Any) -> int:
    """The device address of a torch CUDA tensor, a DeviceArray, or any __cuda_array_interface__ array."""
    if isinstance(array, DeviceArray):
        return array.ptr
    if hasattr(array, "data_ptr"):
        return int(array.data_ptr())
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        raise TypeError(f"expected a CUDA device array; got {type(array).__name__}")
    return int(interface["data"][0])


_PROVIDERS = {"torch": _TorchArrays, "cupy": _CupyArrays, "cuda-python": _CudaPythonArrays}


def array_provider(library: str = "auto", device: int = 0):
    """The device-array library: "torch", "cupy", "cuda-python", or "auto" (the first that works)."""
    if library != "auto":
        if library not in _PROVIDERS:
            raise ValueError(f"array library must be 'auto' or one of {ARRAY_LIBRARIES}; got {library!r}")
        return _PROVIDERS[library](device)
    reasons = []
    for name in ARRAY_LIBRARIES:
        try:
            return _PROVIDERS[name](device)
        except ImportError as exc:
            reasons.append(f"{name}: {exc}")
    raise ImportError("no CUDA array library is usable: " + "; ".join(reasons))


# ---------------------------------------------------------------- post-processing


def _cuda_postprocess(device: Optional[int] = None):
    """(sam_edge.postprocess.cuda.upsample_threshold_stability, description) when the masks can be
    resized on the GPU, else (None, why not). That function checks every array it is given
    (dtype, contiguity, device) before a pointer reaches _C_cuda."""
    if os.environ.get("SAM_EDGE_POSTPROCESS", "").strip().lower() == "numpy":
        return None, "numpy on the host (SAM_EDGE_POSTPROCESS=numpy)"
    from ..postprocess import cuda as postprocess_cuda

    if not postprocess_cuda.available(device):
        return None, f"numpy on the host (sam_edge._C_cuda {postprocess_cuda.status()})"
    return postprocess_cuda.upsample_threshold_stability, "CUDA (sam_edge.postprocess.cuda.upsample_threshold_stability)"


# ---------------------------------------------------------------- engines


class TensorRTEngine:
    """One deserialized engine, an execution context per optimization profile (made on first
    use), and its I/O tensors: {name: (shape with -1 for dynamic axes, numpy dtype)}."""

    def __init__(self, trt, runtime, plan: bytes, name: str, stream: int) -> None:
        self.trt, self.name, self.stream = trt, name, stream
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {name} (see its log above); rebuild the bundle")
        self.inputs: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = {}
        self.outputs: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = {}
        for i in range(self.engine.num_io_tensors):
            tensor = self.engine.get_tensor_name(i)
            spec = (tuple(self.engine.get_tensor_shape(tensor)), np.dtype(trt.nptype(self.engine.get_tensor_dtype(tensor))))
            is_input = self.engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[tensor] = spec
        self.num_profiles = self.engine.num_optimization_profiles
        self._contexts: Dict[int, Any] = {}

    def profile_shapes(self, profile: int) -> Dict[str, Tuple[Tuple[int, ...], ...]]:
        """{input: (min, opt, max)} of one optimization profile."""
        return {
            name: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, profile))
            for name, (shape, _) in self.inputs.items()
            if -1 in shape
        }

    def choose_profile(self, shapes: Mapping[str, Tuple[int, ...]]) -> int:
        """The first profile whose ranges hold `shapes`; ValueError listing the ranges otherwise."""
        for profile in range(self.num_profiles):
            ranges = self.profile_shapes(profile)
            if all(
                all(lo <= d <= hi for lo, d, hi in zip(ranges[n][0], shapes[n], ranges[n][2])) for n in ranges
            ):
                return profile
        allowed = "; ".join(
            ", ".join(f"{n} {r[0]}..{r[2]}" for n, r in self.profile_shapes(p).items()) for p in range(self.num_profiles)
        )
        raise ValueError(
            f"{self.name}: input shapes {dict(shapes)} are outside every optimization profile ({allowed}); "
            "rebuild with larger --max-points / --max-prompts / --max-batch"
        )

    def context(self, profile: int):
        if profile not in self._contexts:
            context = self.engine.create_execution_context()
            if context is None:
                raise RuntimeError(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)")
            if not context.set_optimization_profile_async(profile, self.stream):
                raise RuntimeError(f"{self.name}: cannot select optimization profile {profile}")
            cuda_check(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize (profile switch)")
            self._contexts[profile] = context
        return self._contexts[profile]

    def bind(self, profile: int, shapes: Mapping[str, Tuple[int, ...]], addresses: Mapping[str, int]):
        """Set input shapes and every tensor address on the profile's context; returns it."""
        context = self.context(profile)
        for name in self.inputs:
            if not context.set_input_shape(name, tuple(shapes[name])):
                raise ValueError(f"{self.name}: TensorRT refused shape {tuple(shapes[name])} for {name}")
        for name in list(self.inputs) + list(self.outputs):
            if not context.set_tensor_address(name, int(addresses[name])):
                raise RuntimeError(f"{self.name}: TensorRT refused the address of {name} (misaligned?)")
        return context

    def execute(self, context) -> None:
        if not context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed (see its log above)")


def _on_device(method):
    """Run a TensorRTBackend method with the backend's device current (see _device_scope)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._device_scope():
            return method(self, *args, **kwargs)

    return wrapper


class TensorRTBackend:
    """Backend over an encoder and a decoder engine (see module docstring).

    Arguments:
        encoder_plan, decoder_plan: serialized engines (bytes) built by
            sam_edge.export.tensorrt_build.
        image_size: side of the square model input.
        device: CUDA device index.
        array_library: "auto", "torch", "cupy" or "cuda-python" for device results.
        cuda_graphs: replay a captured CUDA graph for repeated decoder shapes of the
            interactive profile.
        version_compatible: the plans were built version-compatible (they carry TensorRT's
            lean runtime, host code that TensorRT loads only when the application allows it);
            load_tensorrt_engine takes it from the manifest.
    """

    name = "tensorrt"
    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(
        self,
        encoder_plan: bytes,
        decoder_plan: bytes,
        image_size: int,
        device: int = 0,
        array_library: str = "auto",
        cuda_graphs: bool = True,
        version_compatible: bool = False,
    ) -> None:
        trt = import_tensorrt()
        self._rt = cudart()
        self.device_index = int(device)
        self._graphs: "OrderedDict[tuple, Any]" = OrderedDict()
        with self._device_scope():
            self._load(trt, encoder_plan, decoder_plan, image_size, array_library, version_compatible)
        self.cuda_graphs = bool(cuda_graphs)
        self._gpu_postprocess, self.postprocess_path = _cuda_postprocess(self.device_index)

    def _load(self, trt, encoder_plan, decoder_plan, image_size, array_library, version_compatible) -> None:
        """Engines, contexts and buffers, made with the backend's device current."""
        self.arrays = array_provider(array_library, self.device_index)
        self.stream = self.arrays.stream_handle
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if version_compatible:
            # Such plans hold TensorRT's lean runtime, which it runs only when allowed; our own
            # bundles, hash-checked by sam_edge.load, are trusted plans.
            self._runtime.engine_host_code_allowed = True
        self.encoder = TensorRTEngine(trt, self._runtime, encoder_plan, "encoder", self.stream)
        self.decoder = TensorRTEngine(trt, self._runtime, decoder_plan, "decoder", self.stream)
        self.image_size = int(image_size)
        self._check_io()
        self.mask_input_size = int(self.decoder.inputs["mask_input"][0][-1])
        self.embedding_shape = tuple(self.decoder.inputs["image_embeddings"][0])
        self.max_batch = max(r["image"][2][0] for r in map(self.encoder.profile_shapes, range(self.encoder.num_profiles)))
        ranges = [self.decoder.profile_shapes(p) for p in range(self.decoder.num_profiles)]
        self.max_prompts = max(r["point_coords"][2][0] for r in ranges)
        self.max_points = max(r["point_coords"][2][1] for r in ranges)
        self._allocate_buffers()
        for engine in (self.encoder, self.decoder):  # contexts up front: no first-query stall
            for profile in range(engine.num_profiles):
                engine.context(profile)

    # ---- set-up --------------------------------------------------------
    @contextlib.contextmanager
    def _device_scope(self):
        """Make the backend's device current (engines and buffers live there; other code in the
        process may have switched), and give the caller's device back afterwards."""
        rt = self._rt
        previous = int(cuda_check(rt.cudaGetDevice(), "cudaGetDevice"))
        if previous != self.device_index:
            cuda_check(rt.cudaSetDevice(self.device_index), f"cudaSetDevice({self.device_index})")
        try:
            yield
        finally:
            if previous != self.device_index:
                cuda_check(rt.cudaSetDevice(previous), f"cudaSetDevice({previous})")

    def _check_io(self) -> None:
        expected_in = {"image"}
        expected_dec = {"image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"}
        if set(self.encoder.inputs) != expected_in or "image_embeddings" not in self.encoder.outputs:
            raise ValueError(f"encoder engine has I/O {list(self.encoder.inputs)} -> {list(self.encoder.outputs)}; "
                             "expected image -> image_embeddings")
        if set(self.decoder.inputs) != expected_dec or {"iou_predictions", "low_res_masks"} - set(self.decoder.outputs):
            raise ValueError(
                f"decoder engine has I/O {list(self.decoder.inputs)} -> {list(self.decoder.outputs)}; expected the fast "
                f"decoder {sorted(expected_dec)} -> iou_predictions, low_res_masks (not the orig_im_size variant)"
            )
        for engine in (self.encoder, self.decoder):
            for name, (_, dtype) in {**engine.inputs, **engine.outputs}.items():
                if dtype != np.float32:
                    raise ValueError(f"{engine.name} tensor {name} is {dtype}; sam-edge engines take and give float32")

    def _allocate_buffers(self) -> None:
        s, m = self.image_size, self.mask_input_size
        b, p, n = self.max_batch, self.max_prompts, self.max_points
        self._image_host = _PinnedArray((b, 3, s, s), np.float32)
        self._image_device = DeviceArray((b, 3, s, s), np.float32)
        shapes = {
            "point_coords": (p, n, 2), "point_labels": (p, n), "mask_input": (p, 1, m, m), "has_mask_input": (p,),
            "iou_predictions": (p, 4), "low_res_masks": (p, 4, m, m), "image_embeddings": self.embedding_shape,
        }
        self._host = {k: _PinnedArray(v, np.float32) for k, v in shapes.items() if k in self.decoder.inputs}
        self._device = {k: DeviceArray(v, np.float32) for k, v in shapes.items()}

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        kinds = self._rt.cudaMemcpyKind
        kind_value = {"h2d": kinds.cudaMemcpyHostToDevice, "d2h": kinds.cudaMemcpyDeviceToHost,
                      "d2d": kinds.cudaMemcpyDeviceToDevice}[kind]
        cuda_check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind_value, self.stream), f"cudaMemcpyAsync ({kind})")

    @_on_device
    def synchronize(self) -> None:
        cuda_check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    # ---- Backend interface -------------------------------------------
    @property
    def device(self) -> str:
        return f"cuda:{self.device_index}"

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        """Inputs stay numpy: the backend stages them through its pinned buffers itself."""
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        if isinstance(array, np.ndarray) or np.isscalar(array):
            return np.asarray(array)
        with self._device_scope():
            return self.arrays.host(array)

    def _host_input(self, array: Any) -> np.ndarray:
        return self.to_numpy(array) if self.arrays.is_device_array(array) else np.asarray(array)

    @_on_device
    def embed(self, input_image: Any) -> Any:
        """(B, 3, h, w) pixel values in [0, 255] -> (B, 256, g, g) float32 embeddings on the GPU."""
        x = np.asarray(self._host_input(input_image), dtype=np.float32)
        self.arrays.take_over()
        if x.ndim != 4 or x.shape[1] != 3 or max(x.shape[2:]) > self.image_size:
            raise ValueError(f"input_image must be (B, 3, h, w) with max(h, w) <= {self.image_size}; got {x.shape}")
        batch, _, h, w = x.shape
        out = self.arrays.empty((batch,) + self.embedding_shape[1:], np.float32)
        out_ptr = device_pointer(out)
        per_image = int(np.prod(self.embedding_shape[1:])) * 4
        s = self.image_size
        for start in range(0, batch, self.max_batch):
            chunk = x[start:start + self.max_batch]
            n = chunk.shape[0]
            self.synchronize()  # the pinned buffer may still be read by the previous copy
            staged = self._image_host.array[:n]
            staged.fill(0.0)  # zero padding after normalisation, as Sam.preprocess
            staged[:, :, :h, :w] = (chunk - PIXEL_MEAN[:, None, None]) / PIXEL_STD[:, None, None]
            self._copy(self._image_device.ptr, self._image_host.ptr, staged.nbytes, "h2d")
            context = self.encoder.bind(
                0 if self.encoder.num_profiles == 1 else self.encoder.choose_profile({"image": (n, 3, s, s)}),
                {"image": (n, 3, s, s)},
                {"image": self._image_device.ptr, "image_embeddings": out_ptr + start * per_image},
            )
            self.encoder.execute(context)
        self.arrays.hand_over()
        return out

    def decoder_feed(self, point_coords, point_labels, boxes, mask_input) -> Dict[str, np.ndarray]:
        """The decoder's prompt inputs for B prompts, laid out as the torch prompt encoder does:
        points, then box corners (labels 2, 3); a padding point (label -1) when there is no box."""
        arrays = [None if a is None else self._host_input(a) for a in (point_coords, point_labels, boxes, mask_input)]
        point_coords, point_labels, boxes, mask_input = arrays
        return decoder_prompt_feed(point_coords, point_labels, boxes, mask_input, self.mask_input_size)

    def _embedding_address(self, features: Any) -> int:
        if self.arrays.is_device_array(features) and not isinstance(features, np.ndarray):
            shape = tuple(features.shape)
            if shape != self.embedding_shape:
                raise ValueError(f"features must be {self.embedding_shape} (one image's embedding); got {shape}")
            if np.dtype(str(features.dtype).replace("torch.", "")) != np.float32:
                raise TypeError(f"features must be float32; got {features.dtype}")
            if hasattr(features, "is_contiguous") and not features.is_contiguous():
                raise ValueError("features must be C-contiguous")
            return device_pointer(features)
        host = np.ascontiguousarray(np.asarray(features, np.float32))
        if host.shape != self.embedding_shape:
            raise ValueError(f"features must be {self.embedding_shape} (one image's embedding); got {host.shape}")
        staged = self._host["image_embeddings"]
        self.synchronize()
        staged.array[...] = host
        self._copy(self._device["image_embeddings"].ptr, staged.ptr, host.nbytes, "h2d")
        return self._device["image_embeddings"].ptr

    @_on_device
    def decode(self, features, point_coords, point_labels, boxes, mask_input, multimask_output: bool):
        """See Backend.decode: (B, C, m, m) low-res logits and (B, C) scores on the GPU, C = 3 or 1."""
        feed = self.decoder_feed(point_coords, point_labels, boxes, mask_input)
        batch, points = feed["point_coords"].shape[:2]
        if feed["mask_input"].shape[0] not in (1, batch):
            raise ValueError(f"mask_input has {feed['mask_input'].shape[0]} rows for {batch} prompts")
        self.arrays.take_over()
        embedding_ptr = self._embedding_address(features)
        shapes = {name: value.shape for name, value in feed.items()}
        shapes["image_embeddings"] = self.embedding_shape
        profile = self.decoder.choose_profile(shapes)
        self.synchronize()  # the pinned prompt buffers may still be read by the previous call's copies
        for name, value in feed.items():
            host = self._host[name].array.reshape(-1)[: value.size]
            host[...] = value.reshape(-1)
            self._copy(self._device[name].ptr, self._host[name].ptr, value.nbytes, "h2d")
        addresses = {name: self._device[name].ptr for name in list(feed) + ["iou_predictions", "low_res_masks"]}
        addresses["image_embeddings"] = embedding_ptr
        self._run_decoder(profile, shapes, addresses)
        chosen = (1, 3) if multimask_output else (0, 1)
        m = self.mask_input_size
        low_res = self.arrays.empty((batch, chosen[1], m, m), np.float32)
        scores = self.arrays.empty((batch, chosen[1]), np.float32)
        self._copy_channels(self._device["low_res_masks"].ptr, device_pointer(low_res), batch, 4, chosen, m * m * 4)
        self._copy_channels(self._device["iou_predictions"].ptr, device_pointer(scores), batch, 4, chosen, 4)
        self.arrays.hand_over()
        return low_res, scores

    def _copy_channels(self, src: int, dst: int, rows: int, channels: int, chosen: Tuple[int, int], item: int) -> None:
        """dst (rows, count, ...) <- src[:, first:first + count] of a (rows, channels, ...) buffer: one 2-d copy."""
        first, count = chosen
        rt = self._rt
        cuda_check(
            rt.cudaMemcpy2DAsync(dst, count * item, src + first * item, channels * item, count * item, rows,
                                 rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream),
            "cudaMemcpy2DAsync (select mask channels)",
        )

    def _run_decoder(self, profile: int, shapes: Dict[str, tuple], addresses: Dict[str, int]) -> None:
        context = self.decoder.bind(profile, shapes, addresses)
        if not self.cuda_graphs or profile != 0:
            self.decoder.execute(context)
            return
        key = (profile, tuple(sorted(shapes.items())), addresses["image_embeddings"])
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            cuda_check(self._rt.cudaGraphLaunch(graph, self.stream), "cudaGraphLaunch (decoder)")
            return
        # First time for this shape: a plain run (TensorRT initialises lazily), then capture.
        self.decoder.execute(context)
        self._graphs[key] = self._capture(context)
        while len(self._graphs) > MAX_CUDA_GRAPHS:
            _, old = self._graphs.popitem(last=False)
            cuda_check(self._rt.cudaGraphExecDestroy(old), "cudaGraphExecDestroy")

    def _capture(self, context):
        rt = self._rt
        self.synchronize()
        cuda_check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                   "cudaStreamBeginCapture")
        ok = context.execute_async_v3(self.stream)
        graph = cuda_check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        if not ok:
            cuda_check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            raise RuntimeError("decoder: TensorRT execution failed during CUDA graph capture")
        # cudaGraphInstantiate changed signature between CUDA 11 and 12; WithFlags did not.
        executable = cuda_check(rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        cuda_check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return executable

    def postprocess_masks(self, low_res: Any, input_size: Tuple[int, int], original_size: Tuple[int, int]) -> Any:
        """(B, C, m, m) low-res logits -> (B, C, H, W) float32 logits at the original size: on the
        GPU through sam_edge.postprocess.cuda into arrays of the backend's library (numpy for the
        cuda-python library, which has no elementwise ops), else numpy on the host."""
        h, w = (int(v) for v in input_size)
        out_h, out_w = (int(v) for v in original_size)
        if self._gpu_postprocess is None or isinstance(low_res, np.ndarray):
            from .onnxruntime_backend import mask_postprocess_reference  # numpy on the host; no onnxruntime needed

            return mask_postprocess_reference(self.to_numpy(low_res), self.image_size, (h, w), (out_h, out_w))
        with self._device_scope():
            self.arrays.take_over()
            lead = tuple(int(d) for d in low_res.shape[:-2])
            logits = self.arrays.empty(lead + (out_h, out_w), np.float32)
            self._gpu_postprocess(
                low_res, (h, w), (out_h, out_w), mask_threshold=self.mask_threshold, frame_size=self.image_size,
                return_logits=True, stream=self.stream, return_masks=False, logits_out=logits,
                stability_out=self.arrays.empty(lead, np.float32), boxes_out=self.arrays.empty(lead + (4,), np.int64),
            )
            if self.arrays.name == "cuda-python":
                return self.arrays.host(logits)
            self.arrays.hand_over()
        return logits

    @_on_device
    def close(self) -> None:
        """Release the captured graphs (engines and buffers go with the object)."""
        while self._graphs:
            _, graph = self._graphs.popitem()
            cuda_check(self._rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")

    def __del__(self) -> None:
        graphs = getattr(self, "_graphs", None)
        while graphs:
            # At interpreter exit the CUDA context may already be gone: nothing to report then.
            self._rt.cudaGraphExecDestroy(graphs.popitem()[1])


def load_tensorrt_engine(
    bundle_dir: str,
    manifest: Mapping[str, Any],
    device: int = 0,
    array_library: str = "auto",
    cuda_graphs: bool = True,
) -> TensorRTBackend:
    """The backend for a TensorRT bundle whose manifest (and file hashes) sam_edge.load has
    already verified: checks the engines can run here, then loads them."""
    try:
        info = tensorrt_runtime_info(device)
    except ImportError as exc:
        raise ImportError(f"bundle {bundle_dir} holds TensorRT engines: {exc}") from exc
    check_engine_compatibility(manifest, info, bundle_dir)
    graphs = manifest["graphs"]
    plans = {}
    for key in ("encoder", "decoder"):
        with open(os.path.join(bundle_dir, graphs[key]), "rb") as f:
            plans[key] = f.read()
    engine = TensorRTBackend(
        plans["encoder"], plans["decoder"], image_size=int(manifest["image_size"]), device=device,
        array_library=array_library, cuda_graphs=cuda_graphs,
        version_compatible=bool(manifest["tensorrt"].get("version_compatible")),
    )
    engine.manifest = dict(manifest)
    engine.bundle_dir = bundle_dir
    if engine._gpu_postprocess is None:  # the degraded path says so; sam_edge.info() reports the rest
        print(f"sam-edge: TensorRT bundle {bundle_dir}: masks are resized on the host: {engine.postprocess_path}",
              file=sys.stderr)
    return engine
