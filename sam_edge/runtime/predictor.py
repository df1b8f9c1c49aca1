"""Embed once, query many: a drop-in for `segment_anything.SamPredictor`
over any backend (the torch model, or an engine from `sam_edge.load`).

Threads: an engine (or torch model) is shared by any number of threads; a
SamPredictor holds one image's state and belongs to one thread at a time.
Two threads inside one predictor at once, or a thread asking for masks of an
image that another thread set, raise PredictorThreadError instead of mixing
two images' embeddings.
"""

import functools
import threading
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..config import PIXEL_MEAN as _PIXEL_MEAN
from .backend import Backend
from .transforms import ResizeLongestSide

IMAGE_FORMATS = ("RGB", "BGR")
#: Default bound on H * W of an image: 2**27 pixels (an 11585 x 11585 image,
#: three bytes a pixel). Resizing holds a few copies of the image, so far larger
#: ones could exhaust memory; SamPredictor(max_image_pixels=...) moves it.
MAX_IMAGE_PIXELS = 1 << 27


class ImageNotSetError(RuntimeError, ValueError):
    """predict() or get_image_embedding() was called before set_image().

    A RuntimeError, as in the official package, and a ValueError, as for every
    other misuse of the predictor's inputs.
    """


class PredictorThreadError(RuntimeError):
    """A SamPredictor used by two threads at once, or asked for masks on a thread
    other than the one that set its image. A predictor holds one image: give each
    thread its own (they can share one engine)."""


def _exclusive(method):
    """Run `method` with the predictor to itself: a second thread entering while it
    runs raises PredictorThreadError (a non-blocking lock, so nothing waits)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self._busy.acquire(blocking=False):
            raise PredictorThreadError(
                f"SamPredictor.{method.__name__} was called while another thread is inside "
                f"SamPredictor.{self._active}; a predictor holds one image, so use one predictor "
                "per thread (they can share one engine)"
            )
        try:
            self._active = method.__name__
            return method(self, *args, **kwargs)
        finally:
            self._active = None
            self._busy.release()

    return wrapper


def as_backend(model_or_engine: Any) -> Backend:
    """The Backend behind a torch Sam model or an engine returned by sam_edge.load."""
    if isinstance(model_or_engine, Backend):
        return model_or_engine
    module = type(model_or_engine).__module__
    if module.startswith("sam_edge.modeling") or hasattr(model_or_engine, "image_encoder"):
        from .torch_backend import TorchBackend

        if not hasattr(model_or_engine, "prompt_encoder") or not hasattr(model_or_engine, "mask_decoder"):
            raise TypeError(f"{type(model_or_engine).__name__} is not a SAM model")
        return TorchBackend(model_or_engine)
    raise TypeError(
        "expected a sam_edge Sam model (sam_edge.sam_model_registry[...]) or an engine from "
        f"sam_edge.load(); got {type(model_or_engine).__name__}"
    )


#: Largest magnitude of a prompt value (pixels, or mask logits): past it the
#: float32 prompt encodings overflow to inf and the masks come out NaN.
VALUE_LIMIT = 1e9


def _as_float_array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric array-like; got {type(value).__name__}") from exc
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if array.size and np.abs(array).max() > VALUE_LIMIT:
        raise ValueError(f"{name} has values of magnitude up to {np.abs(array).max():.3g}; "
                         f"prompts must stay within +-{VALUE_LIMIT:.0e}")
    return array


def validate_image(image: Any, max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An (H, W, 3) uint8 image of at most `max_pixels` pixels (None: no bound),
    or a ValueError/TypeError that says what is wrong."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8; got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) with 3 colour channels; got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 with values in [0, 255]; got dtype {image.dtype}")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise ValueError(
            f"image of {image.shape[0]} x {image.shape[1]} pixels is over the limit of {max_pixels} pixels "
            "(max_image_pixels); downscale it first, or raise the limit where memory allows"
        )
    return image


class SamPredictor:
    """Computes an image embedding once, then predicts masks for any number of prompts.

    Arguments:
        sam_model: a `sam_edge` Sam model, or an engine from `sam_edge.load`.
        max_image_pixels: set_image refuses images with more pixels (H * W), with
            a ValueError; None for no bound.

    One predictor per thread: the model or engine is shared, the predictor is
    not. Its image belongs to the thread that set it; predict() on another
    thread, or two threads inside it at once, raise PredictorThreadError.
    Handing a predictor between threads is fine when the new thread sets
    its own image first.
    """

    def __init__(self, sam_model: Any, max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> None:
        if max_image_pixels is not None and (not isinstance(max_image_pixels, int) or max_image_pixels < 1):
            raise ValueError(f"max_image_pixels must be a positive int or None; got {max_image_pixels!r}")
        self.max_image_pixels = max_image_pixels
        self.model = sam_model
        self.backend = as_backend(sam_model)
        self.transform = ResizeLongestSide(self.backend.image_size)
        self._busy = threading.Lock()
        self._active: Optional[str] = None
        self._reset()

    @property
    def device(self) -> Any:
        return self.backend.device

    # ---- embedding -------------------------------------------------------
    @_exclusive
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an (H, W, 3) uint8 image in `image_format` ("RGB" or "BGR")."""
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}; got {image_format!r}")
        image = validate_image(image, self.max_image_pixels)
        if image_format != self.backend.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        batch = np.ascontiguousarray(input_image.transpose(2, 0, 1)[None])
        self._embed(self.backend.from_numpy(batch), image.shape[:2])

    @_exclusive
    def set_image_batch(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Embed N (H_i, W_i, 3) uint8 images in one encoder call (sizes may differ).

        The embeddings are kept for all N; `select_image(i)` makes image i the
        one that predict() / predict_torch() answer for. Image 0 is selected.
        """
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}; got {image_format!r}")
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("set_image_batch takes a sequence of (H, W, 3) images; use set_image for one image")
        images = [validate_image(image, self.max_image_pixels) for image in images]
        if not images:
            raise ValueError("set_image_batch needs at least one image")
        size = self.backend.image_size
        # Pad with the pixel mean: after normalisation that is exactly the zero
        # padding of Sam.preprocess, so images of different sizes share one batch.
        batch = np.empty((len(images), 3, size, size), dtype=np.float32)
        batch[:] = _PIXEL_MEAN[None, :, None, None]
        input_sizes = []
        for i, image in enumerate(images):
            if image_format != self.backend.image_format:
                image = image[..., ::-1]
            resized = self.transform.apply_image(np.ascontiguousarray(image))
            batch[i, :, : resized.shape[0], : resized.shape[1]] = resized.transpose(2, 0, 1)
            input_sizes.append(resized.shape[:2])
        self._reset()
        self._batch_features = self.backend.embed(self.backend.from_numpy(batch))
        self._batch_sizes = [(tuple(image.shape[:2]), tuple(s)) for image, s in zip(images, input_sizes)]
        self._owner = threading.get_ident()
        self._select(0)

    @property
    def num_images(self) -> int:
        """How many images set_image_batch embedded (1 after set_image)."""
        return len(self._batch_sizes) if self._batch_sizes else int(self.is_image_set)

    @_exclusive
    def select_image(self, index: int) -> None:
        """Answer prompts for image `index` of the last set_image_batch."""
        self._require_owner()
        self._select(index)

    def _select(self, index: int) -> None:
        if not self._batch_sizes:
            raise ImageNotSetError("select_image needs images set with .set_image_batch(...)")
        if not 0 <= index < len(self._batch_sizes):
            raise ValueError(f"image index must be in [0, {len(self._batch_sizes)}); got {index}")
        self.original_size, self.input_size = self._batch_sizes[index]
        self.features = self._batch_features[index : index + 1]
        self.is_image_set = True

    @_exclusive
    def set_torch_image(self, transformed_image: Any, original_image_size: Tuple[int, ...]) -> None:
        """Embed a (1, 3, h, w) tensor already resized by `transform.apply_image`,
        whose original size was `original_image_size` (H, W)."""
        shape = tuple(getattr(transformed_image, "shape", ()))
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != self.backend.image_size:
            raise ValueError(
                f"set_torch_image expects (1, 3, h, w) with max(h, w) == {self.backend.image_size} "
                f"(resized by transform.apply_image); got {shape}"
            )
        if not self.backend.takes_torch_tensors:
            transformed_image = self.backend.from_numpy(transformed_image.detach().cpu().numpy())
        self._embed(transformed_image, original_image_size)

    def _embed(self, input_image: Any, original_size: Tuple[int, ...]) -> None:
        self._reset()
        self.original_size = tuple(int(s) for s in original_size)
        self.input_size = tuple(int(s) for s in input_image.shape[-2:])
        self.features = self.backend.embed(input_image)
        self._owner = threading.get_ident()
        self.is_image_set = True

    @_exclusive
    def get_image_embedding(self) -> Any:
        """The (1, C, g, g) embedding of the current image."""
        self._require_image()
        return self.features

    @_exclusive
    def reset_image(self) -> None:
        """Forget the image (any thread may)."""
        self._reset()

    def _reset(self) -> None:
        self._owner = None  # the thread that set the image
        self._batch_features = None
        self._batch_sizes = None
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")
        self._require_owner()

    def _require_owner(self) -> None:
        if self._owner is not None and self._owner != threading.get_ident():
            raise PredictorThreadError(
                "this SamPredictor's image was set on another thread; a predictor holds one image, so use "
                "one predictor per thread (they can share one engine), or call set_image on this thread first"
            )

    # ---- prompts -----------------------------------------------------------
    @_exclusive
    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image, in original-image pixel coordinates.

        Arguments:
            point_coords: (N, 2) XY points.
            point_labels: (N,) labels, 1 foreground and 0 background.
            box: (4,) XYXY box.
            mask_input: (1, 256, 256) low-res logits from a previous prediction.
            multimask_output: three masks if True, else one.
            return_logits: return logits instead of binary masks.
        Returns:
            masks (C, H, W) bool (float32 logits with return_logits),
            scores (C,) float32, low-res logits (C, 256, 256) float32.
        """
        self._require_image()
        b = self.backend
        coords = labels = boxes = masks_in = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = _as_float_array(point_coords, "point_coords")
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"point_coords must be (N, 2) XY; got shape {coords.shape}")
            labels = np.asarray(point_labels)
            if labels.shape != (coords.shape[0],):
                raise ValueError(
                    f"point_labels must be ({coords.shape[0]},), one label per point; got shape {labels.shape}"
                )
            if not np.isin(labels, (-1, 0, 1)).all():
                raise ValueError(f"point_labels must be 1 (foreground) or 0 (background); got {np.unique(labels)}")
            coords = self.transform.apply_coords(coords, self.original_size)
            coords = b.from_numpy(coords[None].astype(np.float32))
            labels = b.from_numpy(labels[None].astype(np.int64))
        if box is not None:
            box_array = _as_float_array(box, "box")
            if box_array.size != 4 or box_array.ndim > 2:
                raise ValueError(f"box must be 4 numbers X0, Y0, X1, Y1; got shape {box_array.shape}")
            boxes = b.from_numpy(self.transform.apply_boxes(box_array.reshape(4), self.original_size).astype(np.float32))
        if mask_input is not None:
            m = b.mask_input_size
            mask_array = _as_float_array(mask_input, "mask_input")
            if mask_array.shape != (1, m, m):
                raise ValueError(f"mask_input must be (1, {m}, {m}) low-res logits; got shape {mask_array.shape}")
            masks_in = b.from_numpy(mask_array[None].astype(np.float32))
        masks, scores, low_res = self._predict(coords, labels, boxes, masks_in, multimask_output, return_logits)
        return b.to_numpy(masks[0]), b.to_numpy(scores[0]), b.to_numpy(low_res[0])

    @_exclusive
    def predict_torch(
        self,
        point_coords: Optional[Any],
        point_labels: Optional[Any],
        boxes: Optional[Any] = None,
        mask_input: Optional[Any] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[Any, Any, Any]:
        """Batched prompts, already in the resized input frame (see `transform`).

        Arguments:
            point_coords: (B, N, 2) tensor; point_labels: (B, N).
            boxes: (B, 4) XYXY tensor.
            mask_input: (B, 1, 256, 256) low-res logits.
        Returns:
            masks (B, C, H, W), scores (B, C), low-res logits (B, C, 256, 256).
        """
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        batch = []
        if point_coords is not None:
            if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be (B, N, 2); got {tuple(point_coords.shape)}")
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels must be {tuple(point_coords.shape[:2])}; got {tuple(point_labels.shape)}"
                )
            if not bool(point_coords.isfinite().all()) or bool((point_coords.abs() > VALUE_LIMIT).any()):
                raise ValueError(f"point_coords must be finite and within +-{VALUE_LIMIT:.0e}")
            batch.append(point_coords.shape[0])
        if boxes is not None:
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) XYXY; got {tuple(boxes.shape)}")
            if not bool(boxes.isfinite().all()) or bool((boxes.abs() > VALUE_LIMIT).any()):
                raise ValueError(f"boxes must be finite and within +-{VALUE_LIMIT:.0e}")
            batch.append(boxes.shape[0])
        if mask_input is not None:
            m = self.backend.mask_input_size
            if mask_input.dim() != 4 or tuple(mask_input.shape[1:]) != (1, m, m):
                raise ValueError(f"mask_input must be (B, 1, {m}, {m}); got {tuple(mask_input.shape)}")
            batch.append(mask_input.shape[0])
        if len(set(batch)) > 1:
            raise ValueError(f"prompt batch sizes disagree: {batch}")
        if not self.backend.takes_torch_tensors:
            import torch

            b = self.backend
            conv = lambda t: None if t is None else b.from_numpy(t.detach().cpu().numpy())  # noqa: E731
            out = self._predict(
                conv(point_coords), conv(point_labels), conv(boxes), conv(mask_input), multimask_output, return_logits
            )
            return tuple(torch.from_numpy(np.asarray(b.to_numpy(x))) for x in out)
        return self._predict(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)

    def _predict(self, coords, labels, boxes, mask_input, multimask_output, return_logits):
        low_res, scores = self.backend.decode(self.features, coords, labels, boxes, mask_input, multimask_output)
        if return_logits:
            masks = self.backend.postprocess_masks(low_res, self.input_size, self.original_size)
        else:
            masks = self.backend.binary_masks(low_res, self.input_size, self.original_size)
        return masks, scores, low_res
