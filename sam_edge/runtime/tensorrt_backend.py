"""The TensorRT backend: an encoder and a decoder engine from a bundle, on one CUDA stream.

Embed once, query many: the image embedding stays on the GPU between
queries; prompts go through pinned host buffers into persistent device
buffers; the decoder of the interactive profile replays a CUDA graph per
prompt shape; the masks are resized on the GPU by sam_edge.postprocess.cuda
where its kernels run (else on the host; `postprocess_path` says which). Every
call that touches the GPU makes the backend's device current and gives the
caller's back afterwards.

Device memory and the library of device results are in cuda_buffers; whether
a bundle's engines can run here is decided in tensorrt_compat. Imports numpy
at module level only; TensorRT, cuda-python, torch and CuPy are imported when
an engine is loaded.

Threads: a backend may be shared by any number of threads (each with its own
SamPredictor). It has one stream and one execution context per profile, which
TensorRT lets one caller use at a time, so its GPU work is serialised by a
lock: threads take turns rather than mix each other's inputs.
"""

import contextlib
import functools
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from ..config import PIXEL_MEAN, PIXEL_STD
from . import cuda_buffers
from .cuda_buffers import DeviceArray, PinnedArray, array_provider, cuda_check, device_array
from .prompt_layout import decoder_prompt_feed
from .tensorrt_compat import (
    Profile,
    ShapeTuple,
    check_engine_compatibility,
    check_engine_io,
    describe_profile,
    host_code_allowed,
    import_tensorrt,
    profile_holds,
    tensorrt_runtime_info,
)

#: Captured decoder graphs kept (one per prompt shape and embedding); least recently used go first.
MAX_CUDA_GRAPHS = 16


def _cuda_postprocess(device: int):
    """(sam_edge.postprocess.cuda.upsample_threshold_stability, description) when the masks can be
    resized on the GPU, else (None, why not). That function checks every array it is given
    (dtype, contiguity, device) before a pointer reaches _C_cuda."""
    from ..postprocess import cuda as postprocess_cuda

    where = postprocess_cuda.status(device)
    if not where["available"]:
        return None, f"numpy on the host (sam_edge._C_cuda {where['summary']})"
    return postprocess_cuda.upsample_threshold_stability, "CUDA (sam_edge.postprocess.cuda.upsample_threshold_stability)"


class TensorRTEngine:
    """One deserialized engine, an execution context per optimization profile (made on first
    use), and its I/O tensors: {name: (shape with -1 for dynamic axes, numpy dtype)}."""

    def __init__(self, trt, runtime, plan: bytes, name: str, stream: int) -> None:
        self.name, self.stream = name, stream
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
        self.profiles: List[Profile] = [self._read_profile(p) for p in range(self.num_profiles)]
        self._contexts: Dict[int, Any] = {}

    def _read_profile(self, index: int) -> Profile:
        """The shape ranges of one optimization profile, for the dynamic inputs."""
        return {
            name: ShapeTuple(*(tuple(s) for s in self.engine.get_tensor_profile_shape(name, index)))
            for name, (shape, _) in self.inputs.items()
            if -1 in shape
        }

    def choose_profile(self, shapes: Mapping[str, Tuple[int, ...]]) -> int:
        """The first profile whose ranges hold `shapes`; ValueError listing the ranges otherwise."""
        for index, profile in enumerate(self.profiles):
            if profile_holds(profile, shapes):
                return index
        allowed = "; ".join(describe_profile(profile) for profile in self.profiles)
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
            cuda_check(cuda_buffers.cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize (profile switch)")
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
    """Run a TensorRTBackend method holding the backend's lock, with its device current (see _device_scope)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock, self._device_scope():
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
    takes_torch_tensors = False  # inputs are staged from numpy; results are device arrays

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
        # Re-entrant: a locked method may call another (the staging buffers, contexts and stream are shared).
        self._lock = threading.RLock()
        self._rt = cuda_buffers.cudart()
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
        check_engine_io({e.name: (e.inputs, e.outputs) for e in (self.encoder, self.decoder)})
        self.mask_input_size = int(self.decoder.inputs["mask_input"][0][-1])
        self.embedding_shape = tuple(self.decoder.inputs["image_embeddings"][0])
        self.max_batch = max(profile["image"].max[0] for profile in self.encoder.profiles)
        self.max_prompts = max(profile["point_coords"].max[0] for profile in self.decoder.profiles)
        self.max_points = max(profile["point_coords"].max[1] for profile in self.decoder.profiles)
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

    def _allocate_buffers(self) -> None:
        s, m = self.image_size, self.mask_input_size
        b, p, n = self.max_batch, self.max_prompts, self.max_points
        self._image_host = PinnedArray((b, 3, s, s), np.float32)
        self._image_device = DeviceArray.empty((b, 3, s, s), np.float32)
        shapes = {
            "point_coords": (p, n, 2), "point_labels": (p, n), "mask_input": (p, 1, m, m), "has_mask_input": (p,),
            "iou_predictions": (p, 4), "low_res_masks": (p, 4, m, m), "image_embeddings": self.embedding_shape,
        }
        self._host = {k: PinnedArray(v, np.float32) for k, v in shapes.items() if k in self.decoder.inputs}
        self._device = {k: DeviceArray.empty(v, np.float32) for k, v in shapes.items()}

    def _upload(self, dst: int, src: int, nbytes: int) -> None:
        """Queue a copy from pinned host memory to the device on our stream."""
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream), "cudaMemcpyAsync (host to device)")

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
        out_ptr = device_array(out).ptr
        per_image = int(np.prod(self.embedding_shape[1:])) * 4
        s = self.image_size
        for start in range(0, batch, self.max_batch):
            chunk = x[start:start + self.max_batch]
            n = chunk.shape[0]
            self.synchronize()  # the pinned buffer may still be read by the previous copy
            staged = self._image_host.array[:n]
            staged.fill(0.0)  # zero padding after normalisation, as Sam.preprocess
            staged[:, :, :h, :w] = (chunk - PIXEL_MEAN[:, None, None]) / PIXEL_STD[:, None, None]
            self._upload(self._image_device.ptr, self._image_host.ptr, staged.nbytes)
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
            array = device_array(features, "features")  # refuses a non-contiguous array
            if array.shape != self.embedding_shape:
                raise ValueError(f"features must be {self.embedding_shape} (one image's embedding); got {array.shape}")
            if array.dtype != np.float32:
                raise TypeError(f"features must be float32; got {features.dtype}")
            return array.ptr
        host = np.ascontiguousarray(np.asarray(features, np.float32))
        if host.shape != self.embedding_shape:
            raise ValueError(f"features must be {self.embedding_shape} (one image's embedding); got {host.shape}")
        staged = self._host["image_embeddings"]
        self.synchronize()
        staged.array[...] = host
        self._upload(self._device["image_embeddings"].ptr, staged.ptr, host.nbytes)
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
            self._upload(self._device[name].ptr, self._host[name].ptr, value.nbytes)
        addresses = {name: self._device[name].ptr for name in list(feed) + ["iou_predictions", "low_res_masks"]}
        addresses["image_embeddings"] = embedding_ptr
        self._run_decoder(profile, shapes, addresses)
        chosen = (1, 3) if multimask_output else (0, 1)
        m = self.mask_input_size
        low_res = self.arrays.empty((batch, chosen[1], m, m), np.float32)
        scores = self.arrays.empty((batch, chosen[1]), np.float32)
        self._copy_channels(self._device["low_res_masks"].ptr, device_array(low_res).ptr, batch, 4, chosen, m * m * 4)
        self._copy_channels(self._device["iou_predictions"].ptr, device_array(scores).ptr, batch, 4, chosen, 4)
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
        """(B, C, m, m) low-res logits -> (B, C, H, W) float32 logits at the original size (see Backend)."""
        return self._upsample(low_res, input_size, original_size, logits=True)

    def binary_masks(self, low_res: Any, input_size: Tuple[int, int], original_size: Tuple[int, int]) -> Any:
        """(B, C, m, m) low-res logits -> (B, C, H, W) bool masks, logits > mask_threshold (see Backend)."""
        return self._upsample(low_res, input_size, original_size, logits=False)

    def _upsample(self, low_res: Any, input_size: Tuple[int, int], original_size: Tuple[int, int], logits: bool):
        """sam_edge.postprocess.upsample_threshold_stability: its CUDA twin where the kernels run,
        into arrays of the backend's library (numpy for the cuda-python library, which has no
        elementwise ops); else the host function, on numpy."""
        h, w = (int(v) for v in input_size)
        out_h, out_w = (int(v) for v in original_size)
        if self._gpu_postprocess is None or isinstance(low_res, np.ndarray):
            from .. import postprocess

            result = postprocess.upsample_threshold_stability(
                self.to_numpy(low_res), (h, w), (out_h, out_w), self.mask_threshold, frame_size=self.image_size,
                return_logits=logits,
            )
            return result[3] if logits else result[0]
        with self._lock, self._device_scope():
            self.arrays.take_over()
            lead = tuple(int(d) for d in low_res.shape[:-2])
            out = self.arrays.empty(lead + (out_h, out_w), np.float32 if logits else np.bool_)
            self._gpu_postprocess(
                low_res, (h, w), (out_h, out_w), mask_threshold=self.mask_threshold, frame_size=self.image_size,
                return_logits=logits, stream=self.stream, return_masks=not logits,
                **{"logits_out" if logits else "masks_out": out},
                stability_out=self.arrays.empty(lead, np.float32), boxes_out=self.arrays.empty(lead + (4,), np.int64),
            )
            if self.arrays.name == "cuda-python":
                return self.arrays.host(out)
            self.arrays.hand_over()
        return out

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
        version_compatible=host_code_allowed(manifest),
    )
    engine.manifest = dict(manifest)
    engine.bundle_dir = bundle_dir
    if engine._gpu_postprocess is None:  # the degraded path says so; sam_edge.info() reports the rest
        print(f"sam-edge: TensorRT bundle {bundle_dir}: masks are resized on the host: {engine.postprocess_path}",
              file=sys.stderr)
    return engine
