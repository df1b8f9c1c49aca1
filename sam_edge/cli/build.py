"""`sam-edge build`: a checkpoint to an ONNX Runtime bundle, or to a TensorRT one
(--backend tensorrt: the ONNX Runtime bundle first, then its engines)."""

import argparse
from typing import Optional

from ..config import SAM_CONFIGS
from ..export.build import BACKENDS, PRECISIONS
from ..export.tensorrt_build import TensorRTBuildParams
from ..export.tensorrt_engine import HARDWARE_COMPATIBILITY
from ..export.tensorrt_precision import ENGINE_PRECISIONS


def add_parser(subparsers) -> argparse.ArgumentParser:
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
                             "blocks (for ONNX Runtime builds without contrib ops; slower)")
    parser.add_argument("--no-ops-graph", action="store_true",
                        help="do not write encoder_ops.onnx and decoder_prompt_ops.onnx, the graphs with sam-edge's "
                             "ops (sam_edge_ops: the encoder's attention, the decoder's mask upscaling), which the "
                             "runtime runs on AVX-512 CPUs (the standard graphs are slower)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tensorrt_arguments(parser)
    parser.set_defaults(func=run_build)
    return parser


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    """The TensorRT options of `sam-edge build` (flag names match tensorrt_compat.rebuild_command),
    as a group of `parser`; export/build_tensorrt_all.py takes them too."""
    group = parser.add_argument_group("TensorRT (--backend tensorrt)")
    defaults = TensorRTBuildParams(model_type="vit_b", precision="fp16")
    group.add_argument("--decoder-precision", choices=ENGINE_PRECISIONS, default=defaults.decoder_precision,
                       help="decoder engine precision (default fp32: its logits are what users threshold)")
    group.add_argument("--max-batch", type=int, default=defaults.max_batch, help="most images per encoder call")
    group.add_argument("--opt-batch", type=int, default=None,
                       help="images per encoder call to tune for (default: --max-batch)")
    group.add_argument("--max-points", type=int, default=defaults.max_points,
                       help="most points per prompt, counting the padding point or the 2 box corners")
    group.add_argument("--max-prompts", type=int, default=defaults.max_prompts, help="most prompts per decoder call")
    group.add_argument("--opt-points", type=int, default=defaults.opt_points, help="points per prompt to tune for")
    group.add_argument("--opt-prompts", type=int, default=defaults.opt_prompts, help="batched prompts to tune for")
    group.add_argument("--workspace-bytes", type=int, default=defaults.workspace_bytes, help="builder scratch memory")
    group.add_argument("--timing-cache", default=None, help="timing cache file, read and updated (faster rebuilds)")
    group.add_argument("--hardware-compatibility", choices=sorted(HARDWARE_COMPATIBILITY), default="none",
                       help="ampere_plus: engines for any GPU of compute capability >= 8.0 (slower)")
    group.add_argument("--version-compatible", action="store_true",
                       help="engines that later TensorRT 10.x runtimes can load")
    group.add_argument("--weakly-typed", action="store_true",
                       help="encoder as a weakly typed network (int8: float parts in fp16; "
                            "deprecated in TensorRT 10.12)")


def tensorrt_build_params(args: argparse.Namespace, model_type: str, precision: str, checkpoint: Optional[str],
                          timing_cache: Optional[str], quiet: bool) -> TensorRTBuildParams:
    """The TensorRTBuildParams of the TensorRT options in `args` (add_tensorrt_arguments'),
    for the model, precision, checkpoint and timing cache given."""
    return TensorRTBuildParams(
        model_type=model_type, precision=precision, checkpoint=checkpoint,
        decoder_precision=args.decoder_precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
        max_points=args.max_points, max_prompts=args.max_prompts, opt_points=args.opt_points,
        opt_prompts=args.opt_prompts, workspace_bytes=args.workspace_bytes, timing_cache=timing_cache,
        hardware_compatibility=args.hardware_compatibility, version_compatible=args.version_compatible,
        weakly_typed=args.weakly_typed, progress=not quiet,
    )


def run_build(args: argparse.Namespace) -> int:
    if args.backend == "tensorrt":
        from ..export.tensorrt_build import build_tensorrt_bundle_from_model

        # The parameters first: a precision TensorRT cannot build is refused before minutes of export.
        params = tensorrt_build_params(args, args.model, args.precision, args.checkpoint, args.timing_cache,
                                       args.quiet)
        build_tensorrt_bundle_from_model(params, args.output, overwrite=args.overwrite,
                                         calib_images=args.calib_images, num_calib_images=args.num_calib_images)
        return 0
    from ..config import get_config
    from ..export.build import build_bundle

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
        ops_graph=not args.no_ops_graph,
        quiet=args.quiet,
    )
    return 0
