"""Precisions as data: one row per encoder precision, read wherever a build or
the runtime has to decide something by precision. Torch-free and onnx-free.

    name          encoder conversion            kernel compute  ops graph  fused MHA  TensorRT
    fp32          none                          fp32            yes        yes        strongly typed fp32, TF32 off
    fp16          fp16 with fp32 islands        -               no         no         the graph's fp16, or FP16 flags
    int8          static QDQ int8 (calibrated)  bf16            yes        yes        the graph's Q/DQ, or INT8 + FP16 flags
    int8-dynamic  dynamic int8                  bf16            yes        yes        -

The decoder is fp32 in every bundle: its logits are what users threshold.
"""

import enum
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


class Compute(str, enum.Enum):
    """The arithmetic of sam-edge's attention kernel. A str, so that its value is
    what JSON and the compiled bindings read."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value) -> "Compute":
        """A Compute from itself or its value ("fp32", "fp16", "bf16")."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"compute must be one of {[c.value for c in cls]}; got {value!r}") from None


class EncoderConversion(enum.Enum):
    """What the build does to the exported fp32 encoder graph."""

    NONE = "none"
    FP16_WITH_FP32_ISLANDS = "fp16 with fp32 islands"
    STATIC_QDQ_INT8 = "static QDQ int8"
    DYNAMIC_INT8 = "dynamic int8"


@dataclass(frozen=True)
class TensorRTPrecision:
    """How TensorRT builds an engine at one precision.

    graph_carries_precision: an engine of this precision can be strongly typed
        from the graph the ONNX bundle of the same precision holds (fp32 from
        fp32, int8 from its Q/DQ graph); fp16 can only from an fp16 graph.
    needs_qdq: explicit quantization: only a Q/DQ graph builds at this precision.
    strong_note: what a strongly typed engine runs; "{floats}" is the graph's float type.
    strong_cleared_flags: builder flags to clear on a strongly typed network.
    weak_flags: builder flags (trt.BuilderFlag names) of a weakly typed network.
    fp16_float_parts: before a strongly typed encoder build, turn the Q/DQ
        graph's float parts to fp16 outside the fp32 islands.
    """

    graph_carries_precision: bool
    needs_qdq: bool
    strong_note: str
    strong_cleared_flags: Tuple[str, ...] = ()
    weak_flags: Tuple[str, ...] = ()
    fp16_float_parts: bool = False


@dataclass(frozen=True)
class Precision:
    """One encoder precision.

    conversion: what the build does to the exported fp32 encoder graph.
    kernel_compute: the compute of the RelPosAttention ops in the ONNX Runtime
        bundle's encoder ops graph; None where there is none (fp16 graphs run
        their attention in ORT: its CPU fused attention is float32 only).
    fused_attention: ONNX Runtime bundles may fuse the global attention into
        com.microsoft.MultiHeadAttention (fp16 keeps standard ops, on which
        its fp32 islands are found).
    tensorrt: how TensorRT builds it; None where TensorRT has no such engine.
    """

    name: str
    conversion: EncoderConversion
    kernel_compute: Optional[Compute]
    fused_attention: bool
    tensorrt: Optional[TensorRTPrecision] = None

    @property
    def reduced(self) -> bool:
        """Below fp32: the exported graph is converted, and TensorRT pins fp32 islands."""
        return self.conversion is not EncoderConversion.NONE

    @property
    def native_attention(self) -> bool:
        """Whether ONNX Runtime bundles carry the encoder ops graph (sam-edge's attention ops)."""
        return self.kernel_compute is not None


_WEAK_REDUCED = ("FP16", "OBEY_PRECISION_CONSTRAINTS")

PRECISIONS: Dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32", EncoderConversion.NONE, Compute.FP32, True,
            TensorRTPrecision(True, False, "strongly typed fp32, TF32 off", strong_cleared_flags=("TF32",)),
        ),
        Precision(
            "fp16", EncoderConversion.FP16_WITH_FP32_ISLANDS, None, False,
            TensorRTPrecision(False, False, "strongly typed: the graph's fp16 with its fp32 islands",
                              weak_flags=_WEAK_REDUCED),
        ),
        # q, k, v come out of int8 layers: reduced-precision products cost them nothing measurable.
        Precision(
            "int8", EncoderConversion.STATIC_QDQ_INT8, Compute.BF16, True,
            TensorRTPrecision(True, True, "strongly typed: the graph's Q/DQ int8, float parts in the graph's "
                              "types ({floats})", weak_flags=("INT8",) + _WEAK_REDUCED, fp16_float_parts=True),
        ),
        Precision("int8-dynamic", EncoderConversion.DYNAMIC_INT8, Compute.BF16, True),
    )
}
#: Names of the encoder precisions, in the order the CLI offers them.
PRECISION_NAMES = tuple(PRECISIONS)
#: Engine precisions TensorRT builds (the decoder's included).
TENSORRT_ENGINE_PRECISIONS = tuple(name for name, p in PRECISIONS.items() if p.tensorrt is not None)
#: Encoder precisions of a TensorRT bundle.
TENSORRT_BUNDLE_PRECISIONS = tuple(name for name in TENSORRT_ENGINE_PRECISIONS if PRECISIONS[name].reduced)


def get_precision(name: str, among: Tuple[str, ...] = PRECISION_NAMES) -> Precision:
    """The row of `name`, one of `among` (every precision by default)."""
    if name not in among:
        raise ValueError(f"precision must be one of {among}; got {name!r}")
    return PRECISIONS[name]
