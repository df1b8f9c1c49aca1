"""Export SAM's image encoder and mask decoder to ONNX.

Graphs and their contracts (S = config.image_size, g = S / 16, m = 4 g):

encoder.onnx
    image (B, 3, S, S) float32, already normalised by the pixel mean/std and
    zero-padded at the bottom/right -> image_embeddings (B, 256, g, g).
    B is dynamic. The rel-pos gather tables are folded into constants and
    every attention is MatMul -> Add(bias) -> Softmax -> MatMul, the pattern
    ONNX Runtime and TensorRT fuse. fuse_global_attention rewrites the global
    blocks' as ONNX Runtime's contrib MultiHeadAttention (ORT bundles only).

decoder.onnx ("fast", used by our runtime)
    image_embeddings (1, 256, g, g), point_coords (B, N, 2) float32 in the
    resized input frame, point_labels (B, N) float32 (1 fg, 0 bg, 2 / 3 box
    corners, -1 padding), mask_input (B or 1, 1, m, m), has_mask_input (B or 1,)
    -> iou_predictions (B, 4), low_res_masks (B, 4, m, m). Output 0 is the
    single-mask token, 1..3 the multimask tokens. B and N are dynamic; the
    resize to the image is left to the runtime (numpy), so no shape in the
    graph depends on an input value and TensorRT can build it.

decoder_image.onnx + decoder_prompt.onnx (the fast decoder split at the image)
    The part of the fast decoder that depends on the image alone, run once per
    image: image_embeddings (1, 256, g, g) -> image_tokens (1, g*g, 256) (the
    embedding plus the no-mask embedding, as tokens) and the first two-way
    block's projections of them, image_k, image_v, image_q (1, g*g, 128). The
    prompt part takes those and point_coords, point_labels as above -> the
    fast decoder's outputs. Together they equal decoder.onnx for prompts
    without a mask_input; the runtime uses them for those, decoder.onnx for
    the rest (and TensorRT builds decoder.onnx).

decoder_prompt_ops.onnx (ONNX Runtime hosts that register sam_edge_ops)
    decoder_prompt.onnx with the mask upscaling (output_upscaling and the
    hypernetwork product) as one ai.sam_edge MaskUpscale node
    (sam_edge.kernels.mask_upscale), its parameters initializers beside it.

decoder_official.onnx (ONNX Runtime only)
    The inputs above plus orig_im_size (2,) float32 (H, W) -> masks
    (B, 4, H, W), iou_predictions (B, 4), low_res_masks (B, 4, m, m): the names
    and semantics of the official `SamOnnxModel` with return_single_mask=False.
    The crop and the final resize take their sizes from orig_im_size *at run
    time* (Slice and Resize with computed inputs): the official export turns
    them into constants of the dummy input, so its graph is wrong for every
    other aspect ratio (segment-anything issue #56). An output whose shape is
    an input's value cannot be a static-shape TensorRT engine, so this variant
    is for ONNX Runtime only.
"""

import os
import warnings
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import register_backend
from ..kernels.rel_pos import get_rel_pos
from ..modeling.transformer import ImageProjections

#: The opset every graph is exported with.
OPSET = 17
#: ONNX protobufs cannot exceed 2 GiB; above this the weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Name of the attention backend used only while tracing for export.
EXPORT_ATTENTION_BACKEND = "onnx_export"

IMAGE_SIDE_OUTPUTS = ("image_tokens", "image_k", "image_v", "image_q")
PROMPT_DECODER_INPUTS = IMAGE_SIDE_OUTPUTS + ("point_coords", "point_labels")
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")
OFFICIAL_DECODER_INPUTS = DECODER_INPUTS + ("orig_im_size",)
OFFICIAL_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def _export_attention(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, scale=None):
    """The reference math in the order exporters fuse: MatMul -> Add(bias) -> Softmax -> MatMul.

    The bias is built as one (B, heads, N, M) tensor from the two rel-pos
    factors, instead of being added to a 6-d view of the scores.
    """
    # The grid sizes are fixed by the model's input size: as Python ints the
    # rel-pos gather indices become constants and fold away.
    q_size = (int(q_size[0]), int(q_size[1]))
    k_size = (int(k_size[0]), int(k_size[1]))
    heads, D = q.shape[1], q.shape[3]
    N, M = q_size[0] * q_size[1], k_size[0] * k_size[1]
    scale = int(D) ** -0.5 if scale is None else scale
    rel_h, rel_w = _rel_pos_bias_terms_batched(q, rel_pos_h, rel_pos_w, q_size, k_size)
    bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(-1, heads, N, M)
    attn = torch.matmul(q * scale, k.transpose(-2, -1)) + bias
    return torch.matmul(attn.softmax(dim=-1), v)


def _rel_pos_bias_terms_batched(q, rel_pos_h, rel_pos_w, q_size, k_size):
    """rel_pos_bias_terms as two batched MatMuls instead of Einsums.

    rel_h[b, n, i, j, :] = Rh[i] @ q[b, n, i, j] is, for each query row i, one
    (B * heads * q_w, D) x (D, k_h) product; likewise rel_w per query column j.
    ONNX Runtime runs these as batched GEMMs; its Einsum took ~5% of the int8
    encoder's time on transposes and small products.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, D)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, D)
    heads, D = q.shape[1], q.shape[3]
    r_q = q.reshape(-1, heads, q_h, q_w, D)
    by_row = r_q.permute(2, 0, 1, 3, 4).reshape(q_h, -1, D)  # (q_h, B * heads * q_w, D)
    rel_h = (by_row @ Rh.transpose(1, 2)).reshape(q_h, -1, heads, q_w, k_h).permute(1, 2, 0, 3, 4)
    by_col = r_q.permute(3, 0, 1, 2, 4).reshape(q_w, -1, D)  # (q_w, B * heads * q_h, D)
    rel_w = (by_col @ Rw.transpose(1, 2)).reshape(q_w, -1, heads, q_h, k_w).permute(1, 2, 3, 0, 4)
    return rel_h, rel_w


register_backend(EXPORT_ATTENTION_BACKEND, _export_attention)


class EncoderForExport(nn.Module):
    """The image encoder on normalised, padded input, with export-friendly attention."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder over the official ONNX inputs (see module docstring).

    With `with_orig_im_size`, also upsamples the masks to orig_im_size, reading
    the size at run time.
    """

    def __init__(self, sam, with_orig_im_size: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.image_encoder.img_size
        self.with_orig_im_size = with_orig_im_size

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer._encode((point_coords + 0.5) / self.img_size)
        labels = point_labels.unsqueeze(-1)
        emb = emb * (labels != -1).to(emb.dtype) + pe.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for i, point_embedding in enumerate(pe.point_embeddings):
            emb = emb + point_embedding.weight * (labels == i).to(emb.dtype)
        return emb

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has * self.prompt_encoder.mask_downscaling(mask_input) + (1 - has) * no_mask

    def _upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        size = self.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        orig = orig_im_size.to(torch.float32)
        # As ResizeLongestSide: int(side * scale + 0.5), kept as tensors so they stay graph inputs.
        prepadded = torch.floor(orig * (size / orig.max()) + 0.5).to(torch.int64)
        masks = masks[:, :, : prepadded[0], : prepadded[1]]
        out_size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(out_size[0], out_size[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: Optional[torch.Tensor] = None,
    ):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        # One embedding serves all B prompts by broadcasting (predict_masks): the
        # batch in the graph comes from point_coords, whatever batch mask_input has.
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        if not self.with_orig_im_size:
            return iou, low_res
        return self._upscale(low_res, orig_im_size), iou, low_res


class DecoderImageForExport(nn.Module):
    """The image-only part of the fast decoder (see module docstring): no mask input,
    so the dense embedding is the learned no-mask embedding."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.first_block = sam.mask_decoder.transformer.layers[0]

    def forward(self, image_embeddings: torch.Tensor):
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = (image_embeddings + no_mask).flatten(2).transpose(1, 2)
        pe = self.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)
        return (tokens,) + tuple(self.first_block.image_projections(tokens, pe))


class DecoderPromptForExport(DecoderForExport):
    """The prompt part of the fast decoder, over DecoderImageForExport's outputs."""

    def forward(self, image_tokens, image_k, image_v, image_q, point_coords, point_labels):
        sparse = self._embed_points(point_coords, point_labels)
        pe = self.prompt_encoder.get_dense_pe()
        grid = (int(pe.shape[2]), int(pe.shape[3]))
        low_res, iou = self.mask_decoder.predict_masks_from_tokens(
            image_tokens, pe.flatten(2).transpose(1, 2), sparse, ImageProjections(image_k, image_v, image_q), grid
        )
        return iou, low_res


def _dummy_decoder_inputs(config, batch: int = 2, points: int = 3):
    g, m = config.image_embedding_size, config.mask_input_size
    return (
        torch.randn(1, config.prompt_embed_dim, g, g),
        torch.rand(batch, points, 2) * config.image_size,
        torch.tensor([[1.0, 0.0, -1.0]] * batch)[:, :points],
        torch.randn(batch, 1, m, m),
        torch.ones(batch),
    )


def _torch_export(model, args, path, inputs, outputs, dynamic_axes, opset, custom_opsets=None) -> None:
    """torch.onnx.export (TorchScript tracer) into a scratch directory, then one
    clean save at `path`: weights inline, or all in `path + ".data"` when they
    would not fit a 2 GiB protobuf (ViT-H). The tracer writes one side file per
    tensor for large models; none of those reach the bundle. custom_opsets:
    {domain: version} of the custom ops the graph holds."""
    import shutil
    import tempfile

    import onnx

    scratch = tempfile.mkdtemp(prefix=".onnx-export-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        traced = os.path.join(scratch, "model.onnx")
        with warnings.catch_warnings():
            # The tracer warns about every Python number taken from a shape; those
            # are the static sizes we mean to bake (grid, window, head width).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                args,
                traced,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                custom_opsets=custom_opsets,
            )
        graph = onnx.load(traced, load_external_data=True)
        size = sum(t.ByteSize() for t in graph.graph.initializer)
        if size > EXTERNAL_DATA_THRESHOLD:
            onnx.save_model(
                graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                location=os.path.basename(path) + ".data", size_threshold=1024,
            )
        else:
            onnx.save_model(graph, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@torch.no_grad()
def export_encoder(sam, path: str, opset: int = OPSET) -> str:
    """Write the image encoder of `sam` to `path` (see module docstring); returns path.

    Weights over ~1.8 GB (ViT-H) go to `path + ".data"` next to it.
    """
    config = sam.config
    encoder = sam.image_encoder
    previous = [block.attn.backend for block in encoder.blocks]
    encoder.set_attention_backend(EXPORT_ATTENTION_BACKEND)
    try:
        dummy = torch.randn(1, 3, config.image_size, config.image_size)
        _torch_export(
            EncoderForExport(sam).eval(), (dummy,), path, ENCODER_INPUTS, ENCODER_OUTPUTS,
            {"image": {0: "batch"}, "image_embeddings": {0: "batch"}}, opset,
        )
    finally:
        for block, backend in zip(encoder.blocks, previous):
            block.attn.backend = backend
    return path


@torch.no_grad()
def export_decoder(sam, path: str, official: bool = False, opset: int = OPSET) -> str:
    """Write the prompt encoder + mask decoder to `path`: the fast variant, or
    with `official` the orig_im_size variant (see module docstring)."""
    config = sam.config
    model = DecoderForExport(sam, with_orig_im_size=official).eval()
    args = _dummy_decoder_inputs(config)
    inputs, outputs = DECODER_INPUTS, DECODER_OUTPUTS
    dynamic = {
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "mask_input": {0: "num_mask_inputs"},
        "has_mask_input": {0: "num_mask_inputs"},
        "iou_predictions": {0: "num_prompts"},
        "low_res_masks": {0: "num_prompts"},
    }
    if official:
        # A dummy size that is neither square nor the model's size, so nothing of it can hide in the graph.
        args = args + (torch.tensor([700.0, 1100.0]),)
        inputs, outputs = OFFICIAL_DECODER_INPUTS, OFFICIAL_DECODER_OUTPUTS
        dynamic["masks"] = {0: "num_prompts", 2: "height", 3: "width"}
    _torch_export(model, args, path, inputs, outputs, dynamic, opset)
    return path


@torch.no_grad()
def export_split_decoder(
    sam, image_path: str, prompt_path: str, opset: int = OPSET, prompt_ops_path: Optional[str] = None
) -> Tuple[str, str]:
    """Write the fast decoder split at the image (see module docstring): the image part
    to `image_path`, the prompt part to `prompt_path`, and with `prompt_ops_path`
    the prompt part again with its mask upscaling as one sam_edge_ops MaskUpscale
    node (decoder_prompt_ops.onnx: the same inputs, outputs and dynamic axes)."""
    from ..kernels.mask_upscale import export_as_op
    from ..runtime.ort_ops import DOMAIN, DOMAIN_VERSION

    config = sam.config
    image_model = DecoderImageForExport(sam).eval()
    embeddings, coords, labels, _, _ = _dummy_decoder_inputs(config)
    _torch_export(image_model, (embeddings,), image_path, ("image_embeddings",), IMAGE_SIDE_OUTPUTS, {}, opset)
    image_side = image_model(embeddings)
    dynamic = {
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "iou_predictions": {0: "num_prompts"},
        "low_res_masks": {0: "num_prompts"},
    }
    prompt_model = DecoderPromptForExport(sam).eval()
    _torch_export(prompt_model, image_side + (coords, labels), prompt_path, PROMPT_DECODER_INPUTS, DECODER_OUTPUTS,
                  dynamic, opset)
    if prompt_ops_path is not None:
        with export_as_op():
            _torch_export(prompt_model, image_side + (coords, labels), prompt_ops_path, PROMPT_DECODER_INPUTS,
                          DECODER_OUTPUTS, dynamic, opset, custom_opsets={DOMAIN: DOMAIN_VERSION})
    return image_path, prompt_path


#: The fused attention op `fuse_global_attention` writes (ONNX Runtime contrib ops).
FUSED_ATTENTION_OP = ("com.microsoft", "MultiHeadAttention")


def fuse_global_attention(path: str, config) -> int:
    """Rewrite, in place, each global block's MatMul -> Add(bias) -> Softmax -> MatMul
    of the encoder graph at `path` as ONNX Runtime's com.microsoft.MultiHeadAttention
    with that bias as attention_bias; returns how many were rewritten.

    The same math (ORT computes the same products: the tests compare the graphs);
    ONNX Runtime's CPU kernel scales, adds the bias and normalises each head's
    rows in one pass instead of three over the 12 x 4096 x 4096 scores.
    ViT-B, 2 threads, benchmarks/bench_encoder_interleaved.py against the plain
    graph: fp32 7.03 -> 6.61 s, int8 1.14x (cpu-2core-xeon-*-encoder-interleaved-*).
    Windowed blocks stay as they are (the fused op measured slower on 25 small
    windows). For ONNX Runtime only: TensorRT builds take the unfused graph.
    External weights are not read (ViT-H keeps its data file as it is). Run it
    after quantization: ONNX shape inference has no types for the contrib op.
    """
    import onnx
    from onnx import helper, numpy_helper

    from .graph_patterns import attention_cores, graph_index

    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    _, consumers, _ = graph_index(graph)
    heads = config.encoder_num_heads
    p = "fused_attention/"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), p + "to_bsd"))
    replaced, removed = {}, set()
    for core in attention_cores(graph, config.encoder_global_attn_indexes):
        scores, add, softmax, out_matmul = core["scores"], core["add"], core["softmax"], core["out_matmul"]
        scaled, k_transposed = core["scaled"], core["k_transposed"]
        q, k, v, bias, scale = core["q"], core["k"], core["v"], core["bias"], core["scale"]
        n = f"{p}{len(replaced)}/"
        replaced[out_matmul.name] = [
            helper.make_node("Transpose", [q], [n + "q_bsnh"], perm=[0, 2, 1, 3], name=n + "q_to_bsnh"),
            helper.make_node("Reshape", [n + "q_bsnh", p + "to_bsd"], [n + "q_bsd"], name=n + "q_to_bsd"),
            helper.make_node(
                FUSED_ATTENTION_OP[1], [n + "q_bsd", k, v, "", "", bias], [n + "out_bsd"],
                domain=FUSED_ATTENTION_OP[0], num_heads=heads, scale=scale, name=n + "attention",
            ),
            helper.make_node("Shape", [n + "q_bsnh"], [n + "bsnh"], name=n + "shape"),
            helper.make_node("Reshape", [n + "out_bsd", n + "bsnh"], [n + "out_bsnh"], name=n + "out_to_bsnh"),
            helper.make_node("Transpose", [n + "out_bsnh"], [out_matmul.output[0]], perm=[0, 2, 1, 3],
                             name=n + "out_to_bnsh"),
        ]
        removed |= {scores.name, add.name, softmax.name, out_matmul.name}
        if len(consumers[scaled.output[0]]) == 1:
            removed.add(scaled.name)
        if len(consumers[k_transposed.output[0]]) == 1:
            removed.add(k_transposed.name)
    nodes = []
    dropped_inputs = set()
    for node in graph.node:
        if node.name in replaced:
            nodes.extend(replaced[node.name])
        elif node.name not in removed:
            nodes.append(node)
        if node.name in removed or node.name in replaced:
            dropped_inputs.update(node.input)
    del graph.node[:]
    graph.node.extend(nodes)
    # The scale constants only the removed Mul read: ONNX Runtime warned about
    # each unused initializer at every session start.
    used = {i for node in graph.node for i in node.input} | {i.name for i in graph.input}
    unused = [t for t in graph.initializer if t.name in dropped_inputs and t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    if not any(o.domain == FUSED_ATTENTION_OP[0] for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_ATTENTION_OP[0], 1))
    onnx.save_model(model, path)
    return len(replaced)


def op_counts(path: str) -> dict:
    """{op_type: count} over the main graph of an ONNX file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    counts: dict = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def attention_pattern_count(path: str) -> Tuple[int, int]:
    """(number of Softmax nodes, how many of them sit in MatMul -> Add -> Softmax -> MatMul)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    fused = 0
    for sm in softmaxes:
        add = producer.get(sm.input[0])
        if add is None or add.op_type != "Add":
            continue
        if not any(producer.get(i) is not None and producer[i].op_type == "MatMul" for i in add.input):
            continue
        if any(c.op_type == "MatMul" for c in consumers.get(sm.output[0], [])):
            fused += 1
    return len(softmaxes), fused
