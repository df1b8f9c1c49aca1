"""The README's performance table, generated from `sam-edge bench` results so it cannot drift from the data.

    python scripts/perf_table.py                       # print the markdown table
    python scripts/perf_table.py --write README.md     # put it between the markers
    python scripts/perf_table.py --check README.md     # exit 1 if the README's table differs
    python scripts/perf_table.py --compact ...         # one row per bundle and host (the README's)
    python scripts/perf_table.py --peers --write docs/benchmarks.md   # the OpenVINO comparison

Reads benchmarks/results/*.json written by `sam-edge bench --json` (other
results files are skipped). One column per host, where a host is its tag and
its CPU features: machines that differ in AVX-512 or AMX get separate columns
even under one name. Per host and row (model, precision, kind) the latest run
is shown. A cell is the median in ms with, where the run had --reference, the
speed-up over the official segment_anything measured in the same process.

--peers reads the `benchmarks/bench_openvino.py` files instead
(<host>-<date>-openvino-<model>[-N].json): the latest per host and model, one
row per path it timed, between the peer-table markers.
"""

import argparse
import difflib
import glob
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # a checkout tool: the package from this tree

from sam_edge.bench.schema import SCHEMA_NAME, load_result  # noqa: E402

BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"
PEER_BEGIN, PEER_END = "<!-- peer-table:begin -->", "<!-- peer-table:end -->"
DEFAULT_RESULTS = os.path.join(REPO, "benchmarks", "results")
#: (row label, stage) of the figures shown per run; e2e rows use the K the run has.
METRICS = (
    ("encoder", "encoder"),
    ("decoder, 1 prompt", "decoder_call_p1"),
    ("decoder, per prompt of 16", "decoder_prompt_p16"),
    ("masks at original size", "mask_postprocess"),
    ("embed + 10 queries", "e2e_query_10"),
)


def feature_label(features: List[str]) -> str:
    """The CPU features that pick kernels, in a word or two."""
    if "amx_tile" in features:
        return "AMX"
    if "avx512f" in features:
        return "AVX-512" + (" FP16" if "avx512_fp16" in features else "")
    return "AVX2" if "avx2" in features else "no AVX2"


def load_results(directory: str) -> List[Dict[str, Any]]:
    """Every `sam-edge bench` results file in `directory`, validated (SchemaError names a broken one)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as f:
            try:
                head = json.load(f)
            except ValueError:
                continue  # not ours to judge
        if isinstance(head, dict) and head.get("schema") == SCHEMA_NAME:
            doc = load_result(path)
            doc["_file"] = os.path.basename(path)
            docs.append(doc)
    return docs


def _host(doc: Dict[str, Any]) -> Tuple[str, Tuple[str, ...]]:
    return doc["host"]["tag"], tuple(doc["host"].get("cpu_features") or [])


def _cell(doc: Dict[str, Any], run: Dict[str, Any], stage: str) -> str:
    summary = run["stages"].get(stage)
    if not summary or "p50_ms" not in summary:
        return "n/a"
    ms = summary["p50_ms"]
    text = f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"
    ratio = (run.get("ratio_to_reference") or {}).get(stage)
    if ratio is not None:
        text += f" ({ratio:.2f}x)"
    return text


def _validate_cell(doc: Dict[str, Any], run: Dict[str, Any]) -> Optional[str]:
    report = (doc.get("validate") or {}).get(run["name"])
    if not report or "mask_iou" not in report:
        return None
    iou = report["mask_iou"]
    return f"{iou['mean']:.3f} / {iou['p5']:.3f}"


def generate_table(docs: List[Dict[str, Any]]) -> str:
    """The markdown table (and its footnote) for these results."""
    hosts: Dict[Tuple[str, Tuple[str, ...]], Dict[str, Any]] = {}
    latest: Dict[Tuple[Any, Tuple[str, str, str]], Tuple[Dict[str, Any], Dict[str, Any]]] = {}
    for doc in docs:
        host = _host(doc)
        hosts.setdefault(host, doc["host"])
        for run in doc["runs"]:
            if run["kind"] == "reference":
                continue
            row = (run["model_type"], run["precision"], run["kind"] if run["kind"] != "bundle" else run["backend"])
            seen = latest.get((host, row))
            if seen is None or doc["created"] > seen[0]["created"]:
                latest[(host, row)] = (doc, run)
    if not latest:
        return "_No `sam-edge bench` results in benchmarks/results yet._"
    columns = sorted(hosts)
    rows = sorted({row for _, row in latest})
    header = ["model", "precision", "runtime", "stage (p50)"] + [
        f"{tag}: {hosts[(tag, f)].get('cpu_model')} ({feature_label(list(f))})" for tag, f in columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    flagged = False
    for row in rows:
        labels = list(METRICS) + [("mask IoU mean / p5", None)]
        for label, stage in labels:
            cells = []
            for host in columns:
                found = latest.get((host, row))
                if found is None:
                    cells.append("")
                    continue
                doc, run = found
                cell = _cell(doc, run, stage) if stage else _validate_cell(doc, run)
                if cell is None:
                    cells.append("")
                    continue
                if doc.get("notes"):
                    cell += " †"
                    flagged = True
                cells.append(cell)
            if stage is None and not any(cells):
                continue
            lines.append("| " + " | ".join(list(row) + [label] + cells) + " |")
    lines.append("")
    lines.append("Medians of `sam-edge bench` runs, the latest per host; (N.NNx): the official segment_anything "
                 "(fp32, torch) median over ours, measured in the same process. Mask IoU: `sam-edge validate` "
                 "against the fp32 torch model. Generated by `scripts/perf_table.py` from "
                 "`benchmarks/results/*.json`.")
    if flagged:
        lines.append("† the run's results file carries notes (such as a shared CPU): read them before relying on it.")
    return "\n".join(lines)


MODEL_ORDER = ("vit_b", "vit_l", "vit_h")
PRECISION_ORDER = ("fp32", "fp16", "int8", "int8-dynamic")


def _rank(order: Tuple[str, ...], name: str) -> Tuple[int, str]:
    """Names in `order` by their place in it; unknown names after, alphabetically."""
    return (order.index(name), "") if name in order else (len(order), name)


def _row_order(key):
    """Models by size, precisions from fp32 down; unknown names after, alphabetically."""
    (model, precision, runtime), host = key
    return _rank(MODEL_ORDER, model), _rank(PRECISION_ORDER, precision), runtime, host


#: (column, stage) of the compact table; None: the validation cell.
COMPACT = (("encoder", "encoder"), ("decoder, 1 prompt", "decoder_call_p1"),
           ("embed + 10 queries", "e2e_query_10"), ("mask IoU mean / p5", None))


def generate_compact(docs: List[Dict[str, Any]]) -> str:
    """One row per (model, precision, runtime, host), the latest run of each: encoder, decoder and
    end-to-end medians with their ratios, and the mask IoU; the full table is generate_table."""
    latest: Dict[Tuple[Tuple[str, str, str], Any], Tuple[Dict[str, Any], Dict[str, Any]]] = {}
    for doc in docs:
        host = _host(doc)
        for run in doc["runs"]:
            if run["kind"] == "reference":
                continue
            key = ((run["model_type"], run["precision"], run["kind"] if run["kind"] != "bundle" else run["backend"]),
                   host)
            seen = latest.get(key)
            if seen is None or doc["created"] > seen[0]["created"]:
                latest[key] = (doc, run)
    if not latest:
        return "_No `sam-edge bench` results in benchmarks/results yet._"
    header = ["model", "precision", "runtime", "host"] + [label for label, _ in COMPACT]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    flagged = False
    for (row, host) in sorted(latest, key=_row_order):
        doc, run = latest[(row, host)]
        info = doc["host"]
        cells = [_cell(doc, run, stage) if stage else (_validate_cell(doc, run) or "not run") for _, stage in COMPACT]
        if doc.get("notes"):
            cells[-1] += " †"
            flagged = True
        host_cell = f"{info['tag']}: {info.get('cpu_model')} ({feature_label(list(host[1]))})"
        lines.append("| " + " | ".join(list(row) + [host_cell] + cells) + " |")
    lines.append("")
    lines.append("Medians of `sam-edge bench`, the latest run per host; (N.NNx): the official segment_anything "
                 "(fp32, torch) over ours in the same process. Mask IoU: `sam-edge validate` against the fp32 "
                 "torch model. Generated by `scripts/perf_table.py --compact`; every stage in docs/benchmarks.md.")
    if flagged:
        lines.append("† the results file carries notes (the host's state, the images and passes timed): read them.")
    return "\n".join(lines)


#: <host>-<date>-<benchmark>[-N].json, as benchmarks/common.py results_path names results
#: (scripts/results_index.py parses them with the same pattern).
RESULTS_NAME = re.compile(r"(?P<host>.+?)-(?P<date>\d{4}-\d{2}-\d{2})-(?P<benchmark>.+?)(?:-(?P<repeat>\d+))?\.json")
PEER_BENCHMARK = "openvino-"


def latest_peer_results(directory: str) -> List[Tuple[str, str, str, Dict[str, Any]]]:
    """(file name, host tag, model, document) of the latest `bench_openvino.py` run per (host tag,
    CPU feature label, model): by date, then by the -N of a day's repeats. Raises ValueError naming a
    file that is named as one but does not hold its rows."""
    latest: Dict[Tuple[str, str, str], Tuple[Tuple[str, int], str, Dict[str, Any]]] = {}
    for path in glob.glob(os.path.join(directory, f"*-{PEER_BENCHMARK}*.json")):
        name = os.path.basename(path)
        match = RESULTS_NAME.fullmatch(name)
        if not match or not match["benchmark"].startswith(PEER_BENCHMARK):
            continue  # "openvino" elsewhere in the name, such as the host's
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except ValueError as exc:
                raise ValueError(f"{name}: not JSON ({exc})") from None
        rows = doc.get("rows") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "path" in r for r in rows):
            raise ValueError(f"{name}: expected a bench_openvino.py result with a list of rows, each with a path")
        model = str(doc.get("model") or match["benchmark"][len(PEER_BENCHMARK):])
        key = (match["host"], _peer_features(doc), model)
        order = (match["date"], int(match["repeat"] or 1))
        if key not in latest or order > latest[key][0]:
            latest[key] = (order, name, doc)
    ranked = sorted(latest, key=lambda k: (k[0], k[1], _rank(MODEL_ORDER, k[2])))
    return [(latest[k][1], k[0], k[2], latest[k][2]) for k in ranked]


def _peer_features(doc: Dict[str, Any]) -> str:
    features = doc.get("cpu_features")
    if features is None:
        features = (doc.get("hardware") or {}).get("cpu_features")
    return "features not recorded" if features is None else feature_label(list(features))


def _peer_path(row: Dict[str, Any]) -> str:
    mode = row.get("encoder_mode")
    return f"{row['path']}, encoder: {mode}" if mode else str(row["path"])


def _number(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return "0" if value == 0 and spec.endswith("e") else format(value, spec)


def generate_peer_table(directory: str, link_prefix: str = "../benchmarks/results/") -> str:
    """The markdown table of the OpenVINO comparison: per host and model, every path of the latest run."""
    results = latest_peer_results(directory)
    if not results:
        return "_No `benchmarks/bench_openvino.py` results in benchmarks/results yet._"
    header = ["host", "model", "path", "encoder median (ms)", "IQR (ms)", "× official", "embedding rel-L2",
              "results"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, host, model, doc in results:
        cpu = (doc.get("hardware") or {}).get("cpu_model")
        host_cell = f"{host}: {cpu} ({_peer_features(doc)})" if cpu else f"{host} ({_peer_features(doc)})"
        for row in doc["rows"]:
            encoder = row.get("encoder") or {}
            cells = [host_cell, model, _peer_path(row), _number(encoder.get("median_ms"), ".0f"),
                     _number(encoder.get("iqr_ms"), ".0f"), _number(row.get("speedup_vs_official"), ".2f"),
                     _number(row.get("embedding_rel_l2_max"), ".1e"), f"[{name}]({link_prefix}{name})"]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.append("The image encoder alone, the latest `benchmarks/bench_openvino.py` run per host and model: "
                 "median and interquartile range over the evaluation photos × repeats; × official: the official "
                 "segment_anything (fp32, torch) median over the row's, measured in the same run; rel-L2: the "
                 "worst photo's embedding against the official one. Generated by `scripts/perf_table.py --peers` "
                 "from `benchmarks/results/*-openvino-*.json`.")
    return "\n".join(lines)


def _between_markers(text: str, path: str, begin: str = BEGIN, end: str = END) -> Tuple[int, int]:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{path} has no {begin} ... {end} markers for the table")
    return start + len(begin), stop


def write_or_check(path: str, generated: str, mode: str, begin: str = BEGIN, end: str = END,
                   command: str = "python scripts/perf_table.py") -> int:
    """Put `generated` between the markers of `path` (mode "write"), or exit status 1 with a diff
    when what is there differs (mode "check"); 1 with a message when the markers are missing."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        start, stop = _between_markers(text, path, begin, end)
    except ValueError as exc:
        script = next((word for word in command.split() if word.endswith(".py")), command)
        print(f"{os.path.basename(script)}: {exc}", file=sys.stderr)
        return 1
    current = text[start:stop].strip()
    if mode == "check":
        if current == generated.strip():
            return 0
        print(f"{path} differs from the results; run {command} --write {path}", file=sys.stderr)
        sys.stderr.writelines(difflib.unified_diff(current.splitlines(True), generated.strip().splitlines(True),
                                                   path, "generated"))
        return 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + "\n" + generated.strip() + "\n" + text[stop:])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="directory of results JSON")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--compact", action="store_true", help="one row per bundle and host (the README's table)")
    which.add_argument("--peers", action="store_true",
                       help="the OpenVINO comparison from bench_openvino.py results, between the peer-table markers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="README", help="exit 1 if README's table differs from the generated one")
    mode.add_argument("--write", metavar="README", help="replace README's table with the generated one")
    args = parser.parse_args(argv)
    command, markers = "python scripts/perf_table.py", (BEGIN, END)
    if args.peers:
        table, command, markers = generate_peer_table(args.results), command + " --peers", (PEER_BEGIN, PEER_END)
    elif args.compact:
        table, command = generate_compact(load_results(args.results)), command + " --compact"
    else:
        table = generate_table(load_results(args.results))
    if not args.check and not args.write:
        print(table)
        return 0
    return write_or_check(args.check or args.write, table, "check" if args.check else "write", *markers,
                          command=command)


if __name__ == "__main__":
    sys.exit(main())
