"""The HTTP API's requests and responses, as pure functions: bytes and JSON in,
validated numpy and dataclasses out, or a RequestError naming the field.

No Ray here, so every rule is unit-tested without a server. The deployments in
app.py call these and turn a RequestError into its 4xx JSON body.

    POST /v1/embed     image bytes (PNG/JPEG) or {"image": base64, "image_id"?}
    POST /v1/predict   {"image_id" and/or "image", point_coords, point_labels,
                        box, mask_input, multimask_output, mask_format,
                        return_scores, return_low_res_logits}
    POST /v1/generate  {"image": base64, automatic mask generator arguments}
"""

import base64
import binascii
import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: Image formats the API decodes; others are refused rather than guessed at.
IMAGE_FORMATS = ("PNG", "JPEG")
MASK_FORMATS = ("rle", "png")
GENERATE_OUTPUT_MODES = ("coco_rle", "uncompressed_rle")
_IMAGE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestError(ValueError):
    """A request the API refuses: HTTP `status`, the `field` at fault, what was
    `expected`, and a message for people."""

    def __init__(self, field: str, message: str, expected: Optional[str] = None, status: int = 400,
                 **extra: Any) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.expected = expected
        self.status = int(status)
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        """The JSON body of the 4xx response."""
        error = {"field": self.field, "message": self.message}
        if self.expected is not None:
            error["expected"] = self.expected
        error.update(self.extra)
        return {"error": error}


class ImageNotCached(RequestError):
    """A prompt by image_id alone reached a replica that does not hold the embedding:
    404, and the client resends the image (the documented miss policy)."""

    def __init__(self, image_id: str) -> None:
        super().__init__(
            "image_id",
            f"image_id {image_id!r} is not cached on this replica (evicted, never embedded, or the "
            "replica restarted); resend the request with the image",
            expected="an image_id whose embedding is cached, or the image itself",
            status=404,
            status_hint="resend_image",
            image_id=image_id,
        )


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Over a limit is a 413 (size) or a 400."""

    max_body_bytes: int = 32 << 20
    max_pixels: int = 4096 * 4096
    max_points: int = 64
    max_points_per_side: int = 64
    max_crop_layers: int = 2


@dataclass
class PromptRequest:
    """One prompt for one image, in original-image pixels, as the predictor takes it.

    point_coords (N, 2) float64 XY and point_labels (N,) int64 in {0, 1}, or both None;
    box (4,) float64 XYXY or None; mask_input (1, m, m) float32 low-res logits or None.
    """

    image_id: Optional[str] = None
    point_coords: Optional[np.ndarray] = None
    point_labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None
    mask_input: Optional[np.ndarray] = None
    multimask_output: bool = True
    mask_format: str = "rle"
    return_scores: bool = True
    return_low_res_logits: bool = False

    def predict_kwargs(self) -> Dict[str, Any]:
        """The arguments of SamPredictor.predict for this prompt."""
        return dict(point_coords=self.point_coords, point_labels=self.point_labels, box=self.box,
                    mask_input=self.mask_input, multimask_output=self.multimask_output)

    def batch_key(self) -> Tuple:
        """Prompts with equal keys stack into one decoder call."""
        return (
            0 if self.point_coords is None else len(self.point_coords),
            self.box is not None,
            self.mask_input is not None,
            self.multimask_output,
        )


@dataclass
class GenerateRequest:
    image: np.ndarray
    options: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- images


def image_id_of(image: np.ndarray) -> str:
    """The content id of a decoded (H, W, 3) uint8 image: sha256 of its size and pixels,
    so the same picture sent as PNG or as a re-encoded PNG maps to the same embedding."""
    digest = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def validate_image_id(value: Any, name: str = "image_id") -> str:
    if not isinstance(value, str) or not _IMAGE_ID.match(value):
        given = repr(value)[:60] if isinstance(value, str) else type(value).__name__
        raise RequestError(name, f"not a valid image id: {given}",
                           expected="1 to 128 characters from A-Z a-z 0-9 . _ : -")
    return value


def decode_image(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from PNG or JPEG bytes; RequestError when they are not one,
    or when the image has more than limits.max_pixels pixels (checked before decoding)."""
    from PIL import Image

    expected = f"PNG or JPEG bytes of at most {limits.max_pixels} pixels"
    if not data:
        raise RequestError(name, "the image is empty", expected=expected)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in IMAGE_FORMATS:
                    raise RequestError(name, f"image format {img.format} is not served", expected=expected,
                                       status=415)
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise RequestError(name, f"the image is {width}x{height} = {width * height} pixels, over "
                                             f"the limit of {limits.max_pixels}", expected=expected, status=413)
                if width == 0 or height == 0:
                    raise RequestError(name, f"the image is empty ({width}x{height})", expected=expected)
                array = np.asarray(img.convert("RGB"))
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError(name, "the image header declares far more pixels than the limit",
                           expected=expected, status=413) from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError, EOFError) as exc:
        raise RequestError(name, f"cannot decode the image: {type(exc).__name__}: {str(exc)[:200]}",
                           expected=expected) from None
    return np.ascontiguousarray(array, dtype=np.uint8)


def decode_base64(value: Any, name: str) -> bytes:
    """Bytes from a base64 string, optionally a data: URL."""
    if not isinstance(value, str):
        raise RequestError(name, f"expected a base64 string; got {type(value).__name__}",
                           expected="base64 of PNG or JPEG bytes")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(name, "not valid base64", expected="base64 of PNG or JPEG bytes") from None


# ---------------------------------------------------------------- JSON bodies


def parse_json_object(body: bytes, allowed: Tuple[str, ...]) -> Dict[str, Any]:
    """The request's JSON object; unknown fields are refused so that a typo is not ignored."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"not valid JSON: {str(exc)[:200]}", expected="a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object; got {type(data).__name__}", expected="a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise RequestError(unknown[0], f"unknown field {unknown[0]!r}", expected=f"fields among {list(allowed)}")
    return data


def _numbers(value: Any, name: str, expected: str) -> np.ndarray:
    """A float64 array from nested JSON lists, finite, or RequestError."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise RequestError(name, f"expected numbers; got {type(value).__name__}", expected=expected)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError(name, "expected a (nested) list of numbers of a regular shape", expected=expected) from None
    if array.dtype == object:
        raise RequestError(name, "expected numbers", expected=expected)
    if not np.all(np.isfinite(array)):
        raise RequestError(name, "contains NaN or infinite values", expected=expected)
    return array


def _bool(data: Dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(key, f"expected true or false; got {json.dumps(value)[:40]}", expected="a boolean")
    return value


def encode_array(array: np.ndarray) -> Dict[str, Any]:
    """A float32 array as {"shape", "dtype": "float32", "data": base64 of little-endian bytes}."""
    a = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(value: Any, name: str, expected: str) -> np.ndarray:
    """An array from nested lists or from encode_array's dict."""
    if isinstance(value, dict):
        if set(value) != {"shape", "dtype", "data"} or value.get("dtype") != "float32":
            raise RequestError(name, "an encoded array has exactly shape, dtype \"float32\" and data",
                               expected=expected)
        shape = value["shape"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise RequestError(name, "shape must be a list of non-negative integers", expected=expected)
        raw = decode_base64(value["data"], name)
        if len(raw) != 4 * int(np.prod(shape, dtype=np.int64)):
            raise RequestError(name, f"data holds {len(raw)} bytes; shape {shape} needs "
                                     f"{4 * int(np.prod(shape, dtype=np.int64))}", expected=expected)
        array = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
        if not np.all(np.isfinite(array)):
            raise RequestError(name, "contains NaN or infinite values", expected=expected)
        return array
    return _numbers(value, name, expected)


PREDICT_FIELDS = ("image_id", "image", "point_coords", "point_labels", "box", "mask_input", "multimask_output",
                  "return_logits", "mask_format", "return_scores", "return_low_res_logits")


def parse_predict(body: bytes, limits: Limits, mask_input_size: int) -> Tuple[PromptRequest, Optional[np.ndarray]]:
    """(prompt, decoded image or None) from a /v1/predict body.

    Shapes and values are checked here; that points and boxes lie inside the
    image is checked against its size by check_prompt_bounds.
    """
    data = parse_json_object(body, PREDICT_FIELDS)
    image = None
    image_id = validate_image_id(data["image_id"]) if data.get("image_id") is not None else None
    if data.get("image") is not None:
        image = decode_image(decode_base64(data["image"], "image"), limits)
    elif image_id is None:
        raise RequestError("image_id", "give an image_id from /v1/embed, or the image",
                           expected="image_id (string) or image (base64 PNG/JPEG)")
    prompt = PromptRequest(image_id=image_id)
    coords, labels = data.get("point_coords"), data.get("point_labels")
    if (coords is None) != (labels is None):
        missing = "point_labels" if labels is None else "point_coords"
        raise RequestError(missing, "point_coords and point_labels go together",
                           expected="both (N, 2) point_coords and (N,) point_labels, or neither")
    if coords is not None:
        expected = f"(N, 2) XY pixel coordinates, 1 <= N <= {limits.max_points}"
        points = _numbers(coords, "point_coords", expected)
        if points.ndim != 2 or points.shape[1] != 2 or not 1 <= points.shape[0] <= limits.max_points:
            raise RequestError("point_coords", f"got shape {list(points.shape)}", expected=expected)
        expected = f"({points.shape[0]},) labels, 1 foreground or 0 background"
        label_values = _numbers(labels, "point_labels", expected)
        if label_values.shape != (points.shape[0],):
            raise RequestError("point_labels", f"got shape {list(label_values.shape)}", expected=expected)
        if not np.isin(label_values, (0, 1)).all():
            raise RequestError("point_labels", f"got values {sorted(set(label_values.tolist()))}", expected=expected)
        prompt.point_coords, prompt.point_labels = points, label_values.astype(np.int64)
    if data.get("box") is not None:
        expected = "4 numbers X0, Y0, X1, Y1 in pixels with X0 <= X1 and Y0 <= Y1"
        box = _numbers(data["box"], "box", expected)
        if box.size != 4 or box.ndim > 2 or (box.ndim == 2 and box.shape[0] != 1):
            raise RequestError("box", f"got shape {list(box.shape)}", expected=expected)
        box = box.reshape(4)
        if box[0] > box[2] or box[1] > box[3]:
            raise RequestError("box", f"corners out of order: {box.tolist()}", expected=expected)
        prompt.box = box
    if data.get("mask_input") is not None:
        m = int(mask_input_size)
        expected = f"(1, {m}, {m}) low-res logits from a previous prediction"
        mask = decode_array(data["mask_input"], "mask_input", expected)
        if mask.shape != (1, m, m):
            raise RequestError("mask_input", f"got shape {list(mask.shape)}", expected=expected)
        prompt.mask_input = mask.astype(np.float32)
    if prompt.point_coords is None and prompt.box is None and prompt.mask_input is None:
        raise RequestError("point_coords", "no prompt given", expected="point_coords/point_labels, box or mask_input")
    prompt.multimask_output = _bool(data, "multimask_output", True)
    if _bool(data, "return_logits", False):
        raise RequestError("return_logits", "full-resolution logits are not served",
                           expected="false; ask for return_low_res_logits instead")
    prompt.mask_format = data.get("mask_format", "rle")
    if prompt.mask_format not in MASK_FORMATS:
        raise RequestError("mask_format", f"got {json.dumps(prompt.mask_format)[:40]}",
                           expected=f"one of {list(MASK_FORMATS)}")
    prompt.return_scores = _bool(data, "return_scores", True)
    prompt.return_low_res_logits = _bool(data, "return_low_res_logits", False)
    return prompt, image


def check_prompt_bounds(prompt: PromptRequest, original_size: Tuple[int, int]) -> None:
    """Points and the box must lie in the image: 0 <= x <= W and 0 <= y <= H (pixels)."""
    h, w = original_size
    limit = np.array([w, h], dtype=np.float64)
    expected = f"coordinates with 0 <= x <= {w} and 0 <= y <= {h} (the image is {w}x{h})"
    if prompt.point_coords is not None:
        outside = np.any((prompt.point_coords < 0) | (prompt.point_coords > limit), axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            raise RequestError("point_coords", f"point {i} {prompt.point_coords[i].tolist()} is outside the image",
                               expected=expected)
    if prompt.box is not None:
        corners = prompt.box.reshape(2, 2)
        if np.any((corners < 0) | (corners > limit)):
            raise RequestError("box", f"box {prompt.box.tolist()} is outside the image", expected=expected)


EMBED_FIELDS = ("image", "image_id")
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


def parse_embed(content_type: str, body: bytes, query: Dict[str, str], limits: Limits) -> Tuple[np.ndarray, str]:
    """(image, image_id) from a /v1/embed request: raw image bytes (image_id as a query
    parameter) or JSON {"image": base64, "image_id"?}. The id is the content hash
    unless the client gives one."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        data = parse_json_object(body, EMBED_FIELDS)
        if data.get("image") is None:
            raise RequestError("image", "no image given", expected="base64 of PNG or JPEG bytes")
        image = decode_image(decode_base64(data["image"], "image"), limits)
        given = data.get("image_id")
    elif kind in RAW_IMAGE_TYPES or kind == "":
        image = decode_image(body, limits)
        given = query.get("image_id")
    else:
        raise RequestError("content-type", f"cannot read a body of type {content_type!r}",
                           expected=f"one of {['application/json', *RAW_IMAGE_TYPES]}", status=415)
    image_id = validate_image_id(given) if given is not None else image_id_of(image)
    return image, image_id


GENERATE_OPTIONS = {
    # name: (type, minimum, maximum or None)
    "points_per_side": (int, 1, None),
    "points_per_batch": (int, 1, 1024),
    "pred_iou_thresh": (float, 0.0, None),
    "stability_score_thresh": (float, 0.0, 1.0),
    "stability_score_offset": (float, 0.0, None),
    "box_nms_thresh": (float, 0.0, 1.0),
    "crop_n_layers": (int, 0, None),
    "crop_nms_thresh": (float, 0.0, 1.0),
    "crop_overlap_ratio": (float, 0.0, 1.0),
    "crop_n_points_downscale_factor": (int, 1, None),
    "min_mask_region_area": (int, 0, None),
}


def parse_generate(body: bytes, limits: Limits) -> GenerateRequest:
    """The image and SamAutomaticMaskGenerator arguments of a /v1/generate body."""
    data = parse_json_object(body, ("image", "output_mode", *GENERATE_OPTIONS))
    if data.get("image") is None:
        raise RequestError("image", "no image given", expected="base64 of PNG or JPEG bytes")
    image = decode_image(decode_base64(data["image"], "image"), limits)
    maxima = {"points_per_side": limits.max_points_per_side, "crop_n_layers": limits.max_crop_layers}
    options: Dict[str, Any] = {}
    for name, (kind, low, high) in GENERATE_OPTIONS.items():
        if name not in data:
            continue
        value, high = data[name], maxima.get(name, high)
        number_ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        expected = f"{'an integer' if kind is int else 'a number'} in [{low}, {high if high is not None else 'inf'}]"
        if isinstance(value, bool) or not number_ok or not np.isfinite(value) or value < low or (
                high is not None and value > high):
            raise RequestError(name, f"got {json.dumps(value)[:40]}", expected=expected)
        options[name] = kind(value)
    mode = data.get("output_mode", "coco_rle")
    if mode not in GENERATE_OUTPUT_MODES:
        raise RequestError("output_mode", f"got {json.dumps(mode)[:40]}", expected=f"one of {list(GENERATE_OUTPUT_MODES)}")
    options["output_mode"] = mode
    return GenerateRequest(image=image, options=options)


# ---------------------------------------------------------------- responses


def encode_masks(masks: np.ndarray, mask_format: str) -> List[Any]:
    """(C, H, W) bool masks as C COCO RLEs {"size": [H, W], "counts": str}
    (pycocotools.mask.decode reads them) or C base64 1-bit PNGs."""
    masks = np.asarray(masks, dtype=bool)
    if mask_format == "rle":
        from .. import postprocess

        return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in postprocess.encode_rle(masks)]
    if mask_format == "png":
        from PIL import Image

        out = []
        for mask in masks:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(mask)).save(buffer, format="PNG")
            out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return out
    raise ValueError(f"mask_format must be one of {MASK_FORMATS}; got {mask_format!r}")


def prediction_body(prompt: PromptRequest, image_id: str, masks: np.ndarray, scores: np.ndarray,
                    low_res: np.ndarray) -> Dict[str, Any]:
    """The /v1/predict answer for one prompt: masks (C, H, W) bool, scores (C,), low_res (C, m, m)."""
    body: Dict[str, Any] = {"image_id": image_id, "mask_format": prompt.mask_format,
                            "masks": encode_masks(masks, prompt.mask_format)}
    if prompt.return_scores:
        body["scores"] = [float(s) for s in scores]
    if prompt.return_low_res_logits:
        body["low_res_logits"] = encode_array(low_res)
    return body
