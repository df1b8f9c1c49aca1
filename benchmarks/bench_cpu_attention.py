"""sam-edge's CPU attention kernel (sam_edge._C.rel_pos_attention[_qkv]) against the
same attention in ONNX Runtime, at a model's two shapes. Writes JSON and prints a table.

    PYTHONPATH=. python benchmarks/bench_cpu_attention.py [--models vit_b vit_h] [--threads 2] [--repeat 5]
        [--tag cpu-2core-xeon] [--name cpu-attention]

Shapes, per model (MODELS): a global block (ViT-B: 12 heads x 4096 queries x
4096 keys, head dim 64, a 64 x 64 key grid; ViT-H: 16 heads, head dim 80) and a
windowed block (25 windows x the heads, 196 x 196, a 14 x 14 grid). Paths:
  ort_mha     com.microsoft.MultiHeadAttention with the bias built in the graph
              from rel_h and rel_w (what the single-graph ORT bundle runs for a
              global block; windowed blocks run the plain MatMul/Softmax graph
              there, timed as ort_plain)
  ort_plain   MatMul -> Add(bias) -> Softmax -> MatMul, the exported form
  kernel_fp32, kernel_fp16   sam-edge's kernel (fp16 needs AVX512-FP16)
  qkv_fp32, qkv_fp16, qkv_bf16   the kernel as the encoder ops graph's RelPosAttention calls it
              (rel_pos_attention_qkv): from the block's (1, 64, 64, 3 * heads * D)
              qkv projection, so it also splits q, k, v, partitions and pads the
              windows (64 x 64 -> 5 x 5 windows of 14 x 14) and computes the
              rel-pos terms that the other paths get as inputs. bf16 runs on AMX
              tiles where the CPU and OS have them, else on AVX512-BF16 ("kernel"
              in the JSON says which); fp32 on a windowed grid is the portable loop.
Each path's error against float64 (numpy) on the same inputs is reported too
(qkv_*: on the first 2 heads of the same inputs), and the rate of the two
products' multiply-adds (4 N M D flops per head, softmax not counted).
Speed-ups are against ort_plain, measured in the same process.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import hardware, summarize, time_call, write_results  # noqa: E402

#: Per model, its blocks' attention: (batch of windows, heads, k_h, k_w, D) over a 64 x 64 token grid.
MODELS = {
    "vit_b": {"global": (1, 12, 64, 64, 64), "windowed": (25, 12, 14, 14, 64)},
    "vit_h": {"global": (1, 16, 64, 64, 80), "windowed": (25, 16, 14, 14, 80)},
}


def _inputs(batch, heads, k_h, k_w, d, seed=0):
    rng = np.random.default_rng(seed)
    n = k_h * k_w
    q = rng.standard_normal((batch, heads, n, d), dtype=np.float32)
    k = rng.standard_normal((batch, heads, n, d), dtype=np.float32)
    v = rng.standard_normal((batch, heads, n, d), dtype=np.float32)
    rel_h = rng.standard_normal((batch, heads, k_h, k_w, k_h), dtype=np.float32)
    rel_w = rng.standard_normal((batch, heads, k_h, k_w, k_w), dtype=np.float32)
    return q, k, v, rel_h, rel_w


def _ort_session(batch, heads, k_h, k_w, d, scale, fused, threads):
    """A graph taking q, k, v, rel_h, rel_w: the bias built as the export builds it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = k_h * k_w

    def value(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([-2], np.int64), "second_last"),
        numpy_helper.from_array(np.array([batch, heads, n, n], np.int64), "bias_shape"),
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array([batch, n, heads * d], np.int64), "bsd"),
        numpy_helper.from_array(np.array([batch, n, heads, d], np.int64), "bsnh"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["rel_h", "last"], ["rh"]),
        helper.make_node("Unsqueeze", ["rel_w", "second_last"], ["rw"]),
        helper.make_node("Add", ["rh", "rw"], ["bias6"]),
        helper.make_node("Reshape", ["bias6", "bias_shape"], ["bias"]),
    ]
    if fused:
        nodes += [
            helper.make_node("Transpose", ["q"], ["q_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["q_t", "bsd"], ["q_bsd"]),
            helper.make_node("MultiHeadAttention", ["q_bsd", "k", "v", "", "", "bias"], ["o_bsd"],
                             domain="com.microsoft", num_heads=heads, scale=scale),
            helper.make_node("Reshape", ["o_bsd", "bsnh"], ["o_t"]),
            helper.make_node("Transpose", ["o_t"], ["out"], perm=[0, 2, 1, 3]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["q", "scale"], ["qs"]),
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["qs", "kt"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["biased"]),
            helper.make_node("Softmax", ["biased"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["out"]),
        ]
    graph = helper.make_graph(
        nodes, "attention",
        [value("q", [batch, heads, n, d]), value("k", [batch, heads, n, d]), value("v", [batch, heads, n, d]),
         value("rel_h", [batch, heads, k_h, k_w, k_h]), value("rel_w", [batch, heads, k_h, k_w, k_w])],
        [value("out", [batch, heads, n, d])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _qkv_paths(shape_name, heads, d, scale, args):
    """rel_pos_attention_qkv on a block's qkv projection (64 x 64 tokens): {path: (stats, rel-L2)}."""
    from sam_edge.kernels.cpu_attention import (
        cpu_kernel_status,
        rel_pos_attention_qkv,
        rel_pos_attention_qkv_reference,
    )

    rng = np.random.default_rng(1)
    window = 0 if shape_name == "global" else 14
    side = window or 64
    qkv = rng.standard_normal((1, 64, 64, 3 * heads * d), dtype=np.float32)
    tables = [(rng.standard_normal((2 * side - 1, d), dtype=np.float32) * d ** -0.5) for _ in range(2)]
    kv_bias = rng.standard_normal((2, heads, d), dtype=np.float32)
    # Two heads of the same inputs for the error (float64 scores of 12 global heads: 1.6 GB).
    two = qkv.reshape(1, 64, 64, 3, heads, d)[..., :2, :].reshape(1, 64, 64, 6 * d).copy()
    ref = rel_pos_attention_qkv_reference(two, *tables, kv_bias[:, :2], 2, window, scale)
    out = {}
    status = cpu_kernel_status()
    computes = ["fp32"]
    if status["avx512_fp16"] and d == 64:
        computes.append("fp16")
    if status["amx_bf16"] or status["avx512_bf16"]:
        computes.append("bf16")
    for compute in computes:
        got = rel_pos_attention_qkv(two, *tables, kv_bias[:, :2].copy(), 2, window, scale, compute, args.threads)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        fn = lambda c=compute: rel_pos_attention_qkv(qkv, *tables, kv_bias, heads, window, scale, c, args.threads)
        out[f"qkv_{compute}"] = (summarize(time_call(fn, args.repeat)), err)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--name", default="cpu-attention", help="the results file's benchmark name")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vit_b"])
    args = parser.parse_args()

    from sam_edge.kernels.cpu_attention import cpu_kernel_status, rel_pos_attention_cpu, rel_pos_attention_cpu_reference

    status = cpu_kernel_status()
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # hardware() reads it at the end
    rows = []
    for model, shape_name, (batch, heads, k_h, k_w, d) in [
            (model, name, shape) for model in args.models for name, shape in MODELS[model].items()]:
        q, k, v, rel_h, rel_w = _inputs(batch, heads, k_h, k_w, d)
        scale = d ** -0.5
        # float64 reference on the first 2 (window x head)s: enough for the error, bounded memory.
        sub = [a[:1, :2] for a in (q, k, v, rel_h, rel_w)]
        ref = rel_pos_attention_cpu_reference(*sub, scale)
        feeds = {"q": q, "k": k, "v": v, "rel_h": rel_h, "rel_w": rel_w}
        paths = {"ort_plain": _ort_session(batch, heads, k_h, k_w, d, scale, False, args.threads)}
        if shape_name == "global":
            paths["ort_mha"] = _ort_session(batch, heads, k_h, k_w, d, scale, True, args.threads)
        calls = {name: (lambda s=s: s.run(None, feeds)[0]) for name, s in paths.items()}
        if status["avx512"] and k_w % 16 == 0:
            calls["kernel_fp32"] = lambda: rel_pos_attention_cpu(q, k, v, rel_h, rel_w, scale, "fp32", args.threads)
        if status["avx512_fp16"] and d == 64:
            calls["kernel_fp16"] = lambda: rel_pos_attention_cpu(q, k, v, rel_h, rel_w, scale, "fp16", args.threads)
        results = {}
        for name, fn in calls.items():
            out = fn()
            err = float(np.linalg.norm(out[:1, :2] - ref) / np.linalg.norm(ref))
            results[name] = (summarize(time_call(fn, args.repeat)), err)
        if status["avx512"]:
            results.update(_qkv_paths(shape_name, heads, d, scale, args))
        base = results["ort_plain"][0]["median_ms"]
        gflop = 4 * batch * heads * (k_h * k_w) ** 2 * d / 1e9  # the two products, N = M
        for name, (stats, err) in results.items():
            rows.append({"model": model, "shape": shape_name, "path": name, **stats,
                         "speedup_vs_ort_plain": base / stats["median_ms"], "rel_l2_vs_float64": err,
                         "products_gflop_per_s": gflop / (stats["median_ms"] / 1000)})
    print(f"{'model':<7}{'shape':<10}{'path':<14}{'median ms':>11}{'min ms':>9}{'x ort_plain':>13}"
          f"{'rel-L2 vs f64':>15}{'GFLOP/s':>9}")
    for r in rows:
        print(f"{r['model']:<7}{r['shape']:<10}{r['path']:<14}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}"
              f"{r['speedup_vs_ort_plain']:>13.2f}{r['rel_l2_vs_float64']:>15.2e}{r['products_gflop_per_s']:>9.1f}")
    import onnxruntime

    bf16_unit = "amx_bf16" if status["amx_bf16"] else "avx512_bf16" if status["avx512_bf16"] else None
    path = write_results(args.name, {
        "benchmark": "bench_cpu_attention", "threads": args.threads, "repeat": args.repeat,
        "shapes": {f"{model}-{name}": dict(zip(("batch", "heads", "k_h", "k_w", "head_dim"), shape))
                   for model in args.models for name, shape in MODELS[model].items()},
        "kernel": {**status, "bf16_unit": bf16_unit}, "rows": rows, "hardware": hardware(),
        "load_average_before": load_before,
        "versions": {"onnxruntime": onnxruntime.__version__},
    }, tag=args.tag)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
