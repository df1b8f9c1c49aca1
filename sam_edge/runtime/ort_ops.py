"""sam_edge_ops, sam-edge's kernels as an ONNX Runtime custom-op library
(csrc/ort/): where the library is, registering it with session options, and
the bundle's graphs that hold its ops: the encoder ops graph
(sam_edge.export.encoder_ops) and the decoder's prompt part with its mask
upscaling as one MaskUpscale node (sam_edge.export.onnx_export): their
manifest entries and their sessions.

    options = onnxruntime.SessionOptions()
    register_ort_ops(options)     # raises with the reason when it cannot
    session = onnxruntime.InferenceSession(graph, options)

Its ops live in the ONNX domain "ai.sam_edge", version 1 (csrc/ort/sam_edge_ops.h
documents each). `pip install .` builds the library beside sam_edge._C as
sam_edge/libsam_edge_ops.so; the environment variable SAM_EDGE_OPS_LIBRARY
names another build. onnxruntime is imported only by the functions that use
it; onnx only to change a graph's compute attribute.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ..precision import Compute

#: The ONNX domain of the library's ops, and its version.
DOMAIN = "ai.sam_edge"
DOMAIN_VERSION = 1
#: The environment variable that names a library other than the installed one.
LIBRARY_ENV = "SAM_EDGE_OPS_LIBRARY"
_INSTALLED = Path(__file__).resolve().parent.parent / "libsam_edge_ops.so"


@dataclass(frozen=True)
class AttentionCut:
    """One RelPosAttention node of an encoder graph: (B, H, W, 3 * heads * head_dim)
    `qkv` in, (B, H, W, heads * head_dim) `output` out, over a k_size key grid (the
    whole grid for a global block, window 0; a window of side `window` otherwise),
    in encoder block `block`."""

    qkv: str
    output: str
    scale: float
    block: int
    heads: int
    head_dim: int
    k_size: Tuple[int, int]
    window: int

    def to_json(self) -> Dict[str, Any]:
        return {"qkv": self.qkv, "output": self.output, "scale": self.scale, "block": self.block,
                "heads": self.heads, "head_dim": self.head_dim, "k_size": list(self.k_size), "window": self.window}

    @classmethod
    def from_json(cls, a: Dict[str, Any]) -> "AttentionCut":
        """KeyError, TypeError or IndexError when `a` is not of the form to_json writes."""
        return cls(_text(a["qkv"]), _text(a["output"]), float(a["scale"]), int(a["block"]), int(a["heads"]),
                   int(a["head_dim"]), (int(a["k_size"][0]), int(a["k_size"][1])), int(a["window"]))


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string; got {type(value).__name__} {value!r}")
    return value


def library_path() -> Optional[str]:
    """The library's path: SAM_EDGE_OPS_LIBRARY when set (whether or not the file
    exists), else the installed build, else None."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    return str(_INSTALLED) if _INSTALLED.is_file() else None


def register_ort_ops(options) -> str:
    """Register the library's ops with an onnxruntime.SessionOptions; returns the
    library's path.

    Raises FileNotFoundError when the library is not built (or SAM_EDGE_OPS_LIBRARY
    names no file), and onnxruntime's error, carrying the library's reason, when
    the library refuses: a CPU without AVX-512, or an onnxruntime older than 1.16."""
    path = _existing_library()
    options.register_custom_ops_library(path)
    return path


def _existing_library() -> str:
    """library_path(), or FileNotFoundError saying why there is none."""
    path = library_path()
    if path is None:
        raise FileNotFoundError(
            f"sam_edge_ops is not built: pip install . builds it as {_INSTALLED} (or set {LIBRARY_ENV})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{LIBRARY_ENV} names {path!r}, which is not a file")
    return path


def encoder_ops_session(path: str, options, providers, compute: Optional[str] = None,
                        computes: Sequence[str] = ()):
    """An onnxruntime.InferenceSession of the encoder ops graph at `path`, with
    the library registered on `options` (which it adjusts). compute, when given,
    replaces every RelPosAttention's compute attribute (the graph is read
    without its weights, which stay in their file beside it). computes: the
    compute each cut runs on this CPU (fast_compute's answers), which decide
    whether ORT's pool threads may spin."""
    import onnxruntime as ort

    options.enable_mem_pattern = False  # the arena alone reuses the freed attention inputs
    # The ops run on ORT's pool, so its threads keep spinning between nodes, which its own
    # MatMuls want; an attention path with its own OpenMP team needs the cores to itself.
    if attention_keeps_openmp(computes):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    register_ort_ops(options)
    model = path
    if compute is not None:
        import onnx

        Compute.parse(compute)
        proto = onnx.load(path, load_external_data=False)
        for node in proto.graph.node:
            if node.domain == DOMAIN and node.op_type == "RelPosAttention":
                for attribute in node.attribute:
                    if attribute.name == "compute":
                        attribute.s = compute.encode()
        model = proto.SerializeToString()
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         os.path.dirname(os.path.abspath(path)))
    # ORT's BiasGelu kernel was measured slower than its Add then Gelu, with the same bits out.
    return ort.InferenceSession(model, options, providers=list(providers), disabled_optimizers=["BiasGeluFusion"])


def attention_keeps_openmp(computes: Sequence[str]) -> bool:
    """Whether a cut running one of `computes` takes a RelPosAttention path that keeps
    its own OpenMP team inside ONNX Runtime: AVX512-FP16, or bf16 on AMX tiles."""
    if "fp16" in computes:
        return True
    if "bf16" in computes:
        from ..kernels.cpu_attention import cpu_kernel_status

        return bool(cpu_kernel_status()["amx_bf16"])
    return False


def decoder_prompt_ops_session(path: str, options, providers):
    """An onnxruntime.InferenceSession of the decoder prompt ops graph at `path`, with
    the library registered on `options`. Its MaskUpscale runs on the session's own
    intra-op threads (onnxruntime >= 1.17), so the options stay as they are."""
    import onnxruntime as ort

    register_ort_ops(options)
    return ort.InferenceSession(path, options, providers=list(providers))


def library_refusal() -> Optional[str]:
    """None when the library registers with onnxruntime in this process; else why
    not: it is not built, or it refuses this CPU or runtime (its own message)."""
    try:
        return _refusal(_existing_library())
    except FileNotFoundError as exc:
        return str(exc)


@functools.lru_cache(maxsize=None)
def _refusal(path: str) -> Optional[str]:
    import onnxruntime as ort

    try:
        ort.SessionOptions().register_custom_ops_library(path)
    except Exception as exc:  # onnxruntime raises its own types, carrying the library's status
        return f"sam_edge_ops at {path} does not register: {str(exc).strip()}"
    return None


@dataclass(frozen=True)
class EncoderOpsGraph:
    """The manifest's "encoder_ops": the encoder as one graph (`file`, relative to
    the bundle) whose cut attentions are RelPosAttention nodes, one per entry of
    `attention`, each allowed `compute` (the op runs the nearest one down that the
    CPU has)."""

    file: str
    compute: Compute
    attention: Tuple[AttentionCut, ...]

    def to_json(self) -> Dict[str, Any]:
        return {"file": self.file, "domain": DOMAIN, "domain_version": DOMAIN_VERSION, "compute": self.compute.value,
                "attention": [a.to_json() for a in self.attention]}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "EncoderOpsGraph":
        """ValueError naming what is missing, of the wrong type, or of an op domain
        version this sam-edge does not have."""
        _check_entry("encoder_ops", data)
        try:
            if not isinstance(data["file"], str) or not isinstance(data["attention"], list):
                raise TypeError("file must be a string and attention a list")
            return cls(data["file"], Compute.parse(data["compute"]),
                       tuple(AttentionCut.from_json(a) for a in data["attention"]))
        except KeyError as exc:
            raise ValueError(f"encoder_ops lacks the field {exc.args[0]!r}") from None
        except (TypeError, IndexError) as exc:
            raise ValueError(f"encoder_ops has a field of the wrong form: {exc}") from None


def _check_entry(field: str, data) -> None:
    """ValueError unless `data` is an object naming this library's op domain and version."""
    if not isinstance(data, dict):
        raise ValueError(f"{field} must be an object; got {type(data).__name__}")
    try:
        if (data["domain"], data["domain_version"]) != (DOMAIN, DOMAIN_VERSION):
            raise ValueError(f"{field} needs the op domain {data['domain']!r} version "
                             f"{data['domain_version']!r}; this sam-edge has {DOMAIN!r} version {DOMAIN_VERSION}")
    except KeyError as exc:
        raise ValueError(f"{field} lacks the field {exc.args[0]!r}") from None


@dataclass(frozen=True)
class DecoderPromptOpsGraph:
    """The manifest's "decoder_prompt_ops": the decoder's prompt part with its mask
    upscaling as one MaskUpscale node (`file`, relative to the bundle), the same
    inputs and outputs as decoder_prompt.onnx."""

    file: str

    def to_json(self) -> Dict[str, Any]:
        return {"file": self.file, "domain": DOMAIN, "domain_version": DOMAIN_VERSION}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "DecoderPromptOpsGraph":
        """ValueError naming what is missing, of the wrong type, or of an op domain
        version this sam-edge does not have."""
        _check_entry("decoder_prompt_ops", data)
        if not isinstance(data.get("file"), str):
            raise ValueError(f"decoder_prompt_ops lacks a file name (a string); got {data.get('file')!r}")
        return cls(data["file"])
