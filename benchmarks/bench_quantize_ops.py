"""sam_edge_ops' fused quantize ops against the ONNX Runtime subgraphs they replace,
at an int8 encoder block's shapes, interleaved.

    PYTHONPATH=. python benchmarks/bench_quantize_ops.py [--model vit_b] [--rounds 15]

Per op, two one-graph sessions over the same input: ORT's (after its own graph
optimizations: Gelu -> QuantizeLinear, Add -> LayerNormalization -> QuantizeLinear,
LayerNormalization -> QuantizeLinear) and ours (GeluQuantizeLinear,
SkipLayerNormQuantizeLinear, LayerNormQuantizeLinear), with the encoder's session
options. Each round times `--calls` calls of each, alternating, so the per-round
ratio ORT / ours compares runs a moment apart; the median and range over rounds
are reported, with the load average before and after, and the ratio of each
side's fastest round: on a shared host a neighbour that takes a core stalls an
op's thread team for a time slice, so the fastest round is the op's own time.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_results  # noqa: E402


def _graphs(shape, width):
    """{op: (ORT's nodes, our nodes, inputs)} over a (*shape, width) tensor."""
    from onnx import helper

    from sam_edge.runtime.ort_ops import DOMAIN

    quantize = ["y_scale", "y_zero_point"]
    return {
        "GeluQuantizeLinear": (
            [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
             helper.make_node("QuantizeLinear", ["g", *quantize], ["q"])],
            [helper.make_node("GeluQuantizeLinear", ["x", *quantize], ["q"], domain=DOMAIN)],
            ["x"], 4 * width),
        "SkipLayerNormQuantizeLinear": (
            [helper.make_node("Add", ["x", "skip"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["n"], epsilon=1e-6),
             helper.make_node("QuantizeLinear", ["n", *quantize], ["q"])],
            [helper.make_node("SkipLayerNormQuantizeLinear", ["x", "skip", "gamma", "beta", *quantize], ["q", "sum"],
                              domain=DOMAIN, epsilon=1e-6)],
            ["x", "skip"], width),
        "LayerNormQuantizeLinear": (
            [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], epsilon=1e-6),
             helper.make_node("QuantizeLinear", ["n", *quantize], ["q"])],
            [helper.make_node("LayerNormQuantizeLinear", ["x", "gamma", "beta", *quantize], ["q"], domain=DOMAIN,
                              epsilon=1e-6)],
            ["x"], width),
    }


def _session(nodes, inputs, shape, width, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sam_edge.runtime.onnxruntime_backend import session_options
    from sam_edge.runtime.ort_ops import DOMAIN, register_ort_ops

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.03, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "y_zero_point"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "beta")]
    dims = [*shape, width]
    outputs = [helper.make_tensor_value_info("q", TensorProto.UINT8, dims)]
    if any(o == "sum" for n in nodes for o in n.output):
        outputs.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, dims))
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "op", [helper.make_tensor_value_info(i, TensorProto.FLOAT, dims) for i in inputs],
                              outputs, [t for t in inits if t.name in used])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid(DOMAIN, 1)])
    options = session_options(threads)
    # ORT's spinning left on, as encoder_ops_session leaves it where the ops all run on its pool.
    register_ort_ops(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant per round")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--note", default=None, help="conditions of the run, stored in the results")
    args = parser.parse_args()

    from sam_edge import get_config

    config = get_config(args.model)
    shape, width = (1, config.image_embedding_size, config.image_embedding_size), config.encoder_embed_dim
    load_before = os.getloadavg()
    rows = []
    for op, (theirs, ours, inputs, op_width) in _graphs(shape, width).items():
        rng = np.random.default_rng(1)
        feeds = {i: (rng.standard_normal([*shape, op_width]) * 2).astype(np.float32) for i in inputs}
        sessions = {"onnxruntime": _session(theirs, inputs, shape, op_width, args.threads),
                    "sam_edge_ops": _session(ours, inputs, shape, op_width, args.threads)}
        results = {name: s.run(None, feeds) for name, s in sessions.items()}  # warm-up
        flips = np.count_nonzero(results["onnxruntime"][0] != results["sam_edge_ops"][0])
        times = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    session.run(None, feeds)
                times[name].append(1000 * (time.perf_counter() - start) / args.calls)
        ratios = [a / b for a, b in zip(times["onnxruntime"], times["sam_edge_ops"])]
        rows.append({"op": op, "shape": [*shape, op_width],
                     "onnxruntime_ms": statistics.median(times["onnxruntime"]),
                     "sam_edge_ops_ms": statistics.median(times["sam_edge_ops"]),
                     "onnxruntime_fastest_ms": min(times["onnxruntime"]),
                     "sam_edge_ops_fastest_ms": min(times["sam_edge_ops"]),
                     "speedup_of_fastest": min(times["onnxruntime"]) / min(times["sam_edge_ops"]),
                     "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
                     "speedup_max": max(ratios), "times_ms": times,
                     "uint8_values_that_differ": int(flips), "values": int(results["onnxruntime"][0].size)})
    load_after = os.getloadavg()
    print(f"{args.model} shapes, {args.threads} threads, {args.rounds} interleaved rounds of {args.calls} calls; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'op':<30}{'shape':>20}{'ORT ms':>8}{'ours ms':>9}{'x ORT':>7}{'range':>12}"
          f"{'fastest: ORT':>14}{'ours':>7}{'x ORT':>7}{'flips':>7}")
    for r in rows:
        print(f"{r['op']:<30}{str(tuple(r['shape'])):>20}{r['onnxruntime_ms']:>8.2f}{r['sam_edge_ops_ms']:>9.2f}"
              f"{r['speedup_median']:>7.2f}{r['speedup_min']:>6.2f}-{r['speedup_max']:.2f}"
              f"{r['onnxruntime_fastest_ms']:>14.2f}{r['sam_edge_ops_fastest_ms']:>7.2f}{r['speedup_of_fastest']:>7.2f}"
              f"{r['uint8_values_that_differ']:>7}")
    import onnxruntime

    path = write_results(f"quantize-ops-{args.model}", {
        "benchmark": "bench_quantize_ops", "model": args.model, "threads": args.threads, "rounds": args.rounds,
        "calls": args.calls, "rows": rows, "load_average": {"before": list(load_before), "after": list(load_after)},
        "versions": {"onnxruntime": onnxruntime.__version__}, "note": args.note,
    }, tag=args.tag)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
