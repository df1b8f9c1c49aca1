"""Bundles: a directory with the graphs of one model and a manifest that vouches for them.

    DIR/manifest.json    what was built, from what, with which versions, and
                         the sha256 and size of every other file in DIR
    DIR/encoder.onnx     (+ encoder.onnx.data for weights over 2 GB)
    DIR/decoder.onnx     the "fast" decoder our runtime uses
    DIR/decoder_image.onnx, DIR/decoder_prompt.onnx
                         the fast decoder split at the image: the image part
                         runs once per image, the prompt part per call
                         (prompts without mask_input)
    DIR/decoder_official.onnx   the official-compatible decoder (ONNX Runtime only)
    DIR/encoder_ops.onnx the encoder as one graph with sam_edge_ops' RelPosAttention
                         nodes (ONNX Runtime hosts that register the op library)
    DIR/decoder_prompt_ops.onnx
                         decoder_prompt.onnx with the mask upscaling as one
                         sam_edge_ops MaskUpscale node (likewise)

`load` checks every file against the manifest before a session is created,
so a truncated download or an edited graph is refused, not run. Torch-free.
"""

import hashlib
import json
import os
from typing import Any, Dict, Optional, Sequence

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "sam-edge-bundle"
BUNDLE_FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle directory that is missing, incomplete, or whose files do not match its manifest."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str) -> Dict[str, Any]:
    """The manifest entry of one file: its sha256 and size in bytes."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def read_manifest(bundle_dir: str) -> Dict[str, Any]:
    """The manifest of `bundle_dir`, checked for form (not yet against the files)."""
    bundle_dir = os.fspath(bundle_dir)
    if not os.path.isdir(bundle_dir):
        raise BundleError(f"bundle not found: {bundle_dir} is not a directory (build one with `sam-edge build`)")
    path = os.path.join(bundle_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise BundleError(f"{bundle_dir} is not a sam-edge bundle: it has no {MANIFEST_NAME}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a sam-edge bundle manifest (format != {BUNDLE_FORMAT!r})")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {manifest.get('format_version')!r}; this sam-edge reads "
            f"{BUNDLE_FORMAT_VERSION}. Rebuild the bundle with this version."
        )
    for key in ("files", "graphs", "image_size", "backend"):
        if key not in manifest:
            raise BundleError(f"{path} lacks the field {key!r}")
    _check_form(manifest, path)
    return manifest


def _check_form(manifest: Dict[str, Any], path: str) -> None:
    """The types of the fields that load() reads, so that a hand-edited or damaged
    manifest is a BundleError naming the field, not a KeyError deep in a backend."""

    def bad(field: str, expected: str, value: Any) -> BundleError:
        return BundleError(f"{path}: {field} must be {expected}; got {type(value).__name__} {str(value)[:60]!r}")

    files = manifest["files"]
    if not isinstance(files, dict):
        raise bad("files", "an object of file name -> {sha256, bytes}", files)
    for name, record in files.items():
        if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
                or type(record.get("bytes")) is not int or record["bytes"] < 0):
            raise bad(f"files[{name!r}]", "{sha256: str, bytes: int >= 0}", record)
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict) or not all(isinstance(v, str) for v in graphs.values()):
        raise bad("graphs", "an object of graph -> file name", graphs)
    if manifest["backend"] == "onnxruntime":
        for graph in ("encoder", "decoder"):
            if graph not in graphs:
                raise BundleError(f"{path}: graphs lacks {graph!r}")
    if type(manifest["image_size"]) is not int or manifest["image_size"] < 1:
        raise bad("image_size", "a positive int", manifest["image_size"])
    if not isinstance(manifest["backend"], str):
        raise bad("backend", "a string", manifest["backend"])
    if manifest.get("encoder_ops") is not None:
        _manifest_ops_graph("encoder_ops", manifest["encoder_ops"], path)
    if manifest.get("decoder_prompt_ops") is not None:
        _manifest_ops_graph("decoder_prompt_ops", manifest["decoder_prompt_ops"], path)


def verify_bundle(bundle_dir: str, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Check that every file in the manifest exists with its recorded size and sha256;
    returns the manifest, or raises BundleError naming the first bad file."""
    manifest = manifest if manifest is not None else read_manifest(bundle_dir)
    for name, record in manifest["files"].items():
        if os.path.basename(name) != name or name in (".", ".."):
            raise BundleError(f"manifest of {bundle_dir} names a file outside the bundle: {name!r}")
        path = os.path.join(bundle_dir, name)
        if not os.path.isfile(path):
            raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is missing")
        size = os.path.getsize(path)
        if size != record["bytes"]:
            raise BundleError(
                f"bundle {bundle_dir}: {name} has {size} bytes, the manifest says {record['bytes']} "
                "(truncated or replaced); rebuild or re-download the bundle"
            )
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise BundleError(
                f"bundle {bundle_dir}: {name} does not match its sha256 in the manifest "
                f"({digest[:12]}... != {record['sha256'][:12]}...); the file was modified or corrupted"
            )
    for graph, name in manifest["graphs"].items():
        if name not in manifest["files"]:
            raise BundleError(f"manifest of {bundle_dir}: graph {graph!r} -> {name!r} is not among its hashed files")
    ops = manifest.get("encoder_ops")
    if ops is not None and ops["file"] not in manifest["files"]:
        raise BundleError(f"manifest of {bundle_dir}: the encoder ops graph {ops['file']!r} is not among its hashed files")
    prompt_ops = manifest.get("decoder_prompt_ops")
    if prompt_ops is not None and prompt_ops["file"] not in manifest["files"]:
        raise BundleError(f"manifest of {bundle_dir}: the decoder prompt ops graph {prompt_ops['file']!r} is not "
                          "among its hashed files")
    return manifest


def load(
    bundle_dir: str,
    providers: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
    verify: bool = True,
    native_attention: Optional[bool] = None,
    attention_compute: Optional[str] = None,
    native_decoder: Optional[bool] = None,
):
    """An engine for `sam_edge.SamPredictor` from a bundle built by `sam-edge build`.

    Arguments:
        bundle_dir: the bundle directory.
        providers: ONNX Runtime execution providers (CPU when None).
        threads: intra-op threads per session (ONNX Runtime's default when None).
        verify: check sizes and sha256 of every file first (default; seconds for ViT-H).
        native_attention: run the encoder graph whose attentions are sam_edge_ops'
            RelPosAttention nodes (sam-edge's fused kernel, on an AVX-512 CPU).
            None: when the bundle has it and this machine runs it fast (the
            default); False: never, the standard-op encoder graph; True: always,
            or a BundleError saying why not. The engine's `encoder_mode` says
            which runs, and `encoder_fallback` why the ops graph does not (None
            when it does).
        attention_compute: the ops' arithmetic, a sam_edge.precision.Compute
            or its value ("fp32", "fp16" or "bf16"), where it runs (else the next
            one down, see cpu_attention.fast_compute). None: the bundle's
            (int8 bundles: bf16, which runs as fp16 where the CPU has
            AVX512-FP16 but no AMX).
        native_decoder: run the decoder's prompt part as the graph whose mask
            upscaling is sam_edge_ops' MaskUpscale node (on the CPU provider,
            where the op library registers). None: when the bundle has it and
            the library registers (the default); False: never; True: always,
            or a BundleError saying why not. The engine's `decoder_prompt_mode`
            says which runs, and `decoder_prompt_fallback` why the ops graph
            does not (None when it does).
    Returns:
        an OnnxRuntimeBackend, with the manifest as `.manifest`.
    """
    bundle_dir = os.fspath(bundle_dir)
    if attention_compute is not None:
        from ..precision import Compute

        if attention_compute not in tuple(Compute):
            raise ValueError(f"attention_compute must be 'fp32', 'fp16', 'bf16' or None; got {attention_compute!r}")
        attention_compute = Compute(attention_compute)
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_bundle(bundle_dir, manifest)
    if manifest["backend"] == "tensorrt":
        from .tensorrt_backend import load_tensorrt_engine

        return load_tensorrt_engine(bundle_dir, manifest)
    if manifest["backend"] != "onnxruntime":
        raise BundleError(
            f"bundle {bundle_dir} is for backend {manifest['backend']!r}; load() runs onnxruntime bundles"
        )
    prompt_ops, prompt_fallback = _decoder_prompt_ops(bundle_dir, manifest, providers, native_decoder)
    if prompt_ops is None and native_decoder:
        raise BundleError(f"bundle {bundle_dir} cannot run its decoder with sam-edge's MaskUpscale op here: "
                          f"{prompt_fallback}")
    try:
        if native_attention is False:
            encoder_ops, fallback = None, "native_attention=False"
        else:
            encoder_ops, fallback = _encoder_ops(bundle_dir, manifest.get("encoder_ops"), providers,
                                                 attention_compute)
            if encoder_ops is None and native_attention:
                raise BundleError(f"bundle {bundle_dir} cannot run its encoder with sam-edge's attention ops here: "
                                  f"{fallback}")
        try:
            engine = _onnxruntime_engine(bundle_dir, manifest, providers, threads, encoder_ops, prompt_ops)
        except MemoryError:
            raise
        except Exception as exc:  # ONNX Runtime's types: e.g. an op this library build does not have
            if encoder_ops is None:
                raise
            reason = (f"its encoder ops graph does not load with {encoder_ops['library']} "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
            if native_attention:
                raise BundleError(f"bundle {bundle_dir}: {reason}; rebuild the bundle with this sam-edge, "
                                  "or load it with native_attention=None to run its standard graph") from exc
            encoder_ops, fallback = None, reason
            engine = _onnxruntime_engine(bundle_dir, manifest, providers, threads, encoder_ops, prompt_ops)
    except BundleError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # ONNX Runtime's own exception types, or a plan of the wrong form
        raise BundleError(
            f"bundle {bundle_dir} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "its files may be damaged: rebuild it, or load it with verify=True to find the changed file"
        ) from exc
    engine.manifest = manifest
    engine.bundle_dir = bundle_dir
    engine.encoder_fallback = fallback
    if prompt_fallback is not None:
        engine.decoder_prompt_fallback = prompt_fallback
    elif engine.decoder_prompt_fallback is not None and native_decoder:
        raise BundleError(f"bundle {bundle_dir}: {engine.decoder_prompt_fallback}; rebuild the bundle with this "
                          "sam-edge, or load it with native_decoder=None to run its standard prompt graph")
    return engine


def _onnxruntime_engine(bundle_dir, manifest, providers, threads, encoder_ops=None, prompt_ops=None):
    from .onnxruntime_backend import OnnxRuntimeBackend

    graphs = manifest["graphs"]
    return OnnxRuntimeBackend(
        os.path.join(bundle_dir, graphs["encoder"]),
        os.path.join(bundle_dir, graphs["decoder"]),
        image_size=manifest["image_size"],
        providers=providers,
        threads=threads,
        split_decoder_paths=(
            (os.path.join(bundle_dir, graphs["decoder_image"]), os.path.join(bundle_dir, graphs["decoder_prompt"]))
            if "decoder_image" in graphs and "decoder_prompt" in graphs
            else None
        ),
        encoder_ops=encoder_ops,
        decoder_prompt_ops=prompt_ops,
    )


def _encoder_ops(bundle_dir, ops, providers, attention_compute):
    """(OnnxRuntimeBackend's encoder_ops for the manifest's "encoder_ops", or None;
    why not, or None when it runs). The ops graph runs where sam_edge_ops registers
    (an AVX-512 CPU, onnxruntime >= 1.16), on the CPU provider, with a fast kernel
    path for every cut at the compute asked."""
    if ops is None:
        return None, "the bundle has no encoder ops graph (fp16, built with --no-ops-graph, or by an older sam-edge)"
    from ..kernels.cpu_attention import fast_compute
    from .ort_ops import library_path, library_refusal

    graph = _manifest_ops_graph("encoder_ops", ops, f"manifest of {bundle_dir}")
    if providers and list(providers)[0] != "CPUExecutionProvider":
        return None, "sam_edge_ops are CPU kernels; the first provider is " + list(providers)[0]
    compute = attention_compute or graph.compute
    computes = [fast_compute(a.head_dim, a.k_size, compute.value) for a in graph.attention]
    if None in computes:
        slow = sorted({(a.head_dim, a.k_size) for a, c in zip(graph.attention, computes) if c is None})
        return None, f"the kernel has no fast path on this CPU for (head_dim, k_size) {slow}"
    refusal = library_refusal()
    if refusal is not None:
        return None, refusal
    return {"path": os.path.join(bundle_dir, graph.file), "compute": computes,
            "attribute": None if compute is graph.compute else compute.value, "library": library_path()}, None


def _decoder_prompt_ops(bundle_dir, manifest, providers, native_decoder):
    """(the path of the manifest's "decoder_prompt_ops" graph to run, or None; why
    not, or None when it runs). It runs where sam_edge_ops registers, on the CPU
    provider, in a bundle with the split decoder."""
    if native_decoder is False:
        return None, "native_decoder=False"
    ops = manifest.get("decoder_prompt_ops")
    if ops is None:
        return None, ("the bundle has no decoder prompt ops graph (built with --no-ops-graph, or by an older "
                      "sam-edge)")
    graph = _manifest_ops_graph("decoder_prompt_ops", ops, f"manifest of {bundle_dir}")
    graphs = manifest["graphs"]
    if "decoder_image" not in graphs or "decoder_prompt" not in graphs:
        return None, "the bundle has no split decoder, which the prompt ops graph is part of"
    if providers and list(providers)[0] != "CPUExecutionProvider":
        return None, "sam_edge_ops are CPU kernels; the first provider is " + list(providers)[0]
    from .ort_ops import library_refusal

    refusal = library_refusal()
    if refusal is not None:
        return None, refusal
    return os.path.join(bundle_dir, graph.file), None


def _manifest_ops_graph(key: str, ops: Dict[str, Any], where: str):
    """The manifest's ops-graph entry `key` ("encoder_ops" or "decoder_prompt_ops") as
    its ort_ops description; BundleError naming `where` when it is damaged."""
    from . import ort_ops

    kind = {"encoder_ops": ort_ops.EncoderOpsGraph, "decoder_prompt_ops": ort_ops.DecoderPromptOpsGraph}[key]
    try:
        graph = kind.from_json(ops)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if os.path.basename(graph.file) != graph.file:
        raise BundleError(f"{where}: {key} names a file outside the bundle: {graph.file!r}")
    return graph
