"""Whole-image segmentation from a grid of point prompts: a drop-in for
`segment_anything.SamAutomaticMaskGenerator` over any backend.

Per crop: embed once, decode the point grid in batches, drop low-IoU
predictions *before* upsampling, then upsample + threshold + stability +
box in one compiled pass (`sam_edge.postprocess`), RLE-encode, and NMS.
No torch is needed on this path.
"""

import math
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from itertools import product
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import postprocess as pp
from .predictor import PredictorThreadError, SamPredictor, validate_image

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n², 2) evenly spaced XY points in [0, 1]², cell centres."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """One grid per crop layer, with n_per_side / scale_per_layer**i points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Tuple[int, int], n_layers: int, overlap_ratio: float
) -> Tuple[List[List[int]], List[int]]:
    """XYXY crop boxes and their layer index: the whole image, then 2^i x 2^i
    overlapping crops for each layer i >= 1."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for layer in range(n_layers):
        n = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w, crop_h = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        xs = [int((crop_w - overlap) * i) for i in range(n)]
        ys = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer + 1)
    return boxes, layers


def box_near_crop_edge(boxes: np.ndarray, crop_box: List[int], orig_box: List[int], atol: float = 20.0) -> np.ndarray:
    """(N,) True where a box (crop frame) touches a crop edge that is not an image edge."""
    x0, y0 = crop_box[:2]
    boxes = boxes.astype(np.float32) + np.array([x0, y0, x0, y0], dtype=np.float32)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float32)) <= atol
    near_image = np.abs(boxes - np.asarray(orig_box, np.float32)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


class _Records:
    """Column store of mask candidates (the official MaskData, in numpy)."""

    def __init__(self) -> None:
        self.cols: Dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.cols.get("iou_preds", ()))

    def add(self, **cols: Any) -> None:
        for k, v in cols.items():
            if k not in self.cols:
                self.cols[k] = v
            elif isinstance(v, list):
                self.cols[k] = self.cols[k] + v
            else:
                self.cols[k] = np.concatenate([self.cols[k], v])

    def extend(self, other: "_Records") -> None:
        if len(other):
            self.add(**other.cols)

    def keep(self, index: np.ndarray) -> None:
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        for k, v in self.cols.items():
            self.cols[k] = [v[i] for i in index] if isinstance(v, list) else v[index]

    def __getitem__(self, key: str) -> Any:
        return self.cols[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.cols[key] = value


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts.

    Arguments are those of the official generator; `model` may be a sam_edge
    Sam model or an engine from `sam_edge.load`.

    One generator per thread, like SamPredictor (it holds one): the model or
    engine is shared. A second thread calling generate() while one runs gets
    PredictorThreadError.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side and point_grids must be given")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}; got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1; got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0; got {crop_n_layers}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1; got {points_per_side}")
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        elif len(point_grids) != crop_n_layers + 1:
            raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}); got {len(point_grids)}")
        self.predictor = SamPredictor(model)
        self._busy = threading.Lock()
        self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        #: Seconds per stage of the last generate() call (embed, decode,
        #: postprocess, nms, small_regions, encode_output), for profiling.
        self.last_timings: Dict[str, float] = {}

    @contextmanager
    def _stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] += time.perf_counter() - t0

    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Masks for an (H, W, 3) uint8 RGB image.

        Returns one record per mask: segmentation (per output_mode), area,
        bbox (XYWH), predicted_iou, point_coords ([[x, y]]), stability_score,
        crop_box (XYWH), as the official generator.
        """
        image = validate_image(image, self.predictor.max_image_pixels)
        # One generate at a time: each sets crops on the one predictor, and a
        # second thread's crop would be answered for the first's points.
        if not self._busy.acquire(blocking=False):
            raise PredictorThreadError(
                "SamAutomaticMaskGenerator.generate was called while another thread is inside it; "
                "use one generator per thread (they can share one engine)"
            )
        try:
            self._timings = defaultdict(float)
            data = self._generate_masks(image)
            if self.min_mask_region_area > 0:
                with self._stage("small_regions"):
                    data = self._remove_small_regions(data, image.shape[:2])
            with self._stage("encode_output"):
                records = self._records(data)
            self.last_timings = dict(self._timings)
        finally:
            self._busy.release()
        return records

    def _records(self, data: "_Records") -> List[Dict[str, Any]]:
        records = []
        if not len(data):
            return records  # nothing survived: no columns were ever added
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "coco_rle":
                compressed = pp.compress_rle(rle)
                segmentation = {"size": compressed["size"], "counts": compressed["counts"].decode("utf-8")}
            elif self.output_mode == "binary_mask":
                segmentation = pp.decode_rle(rle)
            else:
                segmentation = rle
            x0, y0, x1, y1 = (int(v) for v in data["boxes"][i])
            cx0, cy0, cx1, cy1 = (int(v) for v in data["crop_boxes"][i])
            records.append({
                "segmentation": segmentation,
                "area": pp.area_from_rle(rle),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        return records

    def _generate_masks(self, image: np.ndarray) -> _Records:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = _Records()
        for crop_box, layer in zip(crop_boxes, layer_idxs):
            data.extend(self._process_crop(image, crop_box, layer, orig_size))
        if len(crop_boxes) > 1 and len(data):
            # Between crops prefer masks from smaller crops.
            cb = data["crop_boxes"].astype(np.float64)
            scores = 1.0 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
            with self._stage("nms"):
                data.keep(pp.batched_nms(data["boxes"].astype(np.float32), scores, np.zeros(len(data), np.int64), self.crop_nms_thresh))
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: List[int], layer: int, orig_size: Tuple[int, int]
    ) -> _Records:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_size = crop.shape[:2]
        with self._stage("embed"):
            self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        data = _Records()
        for start in range(0, len(points), self.points_per_batch):
            data.extend(self._process_batch(points[start : start + self.points_per_batch], crop_size, crop_box, orig_size))
        self.predictor.reset_image()
        if len(data):
            with self._stage("nms"):
                data.keep(pp.batched_nms(
                    data["boxes"].astype(np.float32), data["iou_preds"], np.zeros(len(data), np.int64), self.box_nms_thresh
                ))
            offset = np.array([x0, y0, x0, y0])
            data["boxes"] = data["boxes"] + offset
            data["points"] = data["points"] + offset[:2]
            data["crop_boxes"] = np.tile(np.asarray(crop_box)[None], (len(data), 1))
        return data

    def _process_batch(
        self, points: np.ndarray, crop_size: Tuple[int, int], crop_box: List[int], orig_size: Tuple[int, int]
    ) -> _Records:
        p = self.predictor
        b = p.backend
        coords = p.transform.apply_coords(points, crop_size).astype(np.float32)[:, None, :]
        labels = np.ones(coords.shape[:2], dtype=np.int64)
        with self._stage("decode"):
            low_res, iou = b.decode(p.features, b.from_numpy(coords), b.from_numpy(labels), None, None, True)
            low_res, iou = b.to_numpy(low_res), b.to_numpy(iou)
        n_masks = low_res.shape[1]
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        iou = iou.reshape(-1)
        pts = np.repeat(points, n_masks, axis=0)
        # The IoU filter does not depend on the masks: apply it before upsampling.
        keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else np.ones(len(iou), bool)
        low_res, iou, pts = low_res[keep], iou[keep], pts[keep]
        if not len(iou):
            return _Records()
        with self._stage("postprocess"):
            return self._postprocess_batch(low_res, iou, pts, crop_size, crop_box, orig_size)

    def _postprocess_batch(self, low_res, iou, pts, crop_size, crop_box, orig_size) -> "_Records":
        p, b = self.predictor, self.predictor.backend
        data = _Records()
        masks, stability, boxes = pp.upsample_threshold_stability(
            low_res, p.input_size, crop_size, b.mask_threshold, self.stability_score_offset, b.image_size
        )
        keep = stability >= self.stability_score_thresh if self.stability_score_thresh > 0 else np.ones(len(iou), bool)
        orig_h, orig_w = orig_size
        keep &= ~box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        masks = masks[keep]
        if not len(masks):
            return data
        x0, y0, x1, y1 = crop_box
        if (x0, y0, x1, y1) != (0, 0, orig_w, orig_h):
            masks = np.pad(masks, ((0, 0), (y0, orig_h - y1), (x0, orig_w - x1)))
        data.add(
            iou_preds=iou[keep].astype(np.float32),
            points=pts[keep],
            stability_score=stability[keep].astype(np.float32),
            boxes=boxes[keep].astype(np.int64),
            rles=pp.mask_to_rle(masks),
        )
        return data

    def _remove_small_regions(self, data: _Records, orig_size: Tuple[int, int]) -> _Records:
        """Fill small holes and drop small islands; prefer unchanged masks in a final NMS."""
        if not len(data):
            return data
        masks, unchanged = [], []
        for rle in data["rles"]:
            mask = pp.decode_rle(rle)
            mask, changed_holes = pp.remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = pp.remove_small_regions(mask, self.min_mask_region_area, "islands")
            masks.append(mask)
            unchanged.append(float(not (changed_holes or changed_islands)))
        masks = np.stack(masks)
        boxes = pp.masks_to_boxes(masks)
        scores = np.asarray(unchanged, np.float32)
        keep = pp.batched_nms(boxes.astype(np.float32), scores, np.zeros(len(masks), np.int64), max(self.box_nms_thresh, self.crop_nms_thresh))
        rles = list(data["rles"])
        for i in keep:
            if scores[i] == 0.0:
                rles[i] = pp.mask_to_rle(masks[i])[0]
                data["boxes"][i] = boxes[i]
        data["rles"] = rles
        data.keep(keep)
        return data
