"""How prompts are laid out for the exported decoder graphs (ONNX Runtime and TensorRT)."""

from typing import Dict, Optional

import numpy as np


def decoder_prompt_feed(
    point_coords: Optional[np.ndarray],
    point_labels: Optional[np.ndarray],
    boxes: Optional[np.ndarray],
    mask_input: Optional[np.ndarray],
    mask_input_size: int,
) -> Dict[str, np.ndarray]:
    """The decoder graph's prompt inputs for B prompts, laid out as the torch
    prompt encoder does: points, then box corners (labels 2, 3); a padding
    point (label -1) when there is no box.

    Args (resized input frame): point_coords (B, N, 2), point_labels (B, N),
        boxes (B, 4) XYXY, mask_input (B, 1, m, m) logits; any may be None.
    Returns:
        point_coords (B, N', 2) and point_labels (B, N') float32, mask_input
        (B or 1, 1, m, m) float32 and has_mask_input (B or 1,) float32.
    """
    sizes = [a.shape[0] for a in (point_coords, boxes, mask_input) if a is not None]
    batch = sizes[0] if sizes else 1
    coords = [np.zeros((batch, 0, 2), np.float32)]
    labels = [np.zeros((batch, 0), np.float32)]
    if point_coords is not None:
        coords.append(np.asarray(point_coords, np.float32))
        labels.append(np.asarray(point_labels, np.float32))
        if boxes is None:
            coords.append(np.zeros((batch, 1, 2), np.float32))
            labels.append(-np.ones((batch, 1), np.float32))
    if boxes is not None:
        coords.append(np.asarray(boxes, np.float32).reshape(batch, 2, 2))
        labels.append(np.tile(np.array([[2.0, 3.0]], np.float32), (batch, 1)))
    m = mask_input_size
    if mask_input is None:
        masks, has_mask = np.zeros((1, 1, m, m), np.float32), np.zeros(1, np.float32)
    else:
        masks = np.asarray(mask_input, np.float32)
        has_mask = np.ones(masks.shape[0], np.float32)
    return {
        "point_coords": np.ascontiguousarray(np.concatenate(coords, axis=1)),
        "point_labels": np.ascontiguousarray(np.concatenate(labels, axis=1)),
        "mask_input": masks,
        "has_mask_input": has_mask,
    }
