"""The split decoder's prompt part (decoder_prompt.onnx) per single prompt, against the
official torch decoder (prompt encoder + mask decoder), in one process.

    python benchmarks/bench_decoder_prompt.py [--threads 2] [--repeat 60] [--baseline DIR]

The prompt ops graph (decoder_prompt_ops.onnx: the mask upscaling as sam_edge_ops'
MaskUpscale node) is a row where the op library registers; the op runs on the
session's --threads.

`--baseline DIR` adds a decoder_image.onnx + decoder_prompt.onnx pair exported by
another checkout (the old graph form) with the same seeded weights; make it with
that checkout's sam_edge first on the path:

    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_decoder_prompt.py --export-only DIR

Weights: official ViT-B with seeded random initialisation (no download). Each
prompt is one foreground point (plus the padding point the runtime adds), on
a seeded random embedding. The official decoder is timed first, alone (torch's
threads stay busy after a call). The ONNX graphs are then timed in blocks of
--block calls, taking turns, with a pause and one untimed call before each
block: an idle session's pool threads spin for a while after its call, and
calls interleaved one by one were timed against the other sessions' spinning
(about twice the time at 2 threads on 2 cores). Besides the time, each ONNX graph's low-res logits
(multimask) are compared with the official decoder's (rel-L2) and its scores
(max abs difference). cpu_median_ms is the process's CPU time per call: with
one thread, the work itself, little moved by other processes on the host (with
more, it includes ONNX Runtime's threads spinning).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Appended, not prepended: a sam_edge on PYTHONPATH (another checkout, for --export-only) wins.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import print_table, summarize, write_results  # noqa: E402


#: Seconds between blocks: longer than ONNX Runtime's spin before its pool threads sleep.
PAUSE_S = 0.05


def seeded_models(model: str, seed: int = 0):
    """(official Sam, our Sam) with the same seeded random weights."""
    from segment_anything import sam_model_registry

    import sam_edge

    torch.manual_seed(seed)
    reference = sam_model_registry[model]().eval()
    checkpoint = os.path.join(tempfile.mkdtemp(), f"sam_{model}_seed{seed}.pth")
    torch.save(reference.state_dict(), checkpoint)
    ours = sam_edge.sam_model_registry[model](checkpoint=checkpoint).eval()
    os.remove(checkpoint)
    return reference, ours


def export_pair(ours, directory: str, with_ops: bool = False) -> None:
    from sam_edge.export.onnx_export import export_split_decoder

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "decoder_{}.onnx").format
    export_split_decoder(ours, path("image"), path("prompt"), prompt_ops_path=path("prompt_ops") if with_ops else None)


class PromptGraph:
    """One exported pair: the image part run once, the prompt part per call (with
    `ops`, decoder_prompt_ops.onnx in a session as the runtime makes it)."""

    def __init__(self, directory: str, threads: int, embedding: np.ndarray, ops: bool = False) -> None:
        import onnxruntime as ort

        from sam_edge.runtime.onnxruntime_backend import session_options
        from sam_edge.runtime.ort_ops import decoder_prompt_ops_session

        providers = ["CPUExecutionProvider"]
        path = os.path.join(directory, "decoder_{}.onnx").format
        image = ort.InferenceSession(path("image"), session_options(threads), providers=providers)
        if ops:
            self.prompt = decoder_prompt_ops_session(path("prompt_ops"), session_options(threads), providers)
        else:
            self.prompt = ort.InferenceSession(path("prompt"), session_options(threads), providers=providers)
        names = [o.name for o in image.get_outputs()]
        self.image_side = dict(zip(names, image.run(names, {"image_embeddings": embedding})))

    def __call__(self, feed):
        iou, low_res = self.prompt.run(None, dict(self.image_side, **feed))
        return low_res[:, 1:], iou[:, 1:]


def official_decoder(reference, embedding: torch.Tensor):
    """The official per-prompt work on a feed of one point (the padding point dropped:
    the official prompt encoder adds its own): multimask low-res logits and scores."""

    @torch.no_grad()
    def run(feed):
        points = (torch.from_numpy(feed["point_coords"][:, :-1]), torch.from_numpy(feed["point_labels"][:, :-1]))
        sparse, dense = reference.prompt_encoder(points=points, boxes=None, masks=None)
        masks, iou = reference.mask_decoder(embedding, reference.prompt_encoder.get_dense_pe(), sparse, dense, True)
        return masks.numpy(), iou.numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op and torch threads")
    parser.add_argument("--repeat", type=int, default=60, help="timed single-prompt calls per implementation")
    parser.add_argument("--block", type=int, default=20, help="ONNX graph calls timed in a row before the next graph")
    parser.add_argument("--baseline", help="directory with another checkout's decoder_image/decoder_prompt.onnx")
    parser.add_argument("--export-only", metavar="DIR", help="write this checkout's pair to DIR and stop")
    parser.add_argument("--tag", help="host name for the results file (default: sam_edge.bench.host.device_tag)")
    args = parser.parse_args()

    if args.block < 1 or args.repeat < 1:
        parser.error("--block and --repeat must be >= 1")

    import sam_edge

    torch.set_num_threads(args.threads)
    reference, ours = seeded_models(args.model)
    if args.export_only:
        export_pair(ours, args.export_only)
        print(f"wrote {args.export_only} with {os.path.dirname(sam_edge.__file__)}")
        return

    from sam_edge.runtime.prompt_layout import decoder_prompt_feed

    rng = np.random.default_rng(0)
    g, size = ours.config.image_embedding_size, ours.config.image_size
    embedding = rng.standard_normal((1, ours.config.prompt_embed_dim, g, g)).astype(np.float32)
    from sam_edge.runtime.ort_ops import library_refusal

    refusal = library_refusal()
    current = tempfile.mkdtemp()
    export_pair(ours, current, with_ops=refusal is None)
    impls = {"official torch decoder": official_decoder(reference, torch.from_numpy(embedding))}
    if args.baseline:
        impls["prompt graph (baseline)"] = PromptGraph(args.baseline, args.threads, embedding)
    impls["prompt graph (this checkout)"] = PromptGraph(current, args.threads, embedding)
    if refusal is None:
        impls["prompt ops graph, MaskUpscale (this checkout)"] = PromptGraph(current, args.threads, embedding, ops=True)
    else:
        print(f"no prompt ops graph row: {refusal}")

    prompts = []
    for _ in range(args.repeat):
        point = rng.uniform(0, size, (1, 1, 2))
        feed = decoder_prompt_feed(point, np.ones((1, 1)), None, None, ours.config.mask_input_size)
        prompts.append({k: feed[k] for k in ("point_coords", "point_labels")})

    errors = {}
    official = impls["official torch decoder"]
    for name, run in impls.items():
        if name == "official torch decoder":
            continue
        worst_l2, worst_score = 0.0, 0.0
        for feed in prompts[:8]:
            low_res, iou = run(feed)
            ref_low_res, ref_iou = official(feed)
            worst_l2 = max(worst_l2, float(np.linalg.norm(low_res - ref_low_res) / np.linalg.norm(ref_low_res)))
            worst_score = max(worst_score, float(np.abs(iou - ref_iou).max()))
        errors[name] = (worst_l2, worst_score)

    times = {name: [] for name in impls}
    cpu = {name: [] for name in impls}
    for name, run in impls.items():  # warm-up
        for feed in prompts[:3]:
            run(feed)
    def timed(name, feed):
        t0, c0 = time.perf_counter(), time.process_time()
        impls[name](feed)
        times[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)

    # The official decoder alone first: torch's OpenMP team keeps its cores busy for a
    # while after each call, which would be timed against the next graph.
    for feed in prompts:
        timed("official torch decoder", feed)
    graphs = [name for name in impls if name != "official torch decoder"]
    for start in range(0, len(prompts), args.block):
        for name in graphs:
            time.sleep(PAUSE_S)  # the last session's pool threads stop spinning
            impls[name](prompts[start])  # untimed: wakes this session's threads
            for feed in prompts[start:start + args.block]:
                timed(name, feed)

    reference_ms = summarize(times["official torch decoder"])["median_ms"]
    rows = []
    for name in impls:
        s = summarize(times[name])
        l2, score = errors.get(name, (None, None))
        rows.append({
            "impl": name, "median_ms": s["median_ms"], "iqr_ms": s["iqr_ms"], "min_ms": s["min_ms"],
            "cpu_median_ms": summarize(cpu[name])["median_ms"],
            "speedup": reference_ms / s["median_ms"], "rel_l2_vs_official": l2, "max_score_diff": score,
        })
    print(f"\n{args.model} prompt part, 1 point per call, {args.threads} threads, {args.repeat} calls each "
          f"(speedup = official torch / this row, by median; errors over 8 prompts, multimask outputs)")
    print_table(rows, list(rows[0]))
    path = write_results(
        f"decoder-prompt-{args.model}",
        {"model": args.model, "threads": args.threads, "repeat": args.repeat, "block": args.block,
         "torch": torch.__version__,
         "onnxruntime": __import__("onnxruntime").__version__, "rows": rows},
        tag=args.tag, variant="baseline vs this checkout" if args.baseline else "this checkout",
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
