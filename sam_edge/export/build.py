"""`sam-edge build`: a checkpoint in, a verified ONNX Runtime bundle out.

The bundle is written into a temporary directory next to the output and
renamed into place only once every graph and the manifest are complete, so
an interrupted or failed build never leaves a directory that looks like a
bundle. See sam_edge/runtime/bundle.py for the layout.
"""

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional

from ..config import SAM_CONFIGS, SamConfig, get_config
from ..runtime.bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, MANIFEST_NAME, file_record

#: Precisions of the encoder graph. The decoder stays fp32 in every bundle: it
#: is ~4 M parameters and a few ms, and its outputs are what users threshold.
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
BACKENDS = ("onnxruntime", "tensorrt")
#: Seed of the random weights used when no checkpoint is given.
RANDOM_WEIGHTS_SEED = 0


def random_weights_model(config: SamConfig, seed: int = RANDOM_WEIGHTS_SEED):
    """The Sam for `config` with seeded random weights; the same seed gives the same model."""
    import torch

    from .. import build_sam_from_config  # via the package, whatever module defines it

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the default initialisers draw from the global generator
        sam = build_sam_from_config(config)
    randomize_weights_(sam, seed)
    return sam


def randomize_weights_(sam, seed: int) -> None:
    """Give every parameter a seeded, non-trivial value (the default init leaves
    rel-pos tables and pos_embed at zero, which would hide export bugs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed")):
                param.copy_(0.5 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.1 * noise)


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
    split_encoder: bool = True,
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
        split_encoder: for ONNX Runtime (fp32 and int8 encoders), also write the
            encoder cut at its global attentions (split_encoder.py), which the
            runtime runs with sam-edge's fused attention kernel where the CPU
            has AVX-512; encoder.onnx stays whole for everything else.
    """
    from tqdm import tqdm

    from .. import build_sam_from_config  # via the package, whatever module defines it
    from .onnx_export import export_decoder, export_encoder, export_split_decoder, fuse_global_attention

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if fused_attention is None:
        fused_attention = backend == "onnxruntime"
    elif fused_attention and backend == "tensorrt":
        raise ValueError("fused_attention writes ONNX Runtime's contrib MultiHeadAttention, which TensorRT cannot "
                         "import; leave it unset (or False) for backend 'tensorrt'")
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)

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

    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.building-", dir=parent)
    try:
        steps = ["export encoder", "export decoder"] + (["export official decoder"] if official_decoder else [])
        if precision != "fp32":
            steps.append(f"convert encoder to {precision}")
        split = split_encoder and backend == "onnxruntime" and precision != "fp16"
        if split:
            steps.append("split encoder at global attention")
        extra: Dict[str, Any] = {}
        with tqdm(total=len(steps), desc="build", unit="step", disable=quiet) as bar:
            encoder_name = "encoder.onnx"
            fp32_path = os.path.join(staging, encoder_name if precision == "fp32" else "encoder_fp32.onnx")
            bar.set_postfix_str(steps[0])
            export_encoder(sam, fp32_path)
            bar.update()
            bar.set_postfix_str(steps[1])
            export_decoder(sam, os.path.join(staging, "decoder.onnx"))
            export_split_decoder(
                sam, os.path.join(staging, "decoder_image.onnx"), os.path.join(staging, "decoder_prompt.onnx")
            )
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
            del sam  # the torch weights (ViT-H: 2.5 GB) are not needed for the conversion
            gc.collect()
            if precision != "fp32":
                bar.set_postfix_str(steps[-1])
                extra.update(_convert_encoder(
                    precision, fp32_path, os.path.join(staging, encoder_name), config, calib_images,
                    num_calib_images, quiet,
                ))
                _remove_graph(fp32_path)
                bar.update()
            if split:
                from .split_encoder import split_at_global_attention

                bar.set_postfix_str("split encoder at global attention")
                # int8 bundles' q, k, v come out of int8 layers: fp16 products cost them
                # nothing measurable (docs/onnx.md); fp32 bundles keep fp32. The fp16
                # path also runs the windowed blocks' attention (head_dim 64: ViT-B, ViT-L).
                # "fp16" in the plan means reduced precision: sam_edge.load runs bf16
                # tiles instead where the CPU has AMX.
                compute = "fp32" if precision == "fp32" else "fp16"
                head_dim = config.encoder_embed_dim // config.encoder_num_heads
                plan = split_at_global_attention(
                    os.path.join(staging, encoder_name), staging, config,
                    windowed=compute == "fp16" and head_dim == 64,
                )
                plan["compute"] = compute
                extra["encoder_split"] = plan
                bar.update()
            if fused_attention and precision != "fp16":
                # After quantization: ONNX shape inference knows no contrib op, so the
                # quantizers would leave the layers after it (the global blocks' proj)
                # in float. fp16 keeps standard ops: its fp32 islands (rel-pos ->
                # Softmax) are found on them, and ORT's CPU fused attention is float32.
                extra["fused_global_attention"] = fuse_global_attention(
                    os.path.join(staging, encoder_name), config
                )

        files = {name: file_record(os.path.join(staging, name)) for name in sorted(os.listdir(staging))}
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
        import json

        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        move_bundle_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(f"wrote {output} ({config.name}, {precision}, weights: {weights['source']})", quiet)
    return manifest


def _remove_graph(path: str) -> None:
    for p in (path, path + ".data"):
        if os.path.exists(p):
            os.remove(p)


def move_bundle_into_place(staging: str, output: str) -> None:
    """Rename the finished staging dir (holding MANIFEST_NAME) to `output`; an old bundle there
    is moved aside first and deleted only after the new one is in place. Every bundle writer
    (ONNX Runtime and TensorRT) finishes through here."""
    # mkdtemp made the directory private (0700), and onnx writes external weights
    # 0600: give both the mode that open() gave the manifest (the umask's), so
    # that a bundle built by one user can be served by another.
    file_mode = os.stat(os.path.join(staging, MANIFEST_NAME)).st_mode & 0o777
    dir_mode = file_mode | (file_mode & 0o444) >> 2
    for name in os.listdir(staging):
        path = os.path.join(staging, name)
        os.chmod(path, dir_mode if os.path.isdir(path) else file_mode)
    os.chmod(staging, dir_mode)
    old = None
    if os.path.exists(output):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output))
        os.rmdir(old)
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _convert_encoder(
    precision, fp32_path, out_path, config, calib_images, num_calib_images, quiet
) -> Dict[str, Any]:
    from . import quantize

    if precision == "fp16":
        return {"conversion": quantize.convert_fp16(fp32_path, out_path)}
    if precision == "int8-dynamic":
        return {"conversion": quantize.quantize_dynamic_int8(fp32_path, out_path)}
    images, source = quantize.calibration_images(calib_images, num_calib_images)
    _say(f"int8 calibration on {len(images)} images from {source}", quiet)
    return {"conversion": quantize.quantize_static_int8(fp32_path, out_path, images, config.image_size, quiet=quiet)}


def add_build_arguments(subparsers) -> argparse.ArgumentParser:
    """Add the `build` sub-command to an argparse subparsers object; returns its parser
    (its handler is set as `func`)."""
    parser = subparsers.add_parser(
        "build",
        help="export a checkpoint to a verified ONNX Runtime bundle",
        description="Export SAM to ONNX (encoder, decoder) at a precision, into a bundle directory with a manifest.",
    )
    parser.add_argument("--model", required=True, choices=sorted(SAM_CONFIGS), help="model size")
    parser.add_argument("--checkpoint", default=None, help="official .pth checkpoint (omit: seeded random weights)")
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="encoder precision (int8: static QDQ, calibrated; "
                        "int8-dynamic: int8 weights, activations quantized per call)")
    parser.add_argument("--output", required=True, help="bundle directory to create")
    parser.add_argument("--calib-images", default=None,
                        help="directory of calibration images for int8 (default: the photos bundled with scikit-image)")
    parser.add_argument("--num-calib-images", type=int, default=None, help="use at most this many calibration images")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --output")
    parser.add_argument("--plain-attention", action="store_true",
                        help="standard ONNX ops only: no ONNX Runtime contrib MultiHeadAttention for the global "
                             "blocks (for ONNX Runtime builds without contrib ops; ViT-B measured 6-14%% slower)")
    parser.add_argument("--no-split-encoder", action="store_true",
                        help="do not write the encoder segments that the runtime runs with sam-edge's fused "
                             "global attention (smaller bundle; the single-graph encoder is slower)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    from .tensorrt_build import add_tensorrt_build_arguments

    add_tensorrt_build_arguments(parser)
    parser.set_defaults(func=run_build)
    return parser


def run_build(args: argparse.Namespace) -> int:
    """The `build` sub-command; returns the exit status."""
    if args.backend == "tensorrt":
        from .tensorrt_build import run_tensorrt_build

        run_tensorrt_build(args)
        return 0
    build_bundle(
        args.output,
        get_config(args.model),
        checkpoint=args.checkpoint,
        precision=args.precision,
        backend=args.backend,
        calib_images=args.calib_images,
        num_calib_images=args.num_calib_images,
        overwrite=args.overwrite,
        fused_attention=not args.plain_attention,
        split_encoder=not args.no_split_encoder,
        quiet=args.quiet,
    )
    return 0
