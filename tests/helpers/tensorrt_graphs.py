"""Tiny ONNX graphs for the TensorRT tests: a decoder with the real decoder's input names
and dynamic axes, in two variants. `with_orig_im_size` mimics the official export's
trap (the crop and final resize read their sizes from an input's value); without it,
the graph returns low-res masks and takes its batch from point_coords.shape[0], as
our fast decoder does."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM, GRID, MASK = 8, 4, 16


class TinyDecoder(nn.Module):
    def __init__(self, with_orig_im_size: bool) -> None:
        super().__init__()
        self.with_orig_im_size = with_orig_im_size
        self.point_proj = nn.Linear(2, EMBED_DIM)
        self.mask_down = nn.Conv2d(1, EMBED_DIM, 4, stride=4)
        self.head = nn.Conv2d(EMBED_DIM, 4, 1)
        self.iou = nn.Linear(EMBED_DIM, 4)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size=None):
        tokens = self.point_proj(point_coords) * (point_labels.unsqueeze(-1) != -1).to(point_coords.dtype)
        pooled = tokens.mean(1)
        dense = self.mask_down(mask_input) * has_mask_input.reshape(-1, 1, 1, 1)
        image = image_embeddings.expand(point_coords.shape[0], -1, -1, -1) + dense
        low_res = F.interpolate(self.head(image + pooled[:, :, None, None]), scale_factor=4, mode="bilinear")
        iou = self.iou(pooled)
        if not self.with_orig_im_size:
            return iou, low_res
        size = float(MASK)
        masks = F.interpolate(low_res, (MASK, MASK), mode="bilinear", align_corners=False)
        prepadded = torch.floor(orig_im_size * (size / orig_im_size.max()) + 0.5).to(torch.int64)
        masks = masks[:, :, : prepadded[0], : prepadded[1]]
        out = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(out[0], out[1]), mode="bilinear", align_corners=False), iou, low_res


INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")


def export_tiny_decoder(path, with_orig_im_size: bool) -> str:
    import warnings

    torch.manual_seed(0)
    model = TinyDecoder(with_orig_im_size).eval()
    args = (
        torch.randn(1, EMBED_DIM, GRID, GRID),
        torch.rand(2, 3, 2) * MASK,
        torch.tensor([[1.0, 0.0, -1.0]] * 2),
        torch.randn(2, 1, MASK, MASK),
        torch.ones(2),
    )
    inputs, outputs = list(INPUTS), ["iou_predictions", "low_res_masks"]
    dynamic = {
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "mask_input": {0: "num_mask_inputs"},
        "has_mask_input": {0: "num_mask_inputs"},
    }
    if with_orig_im_size:
        args += (torch.tensor([12.0, 20.0]),)
        inputs.append("orig_im_size")
        outputs = ["masks"] + outputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return str(path)


def export_mlp(path, seed: int = 0) -> str:
    """Linear -> ReLU -> Linear on (B, 16) float32, dynamic batch."""
    torch.manual_seed(seed)
    import warnings

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.randn(4, 16),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    return str(path)


def quantize_mlp_qdq(src, dst, calibration: np.ndarray) -> str:
    """ONNX Runtime's static QDQ quantization, as the ONNX branch does it: uint8 asymmetric
    activations, int8 symmetric per-channel weights."""
    return _quantize_static_qdq(src, dst, calibration, 8)


def _quantize_static_qdq(src, dst, calibration: np.ndarray, rows: int, **options) -> str:
    """quantize_static in QDQ format on input "x", calibrated on `calibration` in batches of `rows`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": calibration[i : i + rows]} for i in range(0, len(calibration), rows)])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)
    return str(dst)

def contrib_op_graph(path) -> str:
    """x (B, 16) -> com.microsoft.Gelu -> y: a node outside the ONNX domain, as ONNX Runtime's fused
    attention writes them."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])
    node = helper.make_node("Gelu", ["x"], ["y"], name="fused_gelu", domain="com.microsoft")
    model = helper.make_model(helper.make_graph([node], "contrib", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return str(path)


class AttentionBlock(nn.Module):
    """LayerNorm -> qkv Linear -> scores + a decomposed rel-pos bias (q @ table) -> softmax -> proj Linear,
    on (B, N, C): the shape of the encoder's islands and quantized layers at a small size."""

    def __init__(self, dim: int = 32, tokens: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel = nn.Parameter(torch.randn(tokens, dim) * 0.5)
        self.scale = dim ** -0.5

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        bias = torch.einsum("bnc,mc->bnm", q, self.rel)  # exported as Einsum, which rel_pos_nodes takes
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + bias, dim=-1)
        return x + self.proj(attn @ v)


def export_attention_block(path, seed: int = 0) -> str:
    import warnings

    torch.manual_seed(seed)
    model = AttentionBlock().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 8, 32),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    return str(path)


def quantize_weight_matmuls_qdq(src, dst, calibration: np.ndarray) -> str:
    """ONNX Runtime's static QDQ quantization of the MatMuls against weights only (the nodes
    sam_edge.export.quantize picks), uint8 activations, int8 per-channel weights."""
    import onnx

    from sam_edge.export.quantize import quantizable_nodes

    nodes = [n.name for n in quantizable_nodes(onnx.load(str(src)))]
    return _quantize_static_qdq(src, dst, calibration, 2, nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"])


def tiny_profiles(**kw):
    """decoder_profiles for the tiny graphs' embedding (EMBED_DIM channels, GRID x GRID)."""
    from sam_edge.export.tensorrt_profiles import decoder_profiles

    return decoder_profiles(embedding_size=GRID, embed_dim=EMBED_DIM, **kw)


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
