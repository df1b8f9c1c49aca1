"""`sam-edge bench --compare A.json B.json`: what moved between two runs, held against the noise.

Runs are matched by name and stages by key. A stage's change is B's median
minus A's; its noise is the larger of the two interquartile ranges. A change
larger than the noise is flagged ("slower" or "faster"); anything within it is
reported as within noise, since a repeat of the same run moves that much.
"""

from typing import Any, Dict, List, Tuple


def compare_results(a: Dict[str, Any], b: Dict[str, Any]) -> Tuple[List[str], int]:
    """(report lines, how many stages moved beyond their noise) for two validated results."""
    lines = [f"A: {a['host'].get('tag')} {a['created']}  ({a['host'].get('cpu_model')})",
             f"B: {b['host'].get('tag')} {b['created']}  ({b['host'].get('cpu_model')})"]
    runs_b = {r["name"]: r for r in b["runs"]}
    names_a = [r["name"] for r in a["runs"]]
    for name in names_a:
        if name not in runs_b:
            lines.append(f"run {name}: only in A")
    for name in runs_b:
        if name not in names_a:
            lines.append(f"run {name}: only in B")
    moved = compared = 0
    header = f"  {'stage':<22}{'A p50 ms':>12}{'B p50 ms':>12}{'change':>10}{'noise (IQR) ms':>16}  verdict"
    for run_a in a["runs"]:
        run_b = runs_b.get(run_a["name"])
        if run_b is None:
            continue
        lines.append(f"run {run_a['name']}:")
        lines.append(header)
        for stage, sa in run_a["stages"].items():
            sb = run_b["stages"].get(stage)
            if sb is None:
                lines.append(f"  {stage:<22}only in A")
                continue
            if "p50_ms" not in sa or "p50_ms" not in sb:
                lines.append(f"  {stage:<22}not measured in {'A' if 'p50_ms' not in sa else 'B'}")
                continue
            compared += 1
            delta = sb["p50_ms"] - sa["p50_ms"]
            noise = max(sa["iqr_ms"], sb["iqr_ms"])
            relative = delta / sa["p50_ms"] if sa["p50_ms"] > 0 else 0.0
            if abs(delta) > noise:
                moved += 1
                verdict = "SLOWER" if delta > 0 else "FASTER"
            else:
                verdict = "within noise"
            lines.append(f"  {stage:<22}{sa['p50_ms']:>12.3f}{sb['p50_ms']:>12.3f}{relative:>+10.1%}"
                         f"{noise:>16.3f}  {verdict}")
        for stage in run_b["stages"]:
            if stage not in run_a["stages"]:
                lines.append(f"  {stage:<22}only in B")
    if moved == 0:
        lines.append(f"no change beyond noise in {compared} compared stages")
    else:
        lines.append(f"{moved} of {compared} compared stages moved beyond their noise")
    return lines, moved
