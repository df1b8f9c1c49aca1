"""Pure numpy implementations of the post-processing ops.

These are the fallbacks used when the compiled ``sam_edge._C`` is missing, and
the readable statement of what each compiled kernel computes. They take
already-validated inputs (see ``sam_edge.postprocess``): C-contiguous bool
masks, float32 logits.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

# ---------------------------------------------------------------- RLE


def rle_counts(masks: np.ndarray) -> List[np.ndarray]:
    """(N, H, W) bool -> N int64 arrays of column-major run lengths.

    Runs alternate 0, 1, 0, ... starting with zeros, so a mask whose first
    pixel (in Fortran order) is set starts with a zero-length run.
    """
    n, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, h * w)  # Fortran order per mask
    out = []
    for m in flat:
        if m.size == 0:
            out.append(np.zeros(1, dtype=np.int64))
            continue
        change = np.flatnonzero(m[1:] != m[:-1]) + 1
        bounds = np.concatenate(([0], change, [m.size]))
        counts = np.diff(bounds)
        if m[0]:
            counts = np.concatenate(([0], counts))
        out.append(counts.astype(np.int64))
    return out


def rle_decode(counts_list: List[np.ndarray], h: int, w: int) -> np.ndarray:
    """N run-length arrays -> (N, H, W) bool masks."""
    out = np.empty((len(counts_list), h, w), dtype=bool)
    for i, counts in enumerate(counts_list):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.sum() != h * w:
            raise ValueError(f"RLE {i}: run lengths sum to {int(counts.sum())}, expected h * w = {h * w}")
        values = np.arange(counts.size) % 2 == 1
        out[i] = np.repeat(values, counts).reshape(w, h).T
    return out


def counts_to_string(counts) -> bytes:
    """Run lengths -> pycocotools' compressed string.

    Each count (from the fourth on, as a difference from the count two
    before) is written 5 bits per character, low bits first, as chr(48 + c)
    with 0x20 marking "more follows"; the last character's 0x10 bit is the sign.
    """
    chars = bytearray()
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # Python's shift is arithmetic, like C's on a signed long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(c + 48)
    return bytes(chars)


def string_to_counts(s: bytes) -> np.ndarray:
    """pycocotools' compressed string -> uint32 run lengths."""
    counts: List[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(s) or k >= 12:
                raise ValueError("malformed compressed RLE string: truncated or overlong value")
            c = s[p] - 48
            if not 0 <= c <= 63:
                raise ValueError(f"malformed compressed RLE string: character {chr(s[p])!r} not in '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if not 0 <= x < 2**32:
            raise ValueError("malformed compressed RLE string: run length outside [0, 2**32)")
        counts.append(x)
    return np.asarray(counts, dtype=np.uint32)


# ---------------------------------------------------------------- boxes, stability


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) int64 XYXY; an empty mask gives [0, 0, 0, 0]."""
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.int64)
    if h == 0 or w == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    nonempty = rows.any(axis=1)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - 1 - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - 1 - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes


def stability_scores(logits: np.ndarray, hi: float, lo: float) -> np.ndarray:
    """(N, H*W) float32 -> (N,) float32 count(> hi) / count(> lo).

    Thresholds compare in float32, as torch does with a Python scalar.
    """
    above_hi = (logits > np.float32(hi)).sum(axis=1)
    above_lo = (logits > np.float32(lo)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return above_hi.astype(np.float32) / above_lo.astype(np.float32)


# ---------------------------------------------------------------- connected components


def _runs(mask: np.ndarray):
    """Horizontal runs of True: (row, start, end) arrays in raster order, end exclusive."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def connected_components(mask: np.ndarray, value: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """8-connected components of the pixels equal to ``value``.

    Returns (labels int32 (H, W), areas int64 (K,)); labels are 1..K, 0 for the
    other pixels. Components are numbered by their first 2x2 block in
    block-raster order, as cv2.connectedComponents numbers them.
    """
    h, w = mask.shape
    rows, starts, ends = _runs(mask == value)
    n = rows.size
    labels = np.zeros((h, w), dtype=np.int32)
    if n == 0:
        return labels, np.zeros(0, dtype=np.int64)
    # Runs on adjacent rows touch when their columns overlap after widening by
    # one (8-connectivity). Keys put every row on one line, a row length apart.
    stride = w + 2
    start_key = rows * stride + starts
    end_key = rows * stride + ends
    lo = np.searchsorted(end_key + stride, start_key, side="left")
    hi = np.searchsorted(start_key + stride, end_key, side="right")
    lengths = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), lengths)
    b = lo.repeat(lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    # Hook-and-compress union-find over the run graph.
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        if np.array_equal(pa, pb):
            break
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots, root_index = np.unique(parent, return_inverse=True)
    first_block = np.full(roots.size, np.iinfo(np.int64).max)
    np.minimum.at(first_block, root_index, (rows // 2) * ((w + 1) // 2) + starts // 2)
    rank = np.empty(roots.size, dtype=np.int64)
    rank[np.argsort(first_block, kind="stable")] = np.arange(roots.size)
    run_label = rank[root_index] + 1
    areas = np.bincount(run_label - 1, weights=ends - starts, minlength=roots.size).astype(np.int64)
    # Paint runs with a cumulative sum of +label at starts and -label at ends.
    delta = np.zeros(h * (w + 1) + 1, dtype=np.int64)
    np.add.at(delta, rows * (w + 1) + starts, run_label)
    np.add.at(delta, rows * (w + 1) + ends, -run_label)
    labels[:] = np.cumsum(delta)[:-1].reshape(h, w + 1)[:, :w]
    return labels, areas


def remove_small_regions(mask: np.ndarray, area_thresh: float, holes: bool) -> Tuple[np.ndarray, bool]:
    """segment_anything.utils.amg.remove_small_regions with our components."""
    labels, sizes = connected_components(mask, value=not holes)
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if len(small) == 0:
        return mask, False
    fill_labels = [0] + small
    if not holes:
        fill_labels = [i for i in range(len(sizes) + 1) if i not in set(fill_labels)]
        # Every island is small: keep the largest.
        if len(fill_labels) == 0:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, fill_labels), True


# ---------------------------------------------------------------- NMS


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, categories: np.ndarray, iou_threshold: float, offset_trick: bool
) -> np.ndarray:
    """Greedy NMS within categories, torchvision's float32 arithmetic -> kept indices, best first."""
    n = boxes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float32)
    cat = categories[order]
    if offset_trick:
        unit = boxes.max() + np.float32(1)
        b = b + (cat.astype(np.float32) * unit)[:, None]
        cat = np.zeros_like(cat)
    x1, y1, x2, y2 = b.T
    area = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for s in range(n):
        if suppressed[s]:
            continue
        keep.append(order[s])
        t = slice(s + 1, n)
        iw = np.maximum(np.float32(0), np.minimum(x2[s], x2[t]) - np.maximum(x1[s], x1[t]))
        ih = np.maximum(np.float32(0), np.minimum(y2[s], y2[t]) - np.maximum(y1[s], y1[t]))
        inter = iw * ih
        iou = inter / (area[s] + area[t] - inter)
        # torchvision compares the float32 IoU against the threshold as a double.
        suppressed[t] |= (iou.astype(np.float64) > iou_threshold) & (cat[t] == cat[s])
    return np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------- fused upsample


def linear_axis(in_size: int, out_size: int):
    """torch's bilinear (align_corners=False) taps for one axis, in float32.

    Returns (i0, i1, l0, l1): output i = l0[i] * in[i0[i]] + l1[i] * in[i1[i]].
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centers = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # scale * center - 0.5 with one rounding (a fused multiply-add), as torch's
    # AVX2/AVX-512 and aarch64 builds compute it: the float64 product of two
    # float32 values is exact, and so is the subtraction at these magnitudes.
    src = (np.float64(scale) * centers.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, np.float32(1) - lam, lam


def _bilinear(src: np.ndarray, ay, ax) -> np.ndarray:
    """Resize the last two axes of src with precomputed taps, in torch's order of operations."""
    y0, y1, v0, v1 = ay
    x0, x1, u0, u1 = ax
    r0 = src[..., y0, :]
    r1 = src[..., y1, :]
    return (r0[..., x0] * u0 + r0[..., x1] * u1) * v0[:, None] + (r1[..., x0] * u0 + r1[..., x1] * u1) * v1[:, None]


def upsampled_logits(low_res: np.ndarray, frame, crop, out_size) -> np.ndarray:
    """(N, h, w) float32 -> (N, H, W) float32: resize to frame, crop, resize to out_size."""
    fy = linear_axis(low_res.shape[1], frame[0])
    fx = linear_axis(low_res.shape[2], frame[1])
    # Only the cropped part of the frame is ever read.
    fy = tuple(a[: crop[0]] for a in fy)
    fx = tuple(a[: crop[1]] for a in fx)
    cropped = _bilinear(low_res, fy, fx)
    return _bilinear(cropped, linear_axis(crop[0], out_size[0]), linear_axis(crop[1], out_size[1]))


def upsample_threshold_stability(low_res, frame, crop, out_size, threshold, hi, lo):
    """Fallback of the fused op -> (masks, logits, stability, boxes)."""
    logits = upsampled_logits(low_res, frame, crop, out_size)
    masks = logits > np.float32(threshold)
    stability = stability_scores(logits.reshape(logits.shape[0], -1), hi, lo)
    return masks, logits, stability, masks_to_boxes(masks)
