"""`sam-edge bench --plot F.png`: where the time goes, and how it spreads.

Left, one stacked bar per run: the medians of the stages of "embed once, query
once" (preprocess, encoder, decoder image part, one 1-prompt call, mask
post-processing). Right, every timed sample per stage and run, as box plots
on a log scale. matplotlib is imported here only (pip install 'sam-edge[bench]').
"""

from typing import Any, Dict

PIPELINE = ("preprocess", "encoder", "decoder_image", "decoder_call_p1", "mask_postprocess")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'sam-edge[bench]' (or pip install matplotlib)") \
            from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_results(doc: Dict[str, Any], path: str) -> str:
    """Write the figure for a results document to `path` (PNG); returns the path."""
    plt = _pyplot()
    runs = doc["runs"]
    stages = [s for s in runs[0]["stages"] if any("samples_ms" in r["stages"].get(s, {}) for r in runs)]
    pipeline = [s for s in PIPELINE if s in stages]
    fig, (bars, spread) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 2.4]})
    colours = plt.get_cmap("tab10").colors
    names = [r["name"] for r in runs]
    bottoms = [0.0] * len(runs)
    for i, stage in enumerate(pipeline):
        heights = [r["stages"].get(stage, {}).get("p50_ms", 0.0) for r in runs]
        bars.bar(names, heights, bottom=bottoms, label=stage, color=colours[i % len(colours)])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    bars.set_ylabel("median latency, ms")
    bars.set_title("embed once, query once: where the time goes")
    bars.legend(fontsize=8)
    bars.tick_params(axis="x", labelrotation=20, labelsize=8)

    width = 0.8 / len(runs)
    for j, run in enumerate(runs):
        data, positions = [], []
        for i, stage in enumerate(stages):
            samples = run["stages"].get(stage, {}).get("samples_ms")
            if samples:
                data.append(samples)
                positions.append(i + (j - (len(runs) - 1) / 2) * width)
        boxes = spread.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=True,
                               manage_ticks=False)
        for patch in boxes["boxes"]:
            patch.set_facecolor(colours[j % len(colours)])
        boxes["boxes"][0].set_label(run["name"])
    spread.set_xticks(range(len(stages)))
    spread.set_xticklabels(stages, rotation=35, ha="right", fontsize=8)
    spread.set_yscale("log")
    spread.set_ylabel("latency per sample, ms (log)")
    spread.set_title("latency distribution per stage")
    spread.legend(fontsize=8)
    host = doc["host"]
    fig.suptitle(f"sam-edge bench on {host.get('tag')} ({host.get('cpu_model')}, {host.get('cpus')} cpus), "
                 f"{doc['created'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
