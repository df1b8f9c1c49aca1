"""sam_edge.runtime.ort_ops's session options for the encoder ops graph: ORT's
pool threads keep spinning, since every op runs on that pool, unless a cut runs
an attention path that keeps its own OpenMP team (AVX512-FP16, or bf16 on AMX),
on CPUs described rather than this one. The ops themselves are tested in
tests/kernels/test_ort_ops.py."""

import pytest

from sam_edge.kernels import cpu_attention
from sam_edge.runtime.ort_ops import attention_keeps_openmp


@pytest.mark.parametrize("computes, amx, expected", [
    (["fp32"] * 4, True, False),            # the AVX-512 fp32 path runs on the pool
    (["bf16"] * 12, False, False),          # AVX512-BF16 runs on the pool
    (["bf16"] * 12, True, True),            # AMX keeps its OpenMP team
    (["bf16", "fp32"], True, True),
    (["fp16", "fp32"], False, True),        # AVX512-FP16 keeps its OpenMP team
    ([], True, False),                      # nothing known about the cuts: ORT's default
])
def test_spinning_goes_off_only_beside_an_openmp_attention_path(monkeypatch, computes, amx, expected):
    status = {"available": True, "avx512": True, "avx512_fp16": True, "amx_bf16": amx, "avx512_bf16": True,
              "threads": 2}
    monkeypatch.setattr(cpu_attention, "cpu_kernel_status", lambda: status)
    assert attention_keeps_openmp(computes) is expected
