"""The encoder as ONNX Runtime segments with sam-edge's fused attention kernel
between them (the split is made at build time: sam_edge.export.split_encoder).

    segment 0 -> attention 0 -> segment 1 -> ... -> segment n

Imports numpy and onnxruntime only. Each tensor is dropped as soon as no later
step reads it, so the run holds no more than the single-graph session does.
"""

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .global_attention import QKV_INPUTS, rel_pos_attention_qkv

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
        plan: the manifest's "encoder_split" (split_encoder.split_at_global_attention).
        options: onnxruntime.SessionOptions for every segment (spinning is turned off in it).
        providers: ONNX Runtime execution providers.
        compute: the kernel's precision per attention of the plan, "fp32" or "fp16"
            (global_attention.fast_compute).
        threads: the kernel's threads (all when None).
        shared_arena: one ONNX Runtime CPU arena for all segments (default).

    Thread-safe: run() keeps its tensors in locals, the sessions' run is
    thread-safe, and the kernel's scratch is per calling thread (each Python
    thread gets its own OpenMP team); the tables are only read.
    """

    def __init__(
        self, bundle_dir: str, plan: dict, options, providers: Sequence[str], compute: Sequence[str],
        threads: Optional[int] = None, shared_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.plan = plan
        self.compute = list(compute)
        if len(self.compute) != len(plan["attention"]):
            raise ValueError(f"compute: one precision per attention ({len(plan['attention'])}); got {compute}")
        self.threads = threads
        # The kernel runs between segments on the same cores: ORT's pool threads
        # must not spin-wait through it (an ad-hoc A/B on ViT-B int8 was faster
        # without spinning in every pairing; the host's noise hid how much).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One CPU arena for all segments: each session's own arena kept its
        # segment's peak, 13 of them (bench_onnxruntime.py's RSS column, ViT-B
        # int8: 2910 MB added before, see benchmarks/results/*attention-kernel*).
        if shared_arena:
            _register_shared_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        # The kernel's tables: each cut's rel-pos tables and padding key/value.
        with np.load(os.path.join(bundle_dir, plan["tables"]), allow_pickle=False) as tables:
            self.tables = [
                (tables[f"rel_pos_h_{j}"], tables[f"rel_pos_w_{j}"], tables[f"kv_bias_{j}"])
                for j in range(len(plan["attention"]))
            ]
        # ORT's BiasGelu kernel was slower than its Add then Gelu, with the same
        # bits out (ad-hoc A/B, ViT-B: one [1, 64, 64, 3072] MLP 6.0 vs 5.2 ms;
        # the static int8 encoder 1.46 vs 1.42 s, fp32 3.11 vs 3.08 s).
        self.sessions = [
            ort.InferenceSession(os.path.join(bundle_dir, segment["file"]), options, providers=list(providers),
                                 disabled_optimizers=["BiasGeluFusion"])
            for segment in plan["segments"]
        ]
        # Step 2k is segment k, step 2k + 1 attention k; a tensor is dropped after its last reader.
        last_read: Dict[str, int] = {}
        for k, segment in enumerate(plan["segments"]):
            for name in segment["inputs"]:
                last_read[name] = 2 * k
        for k, attention in enumerate(plan["attention"]):
            for name in QKV_INPUTS:
                last_read[attention[name]] = max(last_read.get(attention[name], -1), 2 * k + 1)
        self._drop_after: Dict[int, List[str]] = {}
        for name, step in last_read.items():
            if name != plan["output"]:
                self._drop_after.setdefault(step, []).append(name)

    def get_providers(self) -> List[str]:
        return self.sessions[0].get_providers()

    def run(self, output_names, feeds: dict) -> List[np.ndarray]:
        """InferenceSession.run's call: {"image": (B, 3, S, S) normalised, padded
        float32} -> [(B, 256, g, g) embeddings] (output_names is ignored)."""
        values = {self.plan["input"]: feeds[self.plan["input"]]}
        attentions = self.plan["attention"]
        for k, (segment, session) in enumerate(zip(self.plan["segments"], self.sessions)):
            outputs = session.run(segment["outputs"], {name: values[name] for name in segment["inputs"]})
            values.update(zip(segment["outputs"], outputs))
            self._drop(values, 2 * k)
            if k < len(attentions):
                a = attentions[k]
                rel_pos_h, rel_pos_w, kv_bias = self.tables[k]
                values[a["output"]] = rel_pos_attention_qkv(
                    values[a["qkv"]], rel_pos_h, rel_pos_w, kv_bias, a["heads"], a["window"], a["scale"],
                    compute=self.compute[k], threads=self.threads,
                )
                self._drop(values, 2 * k + 1)
        return [values[self.plan["output"]]]

    def _drop(self, values: dict, step: int) -> None:
        for name in self._drop_after.get(step, ()):
            values.pop(name, None)

