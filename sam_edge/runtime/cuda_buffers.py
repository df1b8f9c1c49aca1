"""CUDA memory: one DeviceArray, pinned host buffers, and the library device results come in.

A DeviceArray is C-contiguous device memory: a pointer, a shape, a dtype, and
the object that keeps the memory alive (an allocation made here, or the torch,
CuPy or DLPack array it was read from by :func:`device_array`). It exposes
``__cuda_array_interface__``, so torch.as_tensor and cupy.asarray take it
without a copy. The TensorRT backend and ``sam_edge.postprocess.cuda`` share it.

:func:`array_provider` picks the library of the TensorRT backend's results:
torch when torch has CUDA, else CuPy, else DeviceArrays over cuda-python
allocations (``cuda.bindings.runtime``).

Imports numpy and ctypes only; cuda-python, torch and CuPy are imported when
used. Every CUDA call's status is checked and raised as CudaError with CUDA's
own message.
"""

import ctypes
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

#: Array libraries for device results, in the order "auto" tries them.
ARRAY_LIBRARIES = ("torch", "cupy", "cuda-python")


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


# ---------------------------------------------------------------- the CUDA runtime, checked


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


def device_info(device: int = 0) -> Dict[str, str]:
    """{"gpu", "compute_capability" ("8.6"), "cuda_runtime" ("12.4")} of one device."""
    rt = cudart()
    props = cuda_check(rt.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    version = cuda_check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "gpu": _text(props.name),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime": f"{version // 1000}.{(version % 1000) // 10}",
    }


# ---------------------------------------------------------------- DeviceArray

_KDL_CUDA = 2  # DLPack's kDLCUDA


def _c_strides(shape: Sequence[int], itemsize: int) -> Tuple[int, ...]:
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(int(s), 1)
    return tuple(reversed(strides))


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
    """A C-contiguous array in device memory.

    Arguments:
        ptr: device address of the first element.
        shape, dtype: as numpy's.
        owner: what keeps the memory alive (an allocation, or the array it was read from).
        device_id: the device ordinal, when the producer said so (None: ask the driver).
        device_type: DLPack device type; kDLCUDA (2) except for a DLPack array read as is.

    Supports integer and step-1 slice indexing on the first axis (views of the
    same memory) and ``__cuda_array_interface__``.
    """

    def __init__(self, ptr: int, shape: Sequence[int], dtype: Any, owner: Any = None,
                 device_id: Optional[int] = None, device_type: int = _KDL_CUDA) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.owner, self.device_id, self.device_type = owner, device_id, device_type

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: Any) -> "DeviceArray":
        """A new array in cudaMalloc'ed memory on the current device, freed with the last view."""
        shape = tuple(int(s) for s in shape)
        allocation = _Allocation(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return cls(allocation.ptr, shape, dtype, owner=allocation)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> "DeviceArray":
        """a[i] or a[start:stop] on the first axis: a view (step 1 only, so it stays contiguous)."""
        if not self.shape:
            raise IndexError("a 0-d DeviceArray cannot be indexed")
        n = self.shape[0]
        row = self.nbytes // n if n else 0
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise ValueError("DeviceArray slices must have step 1")
            stop = max(stop, start)
            return self._view(start * row, (stop - start,) + self.shape[1:])
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"DeviceArray supports an integer or a slice on the first axis; got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for first axis of size {n}")
        return self._view((index % n) * row, self.shape[1:])

    def _view(self, offset: int, shape: Tuple[int, ...]) -> "DeviceArray":
        return DeviceArray(self.ptr + offset, shape, self.dtype, self.owner, self.device_id, self.device_type)

    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3, "strides": None}

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"


# ---------------------------------------------------------------- reading other libraries' arrays

_DL_CODES = {0: "i", 1: "u", 2: "f", 6: "b"}  # kDLInt, kDLUInt, kDLFloat, kDLBool


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


def from_dlpack_capsule(capsule: Any, owner: Any) -> DeviceArray:
    """The array a DLPack capsule describes, on whatever device it says (device_type tells)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    # The capsule is not consumed: its destructor releases the producer's tensor.
    t = ctypes.cast(get(capsule, b"dltensor"), ctypes.POINTER(_DLTensor)).contents
    if t.dtype.lanes != 1 or t.dtype.code not in _DL_CODES:
        raise TypeError(f"unsupported DLPack dtype (code {t.dtype.code}, bits {t.dtype.bits}, lanes {t.dtype.lanes})")
    dtype = np.dtype(f"{_DL_CODES[t.dtype.code]}{t.dtype.bits // 8}") if t.dtype.code != 6 else np.dtype(bool)
    shape = tuple(t.shape[k] for k in range(t.ndim))
    if t.strides:
        strides = tuple(t.strides[k] * dtype.itemsize for k in range(t.ndim))
        if any(s > 1 for s in shape) and strides != _c_strides(shape, dtype.itemsize):
            raise ValueError(f"array must be C-contiguous, got shape {shape} and strides {strides}")
    return DeviceArray((t.data or 0) + t.byte_offset, shape, dtype, owner=(owner, capsule),
                       device_id=t.device.device_id, device_type=t.device.device_type)


def device_array(x: Any, name: str = "array") -> DeviceArray:
    """A DeviceArray over a C-contiguous CUDA array: a DeviceArray itself, a torch CUDA tensor, or
    anything with ``__cuda_array_interface__`` or ``__dlpack__``. TypeError for anything else."""
    if isinstance(x, DeviceArray):
        return x
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach()  # torch refuses the interface on tensors that require grad
    if hasattr(x, "__cuda_array_interface__"):
        cai = x.__cuda_array_interface__
        shape = tuple(int(s) for s in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        strides = cai.get("strides")
        if strides is not None and any(s > 1 for s in shape) and tuple(strides) != _c_strides(shape, dtype.itemsize):
            raise ValueError(f"{name} must be C-contiguous, got shape {shape} and strides {tuple(strides)}")
        device = getattr(x, "device", None)
        device_id = getattr(device, "index", getattr(device, "id", None))
        return DeviceArray(int(cai["data"][0] or 0), shape, dtype, owner=x, device_id=device_id)
    if hasattr(x, "__dlpack__"):
        array = from_dlpack_capsule(x.__dlpack__(), x)
        if array.device_type != _KDL_CUDA:
            raise TypeError(f"{name} is not on a CUDA device (DLPack device type {array.device_type})")
        return array
    raise TypeError(
        f"{name} must be a CUDA array (__cuda_array_interface__ or __dlpack__), got {type(x).__name__}; "
        "CPU arrays go to sam_edge.postprocess"
    )


# ---------------------------------------------------------------- pinned host memory


class PinnedArray:
    """A numpy view (`.array`) of page-locked host memory at `.ptr` (async copies need it)."""

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._allocation = _Allocation(nbytes, pinned=True)
        raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(self._allocation.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self.ptr = self._allocation.ptr


# ---------------------------------------------------------------- the library of device results


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
        return DeviceArray.empty(shape, dtype)

    def take_over(self) -> None:
        """Nothing to wait for: every array of this library is written on our stream only."""

    def hand_over(self) -> None:
        cuda_check(self._rt.cudaStreamSynchronize(self.stream_handle), "cudaStreamSynchronize")

    @staticmethod
    def is_device_array(array) -> bool:
        return hasattr(array, "__cuda_array_interface__")

    def host(self, array) -> np.ndarray:
        source = device_array(array)
        out = np.empty(source.shape, source.dtype)
        rt = self._rt
        cuda_check(rt.cudaMemcpyAsync(out.ctypes.data, source.ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                      self.stream_handle), "cudaMemcpyAsync (device to host)")
        cuda_check(rt.cudaStreamSynchronize(self.stream_handle), "cudaStreamSynchronize")
        return out


_PROVIDERS = {"torch": _TorchArrays, "cupy": _CupyArrays, "cuda-python": _CudaPythonArrays}


def array_provider(library: str = "auto", device: int = 0):
    """The device-array library: "torch", "cupy", "cuda-python", or "auto" (the first that works).

    A provider has `name`, `stream_handle` (its own cudaStream_t), `empty(shape, dtype)`,
    `host(array) -> numpy`, `is_device_array(x)`, and `take_over()` / `hand_over()`, which
    order its stream after the caller's work and the caller's after its results."""
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
