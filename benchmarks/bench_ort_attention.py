"""One global rel-pos attention of ViT-B (12 heads, 4096 x 4096, head dim 64) in
ONNX Runtime on the CPU, in the graph forms we considered for the encoder, and
the pieces of the one we export. Writes JSON and prints a table.

    PYTHONPATH=. python benchmarks/bench_ort_attention.py [--threads 2] [--repeat 5]

Forms (all the same math, checked against the exported form):
  exported        bias = rel_h (+) rel_w as one tensor, MatMul -> Add -> Softmax -> MatMul
  two_adds        rel_h and rel_w added to a 6-d view of the scores
  mha_bias        com.microsoft.MultiHeadAttention with attention_bias
  chunks_4        queries split into 4 chains in the graph (smaller live tensors)
Pieces: q kT fp32 / fp16 / MatMulInteger u8 x s8, attn v fp32, Softmax, Add.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_results  # noqa: E402

H, N, D, G = 12, 4096, 64, 64


def _model(nodes, inputs, outputs, initializers=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "attention", inputs, outputs, list(initializers))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def _value(name, shape, elem=None):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, elem or TensorProto.FLOAT, shape)


def _time(model, feed, threads, repeat):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, feed)[0]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return out, {"median_ms": statistics.median(times), "min_ms": min(times), "n": repeat}


def attention_forms(chunks=4):
    """{name: (model, output layout)}: output (1, H, N, D), or "bsd" for (1, N, H * D)."""
    from onnx import helper
    from onnx import numpy_helper as nh

    node = helper.make_node
    inputs = [_value(n, [1, H, N, D]) for n in ("q", "k", "v", "rh", "rw")]
    out = [_value("o", [1, H, N, D])]
    consts = [
        nh.from_array(np.array([1, H, N, G, 1], np.int64), "shape_h"),
        nh.from_array(np.array([1, H, N, 1, G], np.int64), "shape_w"),
        nh.from_array(np.array([1, H, N, N], np.int64), "shape_scores"),
        nh.from_array(np.array([1, H, N, G, G], np.int64), "shape_scores6"),
        nh.from_array(np.array(D**-0.5, np.float32), "scale"),
    ]
    bias = [
        node("Reshape", ["rh", "shape_h"], ["rh5"]), node("Reshape", ["rw", "shape_w"], ["rw5"]),
        node("Add", ["rh5", "rw5"], ["b5"]), node("Reshape", ["b5", "shape_scores"], ["bias"]),
    ]
    scores = [node("Mul", ["q", "scale"], ["qs"]), node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              node("MatMul", ["qs", "kt"], ["s"])]
    tail = [node("Softmax", ["sb"], ["p"], axis=-1), node("MatMul", ["p", "v"], ["o"])]
    forms = {
        "exported": (_model(bias + scores + [node("Add", ["s", "bias"], ["sb"])] + tail, inputs, out, consts), None),
        "two_adds": (_model(scores + [
            node("Reshape", ["s", "shape_scores6"], ["s6"]), node("Reshape", ["rh", "shape_h"], ["rh5"]),
            node("Reshape", ["rw", "shape_w"], ["rw5"]), node("Add", ["s6", "rh5"], ["x1"]),
            node("Add", ["x1", "rw5"], ["x2"]), node("Reshape", ["x2", "shape_scores"], ["sb"])] + tail,
            inputs, out, consts), None),
    }
    bsd = [nh.from_array(np.array([1, N, H * D], np.int64), "shape_bsd")]
    forms["mha_bias"] = (_model(bias + [
        node("Transpose", ["q"], ["qb"], perm=[0, 2, 1, 3]), node("Reshape", ["qb", "shape_bsd"], ["q3"]),
        node("MultiHeadAttention", ["q3", "k", "v", "", "", "bias"], ["o"], domain="com.microsoft", num_heads=H)],
        inputs, [_value("o", [1, N, H * D])], consts + bsd), "bsd")
    n = N // chunks
    chunk_consts = [
        nh.from_array(np.array([1, H, n, G, 1], np.int64), "c_shape_h"),
        nh.from_array(np.array([1, H, n, 1, G], np.int64), "c_shape_w"),
        nh.from_array(np.array([1, H, n, N], np.int64), "c_shape_scores"),
        nh.from_array(np.array([n] * chunks, np.int64), "split"), consts[-1],
    ]
    nodes = [node("Mul", ["q", "scale"], ["qs"]), node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             node("Split", ["qs", "split"], [f"q{i}" for i in range(chunks)], axis=2),
             node("Split", ["rh", "split"], [f"rh{i}" for i in range(chunks)], axis=2),
             node("Split", ["rw", "split"], [f"rw{i}" for i in range(chunks)], axis=2)]
    for i in range(chunks):
        nodes += [
            node("Reshape", [f"rh{i}", "c_shape_h"], [f"rh5_{i}"]), node("Reshape", [f"rw{i}", "c_shape_w"], [f"rw5_{i}"]),
            node("Add", [f"rh5_{i}", f"rw5_{i}"], [f"b5_{i}"]), node("Reshape", [f"b5_{i}", "c_shape_scores"], [f"bias{i}"]),
            node("MatMul", [f"q{i}", "kt"], [f"s{i}"]), node("Add", [f"s{i}", f"bias{i}"], [f"sb{i}"]),
            node("Softmax", [f"sb{i}"], [f"p{i}"], axis=-1), node("MatMul", [f"p{i}", "v"], [f"o{i}"]),
        ]
    nodes.append(node("Concat", [f"o{i}" for i in range(chunks)], ["o"], axis=2))
    forms[f"chunks_{chunks}"] = (_model(nodes, inputs, out, chunk_consts), None)
    return forms


def pieces(rng):
    """{name: (model, feed)} for the pieces of the exported form."""
    from onnx import TensorProto, helper

    node = helper.make_node
    q = rng.standard_normal((1, H, N, D)).astype(np.float32)
    kt = rng.standard_normal((1, H, D, N)).astype(np.float32)
    p = rng.random((1, H, N, N)).astype(np.float32)
    v = rng.standard_normal((1, H, N, D)).astype(np.float32)
    matmul = node("MatMul", ["a", "b"], ["c"])
    out = [_value("c", None)]
    return {
        "q kT fp32 MatMul": (_model([matmul], [_value("a", [1, H, N, D]), _value("b", [1, H, D, N])], out),
                             {"a": q, "b": kt}),
        "q kT fp16 MatMul": (_model([matmul], [_value("a", [1, H, N, D], TensorProto.FLOAT16),
                                               _value("b", [1, H, D, N], TensorProto.FLOAT16)],
                                    [_value("c", None, TensorProto.FLOAT16)]),
                             {"a": q.astype(np.float16), "b": kt.astype(np.float16)}),
        "q kT MatMulInteger u8 x s8": (
            _model([node("MatMulInteger", ["a", "b"], ["c"])],
                   [_value("a", [1, H, N, D], TensorProto.UINT8), _value("b", [1, H, D, N], TensorProto.INT8)],
                   [_value("c", None, TensorProto.INT32)]),
            {"a": rng.integers(0, 255, q.shape, dtype=np.uint8), "b": rng.integers(-127, 127, kt.shape, dtype=np.int8)}),
        "attn v fp32 MatMul": (_model([matmul], [_value("a", [1, H, N, N]), _value("b", [1, H, N, D])], out),
                               {"a": p, "b": v}),
        "Softmax (12x4096x4096)": (_model([node("Softmax", ["a"], ["c"], axis=-1)], [_value("a", [1, H, N, N])], out),
                                   {"a": p}),
        "Add (12x4096x4096)": (_model([node("Add", ["a", "a"], ["c"])], [_value("a", [1, H, N, N])], out), {"a": p}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((1, H, N, D)).astype(np.float32) for n in ("q", "k", "v", "rh", "rw")}
    rows, reference = [], None
    for name, (model, layout) in attention_forms().items():
        out, stats = _time(model, feed, args.threads, args.repeat)
        if layout == "bsd":
            out = out.reshape(1, N, H, D).transpose(0, 2, 1, 3)
        reference = out if reference is None else reference
        error = float(np.abs(out - reference).max())
        rows.append({"what": f"attention: {name}", **stats, "max_abs_diff_vs_exported": error})
        print(f"{rows[-1]['what']:<34} median {stats['median_ms']:8.1f} ms  min {stats['min_ms']:8.1f}  "
              f"max |diff| {error:.1e}", flush=True)
    for name, (model, piece_feed) in pieces(rng).items():
        _, stats = _time(model, piece_feed, args.threads, args.repeat)
        rows.append({"what": name, **stats})
        print(f"{name:<34} median {stats['median_ms']:8.1f} ms  min {stats['min_ms']:8.1f}", flush=True)
    import onnxruntime

    path = write_results("ort-attention", {
        "benchmark": "bench_ort_attention", "shape": {"heads": H, "tokens": N, "head_dim": D},
        "threads": args.threads, "repeat": args.repeat, "rows": rows,
        "versions": {"onnxruntime": onnxruntime.__version__},
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
