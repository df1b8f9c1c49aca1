"""A Triton Inference Server model repository for a bundle (`sam-edge export-triton`).

    OUT/sam_encoder/config.pbtxt, 1/model.onnx (+ its external weights) or 1/model.plan
        (encoder="ops": the bundle's encoder_ops.onnx, its attentions sam_edge_ops nodes)
    OUT/sam_decoder/config.pbtxt, 1/model.onnx or 1/model.plan
    OUT/sam_predictor/config.pbtxt, 1/model.py   Python backend: the client's model

sam_predictor keeps embeddings server-side in an EmbeddingCache, keyed by image
id as in `sam-edge serve`, and calls the two graph models through BLS. The
exported decoder takes one embedding for N prompts, so Triton's batcher, which
stacks whole requests along dimension 0, cannot batch it; dynamic batching is
on sam_predictor instead, which receives several requests per execute and
sends the prompts for one image as one decoder call.

The configs are derived from the graphs' own inputs and outputs (ONNX), or from
the manifest (TensorRT plans, which name their tensors as the ONNX graphs do).
A graph with sam-edge's custom ops (ONNX domain "ai.sam_edge") gets the op
library copied beside its config, and `model_operations { op_library_filename }`
naming it, so Triton's onnxruntime backend registers it when it loads the model;
its instances are KIND_CPU, where the library's kernels run (an AVX-512 CPU, or
the library refuses and Triton reports its reason when loading the model).
Torch-free and Ray-free; reading ONNX graphs needs the `onnx` package.
"""

import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

from ..runtime.bundle import read_manifest, verify_bundle
from ..runtime.ort_ops import DOMAIN as OPS_DOMAIN
from ..runtime.ort_ops import EncoderOpsGraph
from ..runtime.ort_ops import library_path as ops_library_path

ENCODER, DECODER, PREDICTOR = "sam_encoder", "sam_decoder", "sam_predictor"
#: The encoder graphs a repository can serve: the bundle's standard-op graph, or its
#: one graph with sam_edge_ops' RelPosAttention nodes (manifest "encoder_ops").
ENCODER_GRAPHS = ("standard", "ops")
MODEL_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_model.py")

#: ONNX TensorProto element types -> Triton data types.
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
                   2: "TYPE_UINT8", 3: "TYPE_INT8"}
#: Triton data types -> numpy dtype names (TYPE_STRING: numpy object arrays of bytes).
TRITON_TO_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT32": "int32", "TYPE_INT64": "int64",
                   "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_INT8": "int8", "TYPE_STRING": "object"}


class Enum(str):
    """A protobuf enum value: written bare in text format (KIND_CPU, TYPE_FP32)."""


# ---------------------------------------------------------------- protobuf text format


def to_pbtxt(message: Dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a dict: dict -> message, list of dicts -> repeated
    messages, list of scalars -> repeated scalars, Enum -> bare identifier."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


_TOKEN = re.compile(r'\s*(?:#[^\n]*\n\s*)*("(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+)')


def parse_pbtxt(text: str) -> Dict[str, Any]:
    """The protobuf text format that to_pbtxt writes (and Triton's configs use), as
    dicts. Every field comes back as a list of its occurrences, as protobuf
    treats repeated fields; ValueError names the position of a syntax error."""
    tokens, pos = [], 0
    while True:
        match = _TOKEN.match(text, pos)
        if not match:
            if text[pos:].strip() and not text[pos:].lstrip().startswith("#"):
                raise ValueError(f"pbtxt: cannot read from offset {pos}: {text[pos:pos + 30]!r}")
            break
        tokens.append(match.group(1))
        pos = match.end()
    message, _ = _message(tokens, 0, top=True)
    return message


def _message(tokens: List[str], i: int, top: bool = False) -> Tuple[Dict[str, Any], int]:
    out: Dict[str, list] = {}
    while i < len(tokens) and tokens[i] != "}":
        key = tokens[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"pbtxt: expected a field name, got {key!r}")
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        values, i = _value(tokens, i)
        out.setdefault(key, []).extend(values)
        if i < len(tokens) and tokens[i] in (",", ";"):
            i += 1
    if top and i != len(tokens):
        raise ValueError("pbtxt: unbalanced '}'")
    return out, i


def _value(tokens: List[str], i: int) -> Tuple[list, int]:
    if i >= len(tokens):
        raise ValueError("pbtxt: unexpected end of text")
    token = tokens[i]
    if token == "{":
        message, i = _message(tokens, i + 1)
        if i >= len(tokens) or tokens[i] != "}":
            raise ValueError("pbtxt: a message is not closed with '}'")
        return [message], i + 1
    if token == "[":
        values, i = [], i + 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            values.extend(item)
            if tokens[i] == ",":
                i += 1
        return values, i + 1
    if token.startswith('"'):
        return [json.loads(token)], i + 1
    if re.fullmatch(r"-?\d+", token):
        return [int(token)], i + 1
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", token):
        return [float(token)], i + 1
    if token in ("true", "false"):
        return [token == "true"], i + 1
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token):
        return [Enum(token)], i + 1
    raise ValueError(f"pbtxt: unexpected token {token!r}")


# ---------------------------------------------------------------- graphs -> configs


def graph_io(onnx_path: str) -> Tuple[List[Tuple[str, str, List[int]]], List[Tuple[str, str, List[int]]]]:
    """(inputs, outputs) of an ONNX graph as (name, Triton type, dims with -1 for symbolic)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append((v.name, _ONNX_TO_TRITON[t.elem_type], dims))
        return out

    initializers = {init.name for init in graph.initializer}
    return describe([i for i in graph.input if i.name not in initializers]), describe(graph.output)


def _manifest_io(manifest: Dict[str, Any], part: str):
    """The graphs' IO from the manifest, for TensorRT plans (the names of sam_edge's ONNX export)."""
    s, g, m = manifest["image_size"], manifest["embedding_size"], manifest["mask_input_size"]
    c = int(manifest["config"]["prompt_embed_dim"])
    if part == "encoder":
        return [("image", "TYPE_FP32", [-1, 3, s, s])], [("image_embeddings", "TYPE_FP32", [-1, c, g, g])]
    return ([("image_embeddings", "TYPE_FP32", [1, c, g, g]), ("point_coords", "TYPE_FP32", [-1, -1, 2]),
             ("point_labels", "TYPE_FP32", [-1, -1]), ("mask_input", "TYPE_FP32", [-1, 1, m, m]),
             ("has_mask_input", "TYPE_FP32", [-1])],
            [("iou_predictions", "TYPE_FP32", [-1, 4]), ("low_res_masks", "TYPE_FP32", [-1, 4, m, m])])


def _tensors(io, batched: bool) -> List[Dict[str, Any]]:
    return [{"name": name, "data_type": Enum(dtype), "dims": dims[1:] if batched else dims} for name, dtype, dims in io]


def _graph_config(name: str, backend: str, io, max_batch_size: int, kind: str) -> Dict[str, Any]:
    inputs, outputs = io
    config: Dict[str, Any] = {"name": name}
    if backend == "tensorrt":
        config["platform"] = "tensorrt_plan"
    else:
        config["backend"] = "onnxruntime"
    config["max_batch_size"] = max_batch_size
    config["input"] = _tensors(inputs, max_batch_size > 0)
    config["output"] = _tensors(outputs, max_batch_size > 0)
    config["instance_group"] = [{"count": 1, "kind": Enum(kind)}]
    return config


def predictor_config(manifest: Dict[str, Any], cache_bytes: int, max_batch_size: int) -> Dict[str, Any]:
    """The Python-backend model: one prompt per request (a leading batch dim of 1), image by id or pixels."""
    m = manifest["mask_input_size"]
    tensor = lambda name, dtype, dims, optional=False: dict(  # noqa: E731
        {"name": name, "data_type": Enum(dtype), "dims": dims}, **({"optional": True} if optional else {}))
    return {
        "name": PREDICTOR,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "input": [
            tensor("IMAGE_ID", "TYPE_STRING", [1], True),
            tensor("IMAGE", "TYPE_UINT8", [-1, -1, 3], True),
            tensor("POINT_COORDS", "TYPE_FP32", [-1, 2], True),
            tensor("POINT_LABELS", "TYPE_INT32", [-1], True),
            tensor("BOX", "TYPE_FP32", [4], True),
            tensor("MASK_INPUT", "TYPE_FP32", [1, m, m], True),
            tensor("MULTIMASK_OUTPUT", "TYPE_BOOL", [1], True),
        ],
        "output": [
            tensor("RESOLVED_IMAGE_ID", "TYPE_STRING", [1]),
            tensor("MASKS", "TYPE_BOOL", [-1, -1, -1]),
            tensor("SCORES", "TYPE_FP32", [-1]),
            tensor("LOW_RES_LOGITS", "TYPE_FP32", [-1, m, m]),
        ],
        "instance_group": [{"count": 1, "kind": Enum("KIND_CPU")}],
        "parameters": [
            {"key": key, "value": {"string_value": str(value)}}
            for key, value in (("image_size", manifest["image_size"]), ("mask_input_size", m),
                               ("cache_bytes", int(cache_bytes)), ("encoder_model", ENCODER),
                               ("decoder_model", DECODER))
        ],
    }


def uses_custom_ops(onnx_path: str) -> bool:
    """Whether an ONNX graph has nodes of sam-edge's op domain (ai.sam_edge)."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    graphs, found = [model.graph], False
    while graphs and not found:
        graph = graphs.pop()
        for node in graph.node:
            found = found or node.domain == OPS_DOMAIN
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return found


def export_triton_repository(bundle_dir: str, output_dir: str, cache_bytes: int = 512 << 20,
                             max_batch_size: int = 16, encoder_max_batch_size: int = 4,
                             instance_kind: str = "KIND_GPU", ops_library_dir: Optional[str] = None,
                             encoder: str = "standard") -> List[str]:
    """Write the model repository for `bundle_dir` under `output_dir`; returns the model names.

    instance_kind: where the graph models run ("KIND_GPU" on a fleet; "KIND_CPU" to try it out).
        A graph with sam-edge's custom ops runs on KIND_CPU instances either way.
    ops_library_dir: where the repository will live on the Triton server, for the absolute
        op_library_filename of a graph with sam-edge's custom ops (default: output_dir's
        absolute path, right when the server reads the repository where it is written).
    encoder: "standard", the bundle's standard-op encoder graph (runs on any server), or
        "ops", its encoder_ops graph, whose attentions are sam_edge_ops' fused kernel
        (the server's CPU needs AVX-512); ValueError, before anything is written, for a
        bundle without one.
    """
    if max_batch_size < 1 or encoder_max_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1; got {max_batch_size}, {encoder_max_batch_size}")
    if instance_kind not in ("KIND_GPU", "KIND_CPU"):
        raise ValueError(f"instance_kind must be KIND_GPU or KIND_CPU; got {instance_kind!r}")
    if encoder not in ENCODER_GRAPHS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_GRAPHS)}; got {encoder!r}")
    manifest = verify_bundle(bundle_dir, read_manifest(bundle_dir))
    backend = manifest["backend"]
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"bundle {bundle_dir} is for backend {backend!r}; Triton configs exist for onnxruntime "
                         "and tensorrt bundles")
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise ValueError(f"{output_dir} exists and is not empty; give a new directory for the repository")
    sources = {"encoder": _encoder_graph(bundle_dir, manifest, encoder), "decoder": manifest["graphs"]["decoder"]}
    sources = {part: os.path.join(bundle_dir, file) for part, file in sources.items()}
    custom = {part: backend == "onnxruntime" and uses_custom_ops(source) for part, source in sources.items()}
    # Found before anything is written, so that a missing library leaves no half repository.
    library = _ops_library(next(part for part, has in custom.items() if has)) if any(custom.values()) else None
    for part, name, batch in (("encoder", ENCODER, encoder_max_batch_size), ("decoder", DECODER, 0)):
        source = sources[part]
        version = os.path.join(output_dir, name, "1")
        os.makedirs(version)
        config_extra: Dict[str, Any] = {}
        kind = instance_kind
        if backend == "tensorrt":
            io = _manifest_io(manifest, part)
            shutil.copyfile(source, os.path.join(version, "model.plan"))
        else:
            io = graph_io(source)
            shutil.copyfile(source, os.path.join(version, "model.onnx"))
            # External weights keep their file name: the graph refers to it.
            _copy_external_data(source, version, bundle_dir)
            if custom[part]:
                config_extra = _copy_ops_library(library, output_dir, name, ops_library_dir)
                # The library's kernels are CPU kernels: a GPU instance would move each op's tensors across.
                kind = "KIND_CPU"
        with open(os.path.join(output_dir, name, "config.pbtxt"), "w") as f:
            f.write(to_pbtxt({**_graph_config(name, backend, io, batch, kind), **config_extra}))
    os.makedirs(os.path.join(output_dir, PREDICTOR, "1"))
    shutil.copyfile(MODEL_PY, os.path.join(output_dir, PREDICTOR, "1", "model.py"))
    with open(os.path.join(output_dir, PREDICTOR, "config.pbtxt"), "w") as f:
        f.write(to_pbtxt(predictor_config(manifest, cache_bytes, max_batch_size)))
    return [ENCODER, DECODER, PREDICTOR]


def _encoder_graph(bundle_dir: str, manifest: Dict[str, Any], encoder: str) -> str:
    """The file name of the encoder graph to serve; ValueError when the bundle lacks it."""
    if encoder == "standard":
        return manifest["graphs"]["encoder"]
    if manifest.get("encoder_ops") is None:
        raise ValueError(f"bundle {bundle_dir} has no encoder_ops graph (the encoder with sam-edge's {OPS_DOMAIN} "
                         "attention ops, which `sam-edge build` writes for fp32 and int8 onnxruntime bundles): "
                         "export its standard encoder (--encoder standard)")
    return EncoderOpsGraph.from_json(manifest["encoder_ops"]).file


def _ops_library(part: str) -> str:
    """The op library's path; FileNotFoundError when it is not built."""
    library = ops_library_path()
    if library is None or not os.path.isfile(library):
        raise FileNotFoundError(f"the {part} graph uses sam-edge's custom ops ({OPS_DOMAIN}), but the op library "
                                f"is not built ({library or 'pip install . builds sam_edge/libsam_edge_ops.so'})")
    return library


def _copy_ops_library(library: str, output_dir: str, model: str, server_dir: Optional[str]) -> Dict[str, Any]:
    """Copy the op library beside `model`'s config; its model_operations entry."""
    filename = os.path.basename(library)
    shutil.copyfile(library, os.path.join(output_dir, model, filename))
    root = server_dir if server_dir is not None else os.path.abspath(output_dir)
    return {"model_operations": {"op_library_filename": [os.path.join(root, model, filename)]}}


def _copy_external_data(onnx_path: str, version_dir: str, bundle_dir: str) -> None:
    """Copy the external-data files an ONNX graph names (its weights over protobuf's 2 GB)."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    locations = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    for location in locations:
        if os.path.basename(location) != location:
            raise ValueError(f"{onnx_path} names external data outside its directory: {location!r}")
        target = os.path.join(version_dir, location)
        if not os.path.exists(target):
            shutil.copyfile(os.path.join(bundle_dir, location), target)


def read_repository(output_dir: str) -> Dict[str, Dict[str, Any]]:
    """{model name: parsed config.pbtxt} of a repository."""
    configs = {}
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name, "config.pbtxt")
        if os.path.isfile(path):
            with open(path) as f:
                configs[name] = parse_pbtxt(f.read())
    return configs


def config_tensors(config: Dict[str, Any], kind: str) -> Dict[str, Tuple[str, List[int], bool]]:
    """{name: (data type, full dims with the batch dim as -1 when max_batch_size > 0, optional)} of
    a parsed config's `kind` ("input" or "output")."""
    batched = config.get("max_batch_size", [0])[0] > 0
    out = {}
    for tensor in config.get(kind, []):
        dims = list(tensor.get("dims", []))
        out[tensor["name"][0]] = (str(tensor["data_type"][0]), ([-1] if batched else []) + dims,
                                  bool(tensor.get("optional", [False])[0]))
    return out


def parameters(config: Dict[str, Any]) -> Dict[str, str]:
    return {p["key"][0]: p["value"][0]["string_value"][0] for p in config.get("parameters", [])}


__all__ = ["export_triton_repository", "parse_pbtxt", "to_pbtxt", "read_repository", "config_tensors", "graph_io",
           "parameters"]
