"""The Triton kernels compile for a real GPU (sm_90) even where none is present.

The CPU interpreter accepts constructs the compiler rejects and says nothing
about registers, so this compiles the kernels ahead of time for Hopper, in a
subprocess without TRITON_INTERPRET, with Triton's bundled ptxas, and checks
that SAM's shapes compile and that the first config of each kernel does not
spill registers to local memory (fp16/bf16; fp32 uses non-tensor-core IEEE
matmuls and is not a performance path).
Only the first autotune config of each kernel is compiled, to keep this short;
the others differ in block sizes only (and the autotuner skips configs that
run out of resources).
"""

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    r"""
    import os, re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sam_edge.kernels import mask_postprocess_triton as mp, triton_attention as ta

    target = GPUTarget("cuda", 90, 32)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

    def compile_and_report(fn, sig_of, const, config):
        sig = {n: ("constexpr" if n in const else sig_of(n)) for n in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, const), target=target,
                           options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        spill = -1
        if os.path.exists(ptxas):
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
            spill = int(re.search(r"(\d+) bytes spill stores", out).group(1))
        return spill

    fn = ta._rel_pos_attention_kernel.fn
    pointers = {"Q", "K", "V", "OUT", "PAD_K", "PAD_V", "RH", "RW"}
    cases = [("fp16", 80, 14, True), ("fp16", 80, 64, False), ("bf16", 64, 64, False), ("fp32", 64, 14, True)]
    for dtype, head_dim, window, padded in cases:
        d0, d1 = ta._head_dim_split(head_dim)
        const = dict(WIN_QH=window, WIN_QW=window, WIN_KH=window, WIN_KW=window, N_WIN=25 if padded else 1,
                     HEAD_DIM=head_dim, BLOCK_D0=d0, BLOCK_D1=d1, PADDED=padded, UPCAST=False,
                     IEEE_FP32=dtype == "fp32", BLOCK_N=max(16, triton.next_power_of_2(window)),
                     BLOCK_KH=max(16, triton.next_power_of_2(window)))
        sig_of = lambda n: "*" + dtype if n in pointers else "fp32" if n == "scale" else "i32"
        for config in ta._ATTENTION_CONFIGS[:1]:
            spill = compile_and_report(fn, sig_of, dict(const, **config.kwargs), config)
            print("attention", dtype, head_dim, window, config.kwargs, config.num_warps, "spill", spill)
            if spill > 0 and dtype != "fp32":
                sys.exit(f"attention kernel spills {spill} bytes for {dtype} d{head_dim} window {window}")

    fn = mp._mask_postprocess_kernel.fn
    for dtype in ("fp32", "bf16"):
        sig_of = lambda n: {"LOW": "*" + dtype, "MASKS": "*u8", "COUNTS": "*i32", "BOXES": "*i32"}.get(
            n, "fp32" if n.startswith(("scale", "threshold")) else "i32")
        for config in mp._CONFIGS[:1]:
            spill = compile_and_report(fn, sig_of, dict(config.kwargs), config)
            print("mask", dtype, config.kwargs, config.num_warps, "spill", spill)
            if spill > 0:
                sys.exit(f"mask kernel spills {spill} bytes with {config}")
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's bundled ptxas is Linux-only")
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
