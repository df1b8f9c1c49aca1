"""TensorRT bundles from the ONNX graphs of a bundle: a thin layer over the builder
(tensorrt_engine), with the shapes (tensorrt_profiles), precisions
(tensorrt_precision) and checks (tensorrt_prepare) as data and pure functions.

    encoder.plan   from encoder.onnx: image (B, 3, S, S) -> image_embeddings (B, 256, g, g)
    decoder.plan   from decoder.onnx (the "fast" decoder, no orig_im_size):
                   image_embeddings (1, 256, g, g), point_coords (B, N, 2),
                   point_labels (B, N), mask_input (B or 1, 1, m, m),
                   has_mask_input (B or 1,) -> iou_predictions (B, 4),
                   low_res_masks (B, 4, m, m)

TensorRT is imported only inside the functions that build; everything else
here runs (and is tested) without it.
"""

import dataclasses
import datetime
import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

from ..precision import PRECISIONS, TENSORRT_BUNDLE_PRECISIONS
from ..runtime.bundle import file_record
from ..runtime.tensorrt_compat import tensorrt_runtime_info
from .bundle_writer import BundleStaging, checked_output, move_bundle_into_place, sibling_directory
from .tensorrt_engine import DEFAULT_WORKSPACE_BYTES, build_engine
from .tensorrt_graph_checks import check_onnx_domain
from .tensorrt_precision import ENGINE_PRECISIONS
from .tensorrt_prepare import check_profile_with_onnxruntime, prepare_for_tensorrt
from .tensorrt_profiles import check_counts, decoder_profiles, encoder_profile

TENSORRT_PRECISIONS = TENSORRT_BUNDLE_PRECISIONS


@dataclasses.dataclass
class TensorRTBuildParams:
    """What `sam-edge build --backend tensorrt` decides; recorded in the manifest, and
    enough to print the exact command that rebuilds the bundle."""

    model_type: str
    precision: str  # the encoder's: fp16 or int8
    checkpoint: Optional[str] = None
    decoder_precision: str = "fp32"
    max_batch: int = 1
    #: Images per encoder call to tune for; None: max_batch (a bundle built for batches is used with them).
    opt_batch: Optional[int] = None
    max_points: int = 16
    max_prompts: int = 64
    opt_points: int = 2
    opt_prompts: int = 64
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Optional[str] = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    #: Encoder only: a weakly typed network (INT8/FP16 flags, fp32 islands pinned) instead of
    #: following the graph's types. For int8 the QDQ graph's float parts then run in fp16,
    #: not fp32; deprecated in TensorRT 10.12 and refused by 11, so off by default.
    weakly_typed: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in TENSORRT_PRECISIONS:
            raise ValueError(f"TensorRT precision must be one of {TENSORRT_PRECISIONS}; got {self.precision!r}")
        if self.decoder_precision not in ENGINE_PRECISIONS:
            raise ValueError(f"decoder precision must be one of {ENGINE_PRECISIONS}; got {self.decoder_precision!r}")
        check_counts(max_batch=self.max_batch, max_points=self.max_points, max_prompts=self.max_prompts,
                      opt_points=self.opt_points, opt_prompts=self.opt_prompts)
        if self.opt_batch is not None:
            check_counts(opt_batch=self.opt_batch)
            if self.opt_batch > self.max_batch:
                raise ValueError(f"opt_batch ({self.opt_batch}) must not exceed max_batch ({self.max_batch})")

    def rebuild_options(self) -> Dict[str, Any]:
        """The options that differ from the defaults (plus the required ones), for the rebuild command."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        record = dataclasses.asdict(self)
        return {k: v for k, v in record.items() if k not in ("progress",) and (k not in defaults or defaults[k] != v)}


def onnx_bundle_graphs(onnx_bundle: str) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """({"encoder": path, "decoder": path, ...}, manifest) of an ONNX Runtime bundle directory."""
    directory = os.fspath(onnx_bundle)
    manifest_path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ValueError(f"{directory} is not an ONNX bundle (no manifest.json); build one with `sam-edge build`")
    with open(manifest_path, encoding="utf-8") as f:
        base = json.load(f)
    if base.get("backend") != "onnxruntime":
        raise ValueError(f"{directory} is a {base.get('backend')!r} bundle; TensorRT engines build from ONNX bundles")
    paths = {k: os.path.join(directory, v) for k, v in base["graphs"].items()}
    for key in ("encoder", "decoder"):
        if key not in paths:
            raise ValueError(f"no {key} graph given (have {sorted(paths)}); the TensorRT bundle needs both")
        if not os.path.isfile(paths[key]):
            raise FileNotFoundError(f"{key} graph not found: {paths[key]}")
    return paths, base


#: ONNX bundle manifest entries that describe ONNX Runtime graphs the engines do not carry.
ONNX_RUNTIME_ONLY = ("encoder_ops", "decoder_prompt_ops", "fused_global_attention")


def tensorrt_manifest(
    base: Mapping[str, Any],
    params: TensorRTBuildParams,
    engines: Mapping[str, Dict[str, Any]],
    files: Mapping[str, Dict[str, Any]],
    runtime: Mapping[str, Any],
    onnx_sources: Mapping[str, Dict[str, Any]],
) -> Dict[str, Any]:
    """The bundle manifest: the ONNX Runtime bundle's fields (model, config, sizes,
    weights, versions), backend "tensorrt", the engines as graphs, and a
    "tensorrt" section that check_engine_compatibility reads."""
    manifest = {k: v for k, v in base.items() if k not in ("files", "graphs", "conversion") + ONNX_RUNTIME_ONLY}
    manifest.update(
        backend="tensorrt",
        model_type=base.get("model_type", params.model_type),
        precision=params.precision,
        decoder_precision=params.decoder_precision,
        graphs={name: record["plan"] for name, record in engines.items()},
        files=dict(files),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.setdefault("format", "sam-edge-bundle")
    manifest.setdefault("format_version", 1)
    manifest["versions"] = dict(base.get("versions", {}), tensorrt=runtime["tensorrt"])
    manifest["tensorrt"] = {
        "version": runtime["tensorrt"],
        "gpu": runtime["gpu"],
        "compute_capability": runtime["compute_capability"],
        "cuda_runtime": runtime.get("cuda_runtime"),
        "hardware_compatibility": params.hardware_compatibility,
        "version_compatible": params.version_compatible,
        "build": params.rebuild_options(),
        "engines": dict(engines),
        "onnx_source": dict(onnx_sources),
    }
    if "conversion" in base:
        manifest["tensorrt"]["onnx_conversion"] = base["conversion"]
    return manifest


def build_tensorrt_bundle(params: TensorRTBuildParams, onnx_bundle: str, out_dir: str,
                          overwrite: bool = False) -> Dict[str, Any]:
    """Build encoder.plan and decoder.plan from the ONNX Runtime bundle directory `onnx_bundle`
    into the bundle directory `out_dir`; returns its manifest.

    The ONNX bundle is at the same precision (the fp16 encoder with fp32 islands, or the
    QDQ int8 encoder) and has standard ops only (build_bundle(..., fused_attention=False));
    build_tensorrt_bundle_from_model makes it. The bundle is written by bundle_writer, as
    ONNX Runtime bundles are.
    """
    paths, base = onnx_bundle_graphs(onnx_bundle)
    for name, path in paths.items():  # before any TensorRT work: contrib ops cannot be parsed
        check_onnx_domain(path, f"{name} graph {path}")
    if base and base.get("precision") not in (params.precision, None):
        raise ValueError(
            f"the ONNX bundle's encoder is {base.get('precision')!r}; a TensorRT {params.precision} build needs the "
            f"{params.precision} ONNX bundle (sam-edge build --precision {params.precision})"
        )
    writer = BundleStaging(out_dir, overwrite)
    out_dir = writer.output
    config = base.get("config", {})
    image_size = int(base.get("image_size", config.get("image_size", 1024)))
    grid = int(base.get("embedding_size", image_size // config.get("patch_size", 16)))
    runtime = tensorrt_runtime_info()

    staging = writer.begin()
    try:
        jobs = {
            "encoder": (params.precision, [encoder_profile(params.max_batch, image_size,
                                                           params.opt_batch or params.max_batch)]),
            "decoder": (params.decoder_precision, decoder_profiles(
                params.max_points, params.max_prompts, params.opt_points, params.opt_prompts, grid)),
        }
        engines, sources = {}, {}
        for name, (precision, profiles) in jobs.items():
            # int8 encoders, strongly typed, run the graph's float parts in the graph's types: fp16.
            fp16_float_parts = (name == "encoder" and PRECISIONS[precision].tensorrt.fp16_float_parts
                                and not params.weakly_typed)
            prepared = prepare_for_tensorrt(paths[name], os.path.join(staging, f".{name}.trt.onnx"), name,
                                                 fp16_float_parts=fp16_float_parts)
            if name == "decoder":  # cheap: catch a profile the graph cannot take before a TensorRT build
                for profile in profiles:
                    check_profile_with_onnxruntime(prepared["path"], profile)
            engines[name] = build_engine(
                prepared["path"], os.path.join(staging, f"{name}.plan"), precision=precision, profiles=profiles,
                strongly_typed=False if (params.weakly_typed and name == "encoder") else None,
                workspace_bytes=params.workspace_bytes, timing_cache_path=params.timing_cache,
                progress=params.progress, hardware_compatibility=params.hardware_compatibility,
                version_compatible=params.version_compatible,
            )
            engines[name]["qdq"] = prepared["qdq"]
            engines[name]["fp16_float_parts"] = prepared["fp16_float_parts"]
            sources[name] = dict(file_record(paths[name]), file=os.path.basename(paths[name]))
            if prepared["path"] != paths[name]:
                os.remove(prepared["path"])
        manifest = tensorrt_manifest(base, params, engines, writer.file_records(), runtime, sources)
        manifest.setdefault("image_size", image_size)
        manifest.setdefault("embedding_size", grid)
        manifest.setdefault("mask_input_size", 4 * grid)
        writer.write_manifest(manifest)
        move_bundle_into_place(staging, out_dir)
    except BaseException:
        writer.discard()
        raise
    return manifest


def build_tensorrt_bundle_from_model(params: TensorRTBuildParams, output: str, overwrite: bool = False,
                                     calib_images: Optional[str] = None,
                                     num_calib_images: Optional[int] = None) -> Dict[str, Any]:
    """`sam-edge build --backend tensorrt`: the model of params.model_type (from params.checkpoint,
    or seeded random weights) exported to an ONNX Runtime bundle at the same precision in a
    scratch directory next to `output` (removed afterwards), then its engines into the bundle
    at `output`; returns the TensorRT bundle's manifest."""
    from ..config import get_config
    from .build import build_bundle

    tensorrt_runtime_info()  # TensorRT and a GPU are here, before minutes of export
    output = checked_output(output, overwrite)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    scratch = sibling_directory(output, "onnx")
    try:
        onnx_dir = os.path.join(scratch, "bundle")
        build_bundle(onnx_dir, get_config(params.model_type), checkpoint=params.checkpoint,
                     precision=params.precision, backend="onnxruntime", official_decoder=False,
                     fused_attention=False,  # ONNX Runtime contrib ops are not TensorRT's
                     calib_images=calib_images, num_calib_images=num_calib_images, quiet=not params.progress)
        return build_tensorrt_bundle(params, onnx_dir, output, overwrite=overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
