"""A SAM whose decoder draws image-textured blobs around each point prompt.

Random ViT weights give masks that hardly depend on the prompt, so an
automatic mask generator test on them would see one mask. This model keeps the
official call signatures of the image encoder, prompt encoder and mask decoder,
so the *same* modules plug into the official Sam and into ours: both
generators then see identical decoder outputs, and the test measures what
they do with them (batching, thresholds, stability, NMS, crops, small-region
removal, RLE).
"""

import torch
import torch.nn.functional as F
from torch import nn

RADII = (3.0, 8.0, 16.0)  # low-res pixels, one per multimask output
SLOPE = 6.0  # logit per low-res pixel: stability near the threshold ~ ((r - 1/6) / (r + 1/6))^2


class PooledImageEncoder(nn.Module):
    """(B, 3, S, S) normalised image -> (B, C, S/16, S/16): the patch-mean intensity in every channel."""

    def __init__(self, img_size: int, channels: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x.mean(1, keepdim=True), 16)
        return pooled.expand(-1, self.channels, -1, -1).contiguous()


class CoordinatePromptEncoder(nn.Module):
    """Passes the first point's coordinates through as the 'sparse embedding'."""

    def __init__(self, img_size: int, channels: int = 256) -> None:
        super().__init__()
        grid = img_size // 16
        self.embed_dim = channels
        self.image_embedding_size = (grid, grid)
        self.input_image_size = (img_size, img_size)
        self.mask_input_size = (4 * grid, 4 * grid)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, self.embed_dim, *self.image_embedding_size)

    def forward(self, points, boxes, masks):
        coords, labels = points
        sparse = torch.cat([coords.float(), labels[..., None].float()], dim=-1)
        dense = torch.zeros(coords.shape[0], self.embed_dim, *self.image_embedding_size)
        return sparse, dense


class BlobMaskDecoder(nn.Module):
    """Logits SLOPE * (r - distance to the point) + image texture, for three radii."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        m = 4 * image_embeddings.shape[-1]
        point = sparse_prompt_embeddings[:, 0, :2] / 4.0  # input frame -> low-res pixels
        coords = torch.arange(m, dtype=torch.float32) + 0.5
        dist = torch.sqrt((coords[None, None, :] - point[:, 0, None, None]) ** 2
                          + (coords[None, :, None] - point[:, 1, None, None]) ** 2)
        texture = F.interpolate(image_embeddings[:, :1], (m, m), mode="bilinear", align_corners=False)
        texture = texture - texture.mean()
        logits = torch.stack([SLOPE * (r - dist) + 8.0 * texture[:, 0] for r in RADII], dim=1)
        iou = torch.stack([0.97 - 0.03 * i + 0.02 * torch.sin(point[:, 0] + 2 * point[:, 1]) for i in range(3)], dim=1)
        if not multimask_output:
            return logits[:, :1], iou[:, :1]
        return logits, iou


def synthetic_pair(img_size: int = 256):
    """(official Sam, sam_edge Sam) sharing the same synthetic modules."""
    from segment_anything.modeling import Sam as RefSam

    from sam_edge.modeling import Sam

    enc, prompt, dec = PooledImageEncoder(img_size), CoordinatePromptEncoder(img_size), BlobMaskDecoder()
    ref = RefSam(enc, prompt, dec, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).eval()
    ours = Sam(enc, prompt, dec).eval()
    return ref, ours
