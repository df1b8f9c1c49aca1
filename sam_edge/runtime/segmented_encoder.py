"""The encoder as ONNX Runtime segments with sam-edge's fused attention kernel
between them (the split is made at build time: sam_edge.export.split_encoder).

    segment 0 -> attention 0 -> segment 1 -> ... -> segment n

EncoderSplitPlan is the bundle's description of that split; SegmentedEncoder
runs it. Imports numpy and onnxruntime only. Each tensor is dropped as soon as
no later step reads it, so the run holds no more than the single-graph session does.
"""

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..precision import Compute
from ..kernels.cpu_attention import QKV_INPUTS, rel_pos_attention_qkv


@dataclass(frozen=True)
class Segment:
    """One ONNX graph of the split encoder: its file (relative to the bundle) and the
    tensor names it reads and writes."""

    file: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]


@dataclass(frozen=True)
class AttentionCut:
    """One attention that runs in the kernel: (B, H, W, 3 * heads * head_dim) `qkv`
    in, (B, H, W, heads * head_dim) `output` out, over a k_size key grid (the whole
    grid for a global block, a window of side `window` otherwise, window 0)."""

    qkv: str
    output: str
    scale: float
    block: int
    heads: int
    head_dim: int
    k_size: Tuple[int, int]
    window: int


#: Old plans' "compute": "fp16" meant reduced precision, bf16 where the CPU has it.
_LEGACY_COMPUTE = {"fp32": Compute.FP32, "fp16": Compute.BF16}


@dataclass(frozen=True)
class EncoderSplitPlan:
    """The encoder cut at its attentions: segment k, then attention k, then segment
    k + 1. Attention j's rel-pos tables and padding key/value are rel_pos_h_j,
    rel_pos_w_j and kv_bias_j in the `tables` file (numpy .npz).

    compute is the kernel's arithmetic (where this CPU runs it, else the next one
    down: cpu_attention.fast_compute)."""

    input: str
    output: str
    segments: Tuple[Segment, ...]
    attention: Tuple[AttentionCut, ...]
    tables: str
    compute: Compute

    def files(self) -> List[str]:
        """The bundle files the plan reads."""
        return [segment.file for segment in self.segments] + [self.tables]

    def to_json(self) -> Dict[str, Any]:
        """The manifest's "encoder_split". "compute" keeps its old meaning ("fp16": reduced
        precision) for sam-edge versions that read only it; "kernel_compute" says what runs."""
        return {
            "input": self.input,
            "output": self.output,
            "segments": [{"file": s.file, "inputs": list(s.inputs), "outputs": list(s.outputs)}
                         for s in self.segments],
            "attention": [{"qkv": a.qkv, "output": a.output, "scale": a.scale, "block": a.block, "heads": a.heads,
                           "head_dim": a.head_dim, "k_size": list(a.k_size), "window": a.window}
                          for a in self.attention],
            "tables": self.tables,
            "compute": "fp32" if self.compute is Compute.FP32 else "fp16",
            "kernel_compute": self.compute.value,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "EncoderSplitPlan":
        """The plan from a manifest's "encoder_split", new or old; ValueError naming
        what is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"encoder_split must be an object; got {type(data).__name__}")
        try:
            if "kernel_compute" in data:
                compute = Compute.parse(data["kernel_compute"])
            else:
                legacy = data.get("compute", "fp32")
                if legacy not in _LEGACY_COMPUTE:
                    raise ValueError(f"compute must be one of {sorted(_LEGACY_COMPUTE)}; got {legacy!r}")
                compute = _LEGACY_COMPUTE[legacy]
            segments = tuple(Segment(_text(s["file"]), _names(s["inputs"]), _names(s["outputs"]))
                             for s in data["segments"])
            attention = tuple(
                AttentionCut(_text(a["qkv"]), _text(a["output"]), float(a["scale"]), int(a["block"]),
                             int(a["heads"]), int(a["head_dim"]), (int(a["k_size"][0]), int(a["k_size"][1])),
                             int(a["window"]))
                for a in data["attention"]
            )
            plan = cls(_text(data["input"]), _text(data["output"]), segments, attention, _text(data["tables"]),
                       compute)
        except KeyError as exc:
            raise ValueError(f"encoder_split lacks the field {exc.args[0]!r}") from None
        except (TypeError, IndexError) as exc:
            raise ValueError(f"encoder_split has a field of the wrong form: {exc}") from None
        if len(segments) != len(attention) + 1:
            raise ValueError(f"encoder_split: {len(attention)} attentions need {len(attention) + 1} segments; "
                             f"got {len(segments)}")
        return plan


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string; got {type(value).__name__} {value!r}")
    return value


def _names(values) -> Tuple[str, ...]:
    if not isinstance(values, list):
        raise TypeError(f"expected a list of tensor names; got {type(values).__name__}")
    return tuple(_text(v) for v in values)


_SHARED_ARENA = []


def _register_shared_arena(ort) -> None:
    """Register, once per process, a CPU arena allocator with ONNX Runtime's
    environment, for the sessions that opt in (session.use_env_allocators)."""
    if not _SHARED_ARENA:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(memory)


class SegmentedEncoder:
    """Runs a bundle's encoder segments and attentions in order.

    Arguments:
        bundle_dir: the bundle directory (segment files are relative to it).
        plan: the manifest's "encoder_split" (EncoderSplitPlan.to_json).
        options: onnxruntime.SessionOptions for every segment (spinning is turned off in it).
        providers: ONNX Runtime execution providers.
        compute: the kernel's arithmetic per attention of the plan, each a Compute
            or its value (cpu_attention.fast_compute).
        threads: the kernel's threads (all when None).
        shared_arena: one ONNX Runtime CPU arena for all segments (default).

    Thread-safe: run() keeps its tensors in locals, the sessions' run is
    thread-safe, and the kernel's scratch is per calling thread (each Python
    thread gets its own OpenMP team); the tables are only read.
    """

    def __init__(
        self, bundle_dir: str, plan: Dict[str, Any], options, providers: Sequence[str], compute: Sequence[str],
        threads: Optional[int] = None, shared_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.plan = EncoderSplitPlan.from_json(plan)
        self.compute = [Compute.parse(c) for c in compute]
        if len(self.compute) != len(self.plan.attention):
            raise ValueError(f"compute: one precision per attention ({len(self.plan.attention)}); got {compute}")
        self.threads = threads
        # The kernel runs between segments on the same cores: ORT's pool threads
        # must not spin-wait through it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One CPU arena for all segments, instead of one per session each keeping its segment's peak.
        if shared_arena:
            _register_shared_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        # The kernel's tables: each cut's rel-pos tables and padding key/value.
        with np.load(os.path.join(bundle_dir, self.plan.tables), allow_pickle=False) as tables:
            self.tables = [
                (tables[f"rel_pos_h_{j}"], tables[f"rel_pos_w_{j}"], tables[f"kv_bias_{j}"])
                for j in range(len(self.plan.attention))
            ]
        # ORT's BiasGelu kernel was measured slower than its Add then Gelu, with the same bits out.
        self.sessions = [
            ort.InferenceSession(os.path.join(bundle_dir, segment.file), options, providers=list(providers),
                                 disabled_optimizers=["BiasGeluFusion"])
            for segment in self.plan.segments
        ]
        # Step 2k is segment k, step 2k + 1 attention k; a tensor is dropped after its last reader.
        last_read: Dict[str, int] = {}
        for k, segment in enumerate(self.plan.segments):
            for name in segment.inputs:
                last_read[name] = 2 * k
        for k, attention in enumerate(self.plan.attention):
            for name in QKV_INPUTS:
                tensor = getattr(attention, name)
                last_read[tensor] = max(last_read.get(tensor, -1), 2 * k + 1)
        self._drop_after: Dict[int, List[str]] = {}
        for name, step in last_read.items():
            if name != self.plan.output:
                self._drop_after.setdefault(step, []).append(name)

    def get_providers(self) -> List[str]:
        return self.sessions[0].get_providers()

    def run(self, output_names, feeds: dict) -> List[np.ndarray]:
        """InferenceSession.run's call: {"image": (B, 3, S, S) normalised, padded
        float32} -> [(B, 256, g, g) embeddings] (output_names is ignored)."""
        plan = self.plan
        values = {plan.input: feeds[plan.input]}
        for k, (segment, session) in enumerate(zip(plan.segments, self.sessions)):
            outputs = session.run(list(segment.outputs), {name: values[name] for name in segment.inputs})
            values.update(zip(segment.outputs, outputs))
            self._drop(values, 2 * k)
            if k < len(plan.attention):
                a = plan.attention[k]
                rel_pos_h, rel_pos_w, kv_bias = self.tables[k]
                values[a.output] = rel_pos_attention_qkv(
                    values[a.qkv], rel_pos_h, rel_pos_w, kv_bias, a.heads, a.window, a.scale,
                    compute=self.compute[k].value, threads=self.threads,
                )
                self._drop(values, 2 * k + 1)
        return [values[plan.output]]

    def _drop(self, values: dict, step: int) -> None:
        for name in self._drop_after.get(step, ()):
            values.pop(name, None)
