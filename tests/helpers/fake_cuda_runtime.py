"""Spec'd fake of cuda-python's runtime (`cuda.bindings.runtime`): devices, memory, streams,
and CUDA graphs. "Device" memory is host memory from ctypes; every copy is checked against
the allocation it touches, and work queued on a capturing stream is recorded into the
graph and replayed by cudaGraphLaunch. Citations in brackets: see tensorrt_fakes.py."""

import ctypes
import enum
from typing import Any, Callable, Dict, List, Optional, Tuple

GPU_NAME = "NVIDIA Fake GPU"
COMPUTE_CAPABILITY = (9, 0)


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
