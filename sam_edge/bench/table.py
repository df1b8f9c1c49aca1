"""The table `sam-edge bench` prints at the end: per run, each stage's
percentiles, throughput and, with --reference, the ratio to the official package."""

from typing import Any, Dict, List


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def format_run(run: Dict[str, Any]) -> List[str]:
    memory = run["memory"]
    lines = [f"{run['name']} ({run['kind']}, {run['backend']}, {run['precision']}): encoder {run['encoder_mode']}"]
    if run.get("bundle"):
        bundle = run["bundle"]
        lines.append(f"  bundle {bundle['path']}: {bundle['bytes'] / 2**20:.1f} MiB, built by sam-edge "
                     f"{bundle['sam_edge_version']}, manifest sha256 {bundle['manifest_sha256'][:12]}")
    if memory.get("peak_rss_mib") is not None:
        added = memory.get("added_rss_mib")
        lines.append(f"  memory: peak RSS {memory['peak_rss_mib']:.0f} MiB"
                     + (f", added {added:.0f} MiB" if added is not None else ""))
    ratios = run.get("ratio_to_reference")
    header = f"  {'stage':<20}{'unit':<26}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'per s':>10}"
    if ratios is not None:
        header += f"{'vs ref':>9}"
    lines.append(header)
    for stage, s in run["stages"].items():
        if "skipped" in s:
            lines.append(f"  {stage:<20}skipped: {s['skipped']}")
            continue
        row = (f"  {stage:<20}{s['unit'][:25]:<26}{_ms(s['p50_ms']):>10}{_ms(s['p90_ms']):>10}{_ms(s['p99_ms']):>10}"
               f"{(s['throughput_per_s'] or 0):>10.3g}")
        if ratios is not None:
            row += f"{ratios[stage]:>8.2f}x" if stage in ratios else f"{'':>9}"
        lines.append(row)
    return lines


def format_table(doc: Dict[str, Any]) -> str:
    """Every run of a results document as text (ratios: reference p50 / this p50, above 1 is faster)."""
    host = doc["host"]
    settings = doc["settings"]
    lines = [f"sam-edge bench {doc['sam_edge_version']} on {host.get('tag')}: {host.get('cpu_model')}, "
             f"{host.get('cpus')} cpus, features {', '.join(host.get('cpu_features') or []) or 'none listed'}",
             f"images: {settings['images']['count']} from {settings['images']['source']}; repeat "
             f"{settings['repeat']}, warmup {settings['warmup']}",
             "threads: " + "; ".join(f"{k} {v}" for k, v in settings["threads"].items() if v is not None)]
    for run in doc["runs"]:
        lines.append("")
        lines.extend(format_run(run))
    for name, report in (doc.get("validate") or {}).items():
        iou = report.get("mask_iou", {})
        lines.append(f"validate {name}: {'PASS' if report.get('passed') else 'FAIL'}; mask IoU min "
                     f"{iou.get('min', float('nan')):.4f}, p5 {iou.get('p5', float('nan')):.4f}, "
                     f"mean {iou.get('mean', float('nan')):.4f} over {iou.get('count', 0)} masks")
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
