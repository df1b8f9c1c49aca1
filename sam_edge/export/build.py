"""`sam-edge build`: a checkpoint in, a verified ONNX Runtime bundle out.

The bundle is written by bundle_writer: staged next to the output and renamed
into place only once every graph and the manifest are complete. See
sam_edge/runtime/bundle.py for the layout.
"""

import dataclasses
import datetime
import gc
import os
import platform
import sys
from typing import Any, Dict, Optional

from ..config import SamConfig
from ..precision import EncoderConversion, get_precision
from ..runtime.bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION
from ..runtime.ort_ops import DecoderPromptOpsGraph
from .bundle_writer import BundleStaging, move_bundle_into_place

#: Precisions of the encoder graph. The decoder stays fp32 in every bundle: it
#: is small and cheap, and its outputs are what users threshold.
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
BACKENDS = ("onnxruntime", "tensorrt")
#: The decoder's prompt part with its mask upscaling as one sam_edge_ops MaskUpscale node.
PROMPT_OPS_GRAPH_FILE = "decoder_prompt_ops.onnx"


def library_versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    return {
        "sam_edge": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def build_bundle(
    output: str,
    config: SamConfig,
    checkpoint: Optional[str] = None,
    precision: str = "fp32",
    backend: str = "onnxruntime",
    calib_images: Optional[str] = None,
    num_calib_images: Optional[int] = None,
    overwrite: bool = False,
    official_decoder: bool = True,
    fused_attention: Optional[bool] = None,
    ops_graph: bool = True,
    quiet: bool = False,
) -> Dict[str, Any]:
    """Build a bundle for `config` at `output`; returns its manifest.

    Arguments:
        output: the bundle directory to create.
        config: the model's SamConfig (get_config("vit_b"), or a reduced one for tests).
        checkpoint: official-format .pth; None for seeded random weights (said so, and recorded).
        precision: one of PRECISIONS (the encoder's; the decoder is fp32).
        calib_images: directory of images for int8 calibration; the bundled photos when None.
        overwrite: replace an existing bundle at `output`.
        fused_attention: for ONNX Runtime (fp32 and int8 encoders), run the global
            blocks' attention as its fused com.microsoft.MultiHeadAttention
            (onnx_export.fuse_global_attention); False keeps standard ops only
            (what TensorRT builds from). None: True for backend "onnxruntime",
            False for "tensorrt", whose parser has no importer for contrib ops.
        ops_graph: for ONNX Runtime (fp32 and int8 encoders), also write the
            encoder as one graph whose attentions are sam_edge_ops'
            RelPosAttention nodes (encoder_ops.py), which the runtime runs where
            the op library registers (an AVX-512 CPU); encoder.onnx stays the
            standard-op graph for everything else. Likewise, for ONNX Runtime
            at every precision, the decoder's prompt part with its mask
            upscaling as one sam_edge_ops MaskUpscale node
            (decoder_prompt_ops.onnx; the decoder is fp32 in every bundle).
    """
    from tqdm import tqdm

    from ..builder import RANDOM_WEIGHTS_SEED, build_sam_from_config, random_weights_model
    from ..runtime.bundle import file_record
    from .onnx_export import export_decoder, export_encoder, export_split_decoder, fuse_global_attention

    row = get_precision(precision)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if fused_attention is None:
        fused_attention = backend == "onnxruntime"
    elif fused_attention and backend == "tensorrt":
        raise ValueError("fused_attention writes ONNX Runtime's contrib MultiHeadAttention, which TensorRT cannot "
                         "import; leave it unset (or False) for backend 'tensorrt'")
    writer = BundleStaging(output, overwrite)  # before minutes of export
    output = writer.output

    if checkpoint is not None:
        sam = build_sam_from_config(config, checkpoint)
        weights = {"source": "checkpoint", "checkpoint": os.path.basename(checkpoint), **file_record(checkpoint)}
        weights["checkpoint_sha256"] = weights.pop("sha256")
        weights["checkpoint_bytes"] = weights.pop("bytes")
    else:
        sam = random_weights_model(config, RANDOM_WEIGHTS_SEED)
        weights = {"source": "random", "seed": RANDOM_WEIGHTS_SEED}
        _say(
            f"NOTE: no --checkpoint given: building with seeded RANDOM weights (seed {RANDOM_WEIGHTS_SEED}). "
            "The bundle runs but its masks mean nothing; the manifest records this.",
            quiet,
        )

    staging = writer.begin()
    try:
        steps = ["export encoder", "export decoder"] + (["export official decoder"] if official_decoder else [])
        if row.reduced:
            steps.append(f"convert encoder to {precision}")
        with_ops_graph = ops_graph and backend == "onnxruntime" and row.native_attention
        if with_ops_graph:
            steps.append("write encoder ops graph")
        extra: Dict[str, Any] = {}
        with tqdm(total=len(steps), desc="build", unit="step", disable=quiet) as bar:
            encoder_name = "encoder.onnx"
            fp32_path = os.path.join(staging, "encoder_fp32.onnx" if row.reduced else encoder_name)
            bar.set_postfix_str(steps[0])
            export_encoder(sam, fp32_path)
            bar.update()
            bar.set_postfix_str(steps[1])
            export_decoder(sam, os.path.join(staging, "decoder.onnx"))
            with_prompt_ops = ops_graph and backend == "onnxruntime"
            export_split_decoder(
                sam, os.path.join(staging, "decoder_image.onnx"), os.path.join(staging, "decoder_prompt.onnx"),
                prompt_ops_path=os.path.join(staging, PROMPT_OPS_GRAPH_FILE) if with_prompt_ops else None,
            )
            if with_prompt_ops:
                extra["decoder_prompt_ops"] = DecoderPromptOpsGraph(PROMPT_OPS_GRAPH_FILE).to_json()
            bar.update()
            graphs = {
                "encoder": encoder_name,
                "decoder": "decoder.onnx",
                "decoder_image": "decoder_image.onnx",
                "decoder_prompt": "decoder_prompt.onnx",
            }
            if official_decoder:
                bar.set_postfix_str(steps[2])
                export_decoder(sam, os.path.join(staging, "decoder_official.onnx"), official=True)
                graphs["decoder_official"] = "decoder_official.onnx"
                bar.update()
            del sam  # the torch weights, large for ViT-H, are not needed for the conversion
            gc.collect()
            if row.reduced:
                bar.set_postfix_str(steps[-1])
                extra.update(_convert_encoder(
                    row.conversion, fp32_path, os.path.join(staging, encoder_name), config, calib_images,
                    num_calib_images, quiet,
                ))
                _remove_graph(fp32_path)
                bar.update()
            if with_ops_graph:
                from .encoder_ops import attention_blocks, encoder_ops_graph

                bar.set_postfix_str(steps[-1])
                graph = encoder_ops_graph(os.path.join(staging, encoder_name), config,
                                          attention_blocks(config, row.kernel_compute), row.kernel_compute)
                extra["encoder_ops"] = graph.to_json()
                bar.update()
            if fused_attention and row.fused_attention:
                # After quantization: ONNX shape inference knows no contrib op, so the
                # quantizers would leave the layers after it (the global blocks' proj)
                # in float. fp16 keeps standard ops: its fp32 islands (rel-pos ->
                # Softmax) are found on them, and ORT's CPU fused attention is float32.
                extra["fused_global_attention"] = fuse_global_attention(
                    os.path.join(staging, encoder_name), config
                )

        files = writer.file_records()
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_type": config.name,
            "config": dataclasses.asdict(config),
            "backend": backend,
            "precision": precision,
            "decoder_precision": "fp32",
            "image_size": config.image_size,
            "mask_input_size": config.mask_input_size,
            "embedding_size": config.image_embedding_size,
            "graphs": graphs,
            "weights": weights,
            "versions": library_versions(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
            **extra,
        }
        writer.write_manifest(manifest)
        move_bundle_into_place(staging, output)
    except BaseException:
        writer.discard()
        raise
    _say(f"wrote {output} ({config.name}, {precision}, weights: {weights['source']})", quiet)
    return manifest


def _remove_graph(path: str) -> None:
    for p in (path, path + ".data"):
        if os.path.exists(p):
            os.remove(p)


def _convert_encoder(
    conversion, fp32_path, out_path, config, calib_images, num_calib_images, quiet
) -> Dict[str, Any]:
    from . import quantize

    if conversion is EncoderConversion.FP16_WITH_FP32_ISLANDS:
        return {"conversion": quantize.convert_fp16(fp32_path, out_path)}
    if conversion is EncoderConversion.DYNAMIC_INT8:
        return {"conversion": quantize.quantize_dynamic_int8(fp32_path, out_path)}
    if conversion is not EncoderConversion.STATIC_QDQ_INT8:
        raise ValueError(f"no encoder conversion {conversion!r}")
    images, source = quantize.calibration_images(calib_images, num_calib_images)
    _say(f"int8 calibration on {len(images)} images from {source}", quiet)
    return {"conversion": quantize.quantize_static_int8(fp32_path, out_path, images, config.image_size, quiet=quiet)}
