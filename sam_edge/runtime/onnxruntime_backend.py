"""The ONNX Runtime backend: an encoder and a decoder graph from a bundle,
numpy in and out. Imports numpy and onnxruntime only (no torch).

The decoder graph is the "fast" one of `sam_edge.export.onnx_export`: it
returns all four mask tokens' low-res logits and scores; the multimask choice
happens here, and the resize to the image in sam_edge.postprocess (numpy API).
"""

import platform
import threading
from typing import AbstractSet, Optional, Sequence, Tuple

import numpy as np

from .. import postprocess
from ..config import PIXEL_MEAN, PIXEL_STD
from . import cpu
from .prompt_layout import decoder_prompt_feed


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_gemm_saturates(flags: Optional[AbstractSet[str]] = None, machine: Optional[str] = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 GEMM saturates on this CPU (or on one with `flags`
    and `machine`): on x86 without VNNI it adds pairs of products in int16, clipping
    where weights reach outside [-64, 63]. Unknown flags on x86 count as saturating."""
    machine = (platform.machine() if machine is None else machine).lower()
    if machine not in X86_MACHINES:
        return False
    flags = cpu.cpu_flags() if flags is None else flags
    return not (set(flags) & cpu.VNNI_FLAGS)


def session_options(threads: Optional[int] = None):
    """The ``onnxruntime.SessionOptions`` every bundle graph runs with.

    Where ONNX Runtime's u8s8 integer GEMMs (int8 bundles' MatMulIntegerToFloat)
    saturate (int8_gemm_saturates), ``session.x64quantprecision`` moves them to
    u8u8 kernels, exact but slower. Elsewhere it is left off: it rewrites every
    int8 weight to u8 on any x86 CPU, which would trade VNNI's and AMX's u8s8
    kernels for the u8u8 ones and add nothing to exactness.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if int8_gemm_saturates():
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


class OnnxRuntimeBackend:
    """Backend over ONNX Runtime sessions for an encoder and a "fast" decoder graph.

    Arguments:
        encoder_path, decoder_path: ONNX files (see sam_edge.export.onnx_export).
        image_size: side of the square model input (1024 for the official models).
        providers: ONNX Runtime execution providers; CPU when None.
        threads: intra-op threads per session; ONNX Runtime's default when None.
        split_decoder_paths: (image part, prompt part) of the fast decoder split at the
            image (sam_edge.export.onnx_export.export_split_decoder), or None. With
            them, prompts without mask_input run only the prompt part; the image
            part runs once per embedding and is kept with it.
        encoder_ops: {"path", "compute", "attribute"}: run the encoder as the graph
            at `path`, whose attentions are sam_edge_ops' RelPosAttention nodes
            (ort_ops), registering the op library; `compute` is what each runs
            here (for encoder_mode); `attribute`, when not None, replaces the
            nodes' compute attribute. None: the standard-op graph at encoder_path.
        decoder_prompt_ops: the path of the prompt part whose mask upscaling is
            sam_edge_ops' MaskUpscale node (same inputs and outputs), run in
            place of split_decoder_paths[1] with the op library registered; if
            its session cannot be made, the standard prompt part runs and
            `decoder_prompt_fallback` says why.
        `encoder_mode` says which encoder runs, `decoder_prompt_mode` which prompt part.

    Shared by threads: any number may call embed and decode at once
    (InferenceSession.run is thread-safe, the attention kernel's scratch is per
    thread, and the split decoder's cached image part is kept per thread).
    """

    name = "onnxruntime"
    mask_threshold = 0.0
    image_format = "RGB"
    takes_torch_tensors = False

    def __init__(
        self,
        encoder_path: str,
        decoder_path: str,
        image_size: int,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
        split_decoder_paths: Optional[Tuple[str, str]] = None,
        encoder_ops: Optional[dict] = None,
        decoder_prompt_ops: Optional[str] = None,
    ) -> None:
        import onnxruntime as ort

        options = session_options(threads)
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.decoder = ort.InferenceSession(decoder_path, options, providers=providers)
        self.decoder_image = self.decoder_prompt = None
        self.decoder_prompt_mode = self.decoder_prompt_fallback = None
        if split_decoder_paths is not None:
            image_path, prompt_path = split_decoder_paths
            self.decoder_image = ort.InferenceSession(image_path, options, providers=providers)
            if decoder_prompt_ops is not None:
                from .ort_ops import decoder_prompt_ops_session, library_path

                try:
                    self.decoder_prompt = decoder_prompt_ops_session(decoder_prompt_ops, session_options(threads),
                                                                     providers)
                    self.decoder_prompt_mode = "one graph + sam_edge_ops MaskUpscale"
                except Exception as exc:  # ONNX Runtime's own types: e.g. an op this library build lacks
                    self.decoder_prompt_fallback = (
                        f"its decoder prompt ops graph does not load with {library_path()} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
            if self.decoder_prompt is None:
                self.decoder_prompt = ort.InferenceSession(prompt_path, options, providers=providers)
                self.decoder_prompt_mode = "single ONNX Runtime graph"
        # .value: (a copy of the embedding, the image part's outputs for it), one
        # image's worth per thread, so threads on different images do not evict each other.
        self._image_side = threading.local()
        # ORT's memory pattern plans one block for a whole run on top of what the
        # arena already holds; without it the arena reuses the freed attention maps.
        options.enable_mem_pattern = False
        if encoder_ops is not None:
            from .ort_ops import encoder_ops_session

            self.encoder = encoder_ops_session(encoder_ops["path"], session_options(threads), providers,
                                               encoder_ops.get("attribute"), encoder_ops["compute"])
            kinds = ", ".join(sorted(set(encoder_ops["compute"])))
            self.encoder_mode = (f"one graph + sam_edge_ops RelPosAttention "
                                 f"({len(encoder_ops['compute'])} cuts, {kinds})")
        else:
            self.encoder = ort.InferenceSession(encoder_path, options, providers=providers)
            self.encoder_mode = "single ONNX Runtime graph"
        self.image_size = int(image_size)
        mask_input = {i.name: i for i in self.decoder.get_inputs()}["mask_input"]
        self.mask_input_size = int(mask_input.shape[-1])
        self.providers = self.encoder.get_providers()

    @property
    def device(self) -> str:
        return self.providers[0]

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def preprocess(self, input_image: np.ndarray) -> np.ndarray:
        """(B, 3, h, w) pixel values in [0, 255] -> (B, 3, S, S) float32, normalised and
        zero-padded at the bottom/right, as Sam.preprocess."""
        x = np.asarray(input_image, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3 or max(x.shape[2:]) > self.image_size:
            raise ValueError(
                f"input_image must be (B, 3, h, w) with max(h, w) <= {self.image_size}; got {x.shape}"
            )
        b, _, h, w = x.shape
        out = np.zeros((b, 3, self.image_size, self.image_size), dtype=np.float32)
        out[:, :, :h, :w] = (x - PIXEL_MEAN[:, None, None]) / PIXEL_STD[:, None, None]
        return out

    def embed(self, input_image: np.ndarray) -> np.ndarray:
        """(B, 3, h, w) pixel values in [0, 255] -> (B, 256, g, g) float32 embeddings."""
        return self.encoder.run(None, {"image": self.preprocess(input_image)})[0]

    def decoder_inputs(
        self,
        features: np.ndarray,
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        boxes: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
    ) -> dict:
        """The decoder graph's feed for B prompts, laid out as the torch prompt encoder does:
        points, then box corners (labels 2, 3); a padding point (label -1) when there is no box."""
        feed = decoder_prompt_feed(point_coords, point_labels, boxes, mask_input, self.mask_input_size)
        feed["image_embeddings"] = np.asarray(features, np.float32)
        return feed

    def decode(
        self,
        features: np.ndarray,
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        boxes: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: bool,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """See Backend.decode: (B, C, m, m) low-res logits and (B, C) scores, C = 3 or 1."""
        feed = self.decoder_inputs(features, point_coords, point_labels, boxes, mask_input)
        if mask_input is None and self.decoder_prompt is not None and feed["image_embeddings"].shape[0] == 1:
            prompt_feed = dict(self.image_side(feed["image_embeddings"]))
            prompt_feed["point_coords"] = feed["point_coords"]
            prompt_feed["point_labels"] = feed["point_labels"]
            iou, low_res = self.decoder_prompt.run(None, prompt_feed)
        else:
            iou, low_res = self.decoder.run(None, feed)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return low_res[:, chosen], iou[:, chosen]

    def image_side(self, embedding: np.ndarray) -> dict:
        """The split decoder's image part for a (1, 256, g, g) embedding: computed on the
        first prompt against it and reused while the embedding is the same. "The
        same" is by value (cheap beside a decoder run), so an embedding changed
        in place is never answered from a stale cache."""
        cached = getattr(self._image_side, "value", None)
        if cached is not None and cached[0].shape == embedding.shape and np.array_equal(cached[0], embedding):
            return cached[1]
        names = [o.name for o in self.decoder_image.get_outputs()]
        outputs = dict(zip(names, self.decoder_image.run(names, {"image_embeddings": embedding})))
        self._image_side.value = (embedding.copy(), outputs)
        return outputs

    def binary_masks(
        self, low_res: np.ndarray, input_size: Tuple[int, int], original_size: Tuple[int, int]
    ) -> np.ndarray:
        """(B, C, m, m) low-res logits -> (B, C, H, W) bool masks in one pass
        (sam_edge.postprocess, compiled when _C is built), with no
        full-resolution float logits."""
        masks, _, _ = postprocess.upsample_threshold_stability(
            low_res, input_size, original_size, self.mask_threshold, frame_size=self.image_size
        )
        return masks

    def postprocess_masks(
        self, low_res: np.ndarray, input_size: Tuple[int, int], original_size: Tuple[int, int]
    ) -> np.ndarray:
        """(B, C, m, m) low-res logits -> (B, C, H, W) float32 logits at the original size,
        by the resize binary_masks thresholds."""
        return postprocess.upscale_mask_logits(low_res, input_size, original_size, frame_size=self.image_size)
