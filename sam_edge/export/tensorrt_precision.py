"""How each TensorRT engine gets its precision (`precision_plan`), as data the builder reads.

    fp16  a strongly typed network over the fp16 ONNX graph, whose fp32
          islands (LayerNorm, softmax, rel-pos) the ONNX conversion placed;
          from an fp32 graph, a weakly typed network with BuilderFlag.FP16 and
          those layers pinned to fp32 (OBEY_PRECISION_CONSTRAINTS). FP16
          LayerNorm overflow is the most reported SAM deployment failure
          (segment-anything #540, efficientvit #142).
    int8  explicit quantization from the QDQ ONNX graph, its quantizers made
          symmetric int8 (tensorrt_qdq.to_symmetric_int8_qdq) and its float
          parts fp16 outside the fp32 islands (tensorrt_fp16.qdq_float_parts_to_fp16),
          so that a strongly typed network runs them in fp16, not fp32. No
          implicit calibrators (deprecated in TensorRT 10).
    fp32  for the decoder by default: it is small and cheap next to the encoder,
          and its logits are what users threshold. TF32 (on by default in
          TensorRT) is cleared, so fp32 means fp32.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

from ..precision import PRECISIONS, TENSORRT_ENGINE_PRECISIONS, get_precision

ENGINE_PRECISIONS = TENSORRT_ENGINE_PRECISIONS


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision: network typing, builder flags (names in
    trt.BuilderFlag), and whether the fp32 islands are pinned by layer constraints."""

    precision: str
    strongly_typed: bool
    flags: Tuple[str, ...] = ()
    pin_fp32_islands: bool = False
    note: str = ""
    #: Flags to clear (TensorRT sets some by default).
    cleared_flags: Tuple[str, ...] = ()


def precision_plan(
    precision: str,
    float_types: Sequence[str],
    has_qdq: bool,
    strongly_typed: Optional[bool] = None,
    tensorrt_major: int = 10,
) -> PrecisionPlan:
    """The PrecisionPlan for a graph (its float types, whether it has Q/DQ nodes).

    strongly_typed None chooses: strongly typed whenever the graph carries its
    own precision (fp16 graphs, QDQ graphs), as TensorRT recommends since 10.12;
    weak typing (deprecated, removed in 11) only to run an fp32 graph in fp16.
    """
    trt = get_precision(precision, ENGINE_PRECISIONS).tensorrt
    has_fp16 = "float16" in float_types
    if trt.needs_qdq and not has_qdq:
        raise ValueError(
            f"{precision} engines are built by explicit quantization from a QDQ graph; this graph has no "
            f"QuantizeLinear/DequantizeLinear nodes. Build the bundle with --precision {precision} "
            "(implicit calibration is deprecated in TensorRT 10 and not supported)"
        )
    if not trt.needs_qdq and has_qdq:
        raise ValueError(f"a QDQ (int8) graph cannot be built as {precision}; use precision 'int8'")
    if not PRECISIONS[precision].reduced and has_fp16:
        raise ValueError(f"an fp16 graph cannot be built as {precision}; build from the fp32 graph")
    # Whether the graph itself carries the precision (a strongly typed network follows it).
    graph_typed = trt.graph_carries_precision or has_fp16
    if strongly_typed is None:
        strongly_typed = graph_typed
    if strongly_typed:
        if not graph_typed:
            raise ValueError(
                "a strongly typed network runs in the graph's own types, so this fp32 graph would build as fp32. "
                "Build from the fp16 ONNX graph (sam-edge build --precision fp16) or pass strongly_typed=False"
            )
        note = trt.strong_note.format(floats="fp16" if has_fp16 else "fp32")
        return PrecisionPlan(precision, True, (), False, note, trt.strong_cleared_flags)
    if tensorrt_major >= 11:
        raise ValueError(
            "TensorRT 11 builds only strongly typed networks: convert the graph first "
            "(sam-edge build --precision fp16 writes an fp16 encoder with fp32 islands)"
        )
    return PrecisionPlan(
        precision, False, trt.weak_flags, PRECISIONS[precision].reduced,
        "weakly typed (deprecated since TensorRT 10.12), LayerNorm / softmax / rel-pos pinned to fp32",
    )


def int8_latency_warning(int8_ms: Optional[float], fp16_ms: Optional[float], what: str = "encoder") -> Optional[str]:
    """A warning when an int8 engine measured no faster than the fp16 one (None when it is
    faster, or when either was not measured): int8 is only worth its accuracy cost if it is."""
    if int8_ms is None or fp16_ms is None or int8_ms < fp16_ms:
        return None
    return (f"WARNING: the int8 {what} ({int8_ms:.2f} ms) is not faster than the fp16 one ({fp16_ms:.2f} ms) "
            "on this GPU; use the fp16 bundle")
