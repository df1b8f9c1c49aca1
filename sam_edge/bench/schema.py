"""The JSON that `sam-edge bench --json` writes, and its validator.

A results file is one object (schema "sam-edge-bench", SCHEMA_VERSION 1):

    schema, schema_version     "sam-edge-bench", 1
    created                    ISO 8601 UTC time the run finished
    sam_edge_version           the version that measured
    command                    the argv of the run
    host                       sam_edge.bench.host.hardware(), plus "tag"
                               (a short name for the machine)
    settings                   repeat, warmup, prompts [P...], queries [K...],
                               threads {requested, onnxruntime, torch, postprocess},
                               images {source, count, sizes [[H, W]...]}
    notes                      [str]: anything a reader must know (a shared CPU,
                               synthetic images, a stage a runtime does not have)
    runs                       [run]: one per bundle or model, then the
                               official reference when --reference was given
    validate                   {run name: sam-edge validate report} (optional)

A run:

    name                       unique in the file, e.g. "vit_b-int8" or "reference"
    kind                       "bundle", "torch" or "reference"
    model_type, precision, backend, encoder_mode, weights
    bundle                     the manifest summary (bundle runs; else null):
                               path, bytes, precision, sam_edge_version,
                               manifest_sha256, weights
    load_s                     seconds to load the bundle or model
    memory                     rss_before_load_mib, rss_loaded_mib, peak_rss_mib,
                               added_rss_mib (peak minus before load), method
    stages                     {stage: stage summary, or {"skipped": reason}}
    ratio_to_reference         {stage: reference p50 / this run's p50} (runs
                               other than the reference, with --reference;
                               above 1 means this run is faster)
    reference                  the name of the run those ratios are against

A stage summary: unit (what one item is), n, samples_ms (every timed sample,
in order), min_ms, p50_ms, p90_ms, p99_ms, max_ms, mean_ms, iqr_ms (p75 - p25:
the noise `--compare` holds a change against) and throughput_per_s (items per
second at the median).

Stages (P from settings.prompts, K from settings.queries):

    preprocess                 resize to the model's side, normalise, pad (per image)
    encoder                    the image encoder on a preprocessed image (per image)
    decoder_image              the decoder's image part, once per image, where the
                               runtime separates it (else skipped, with why)
    decoder_call_p{P}          one decoder call with P one-point prompts (per call)
    decoder_prompt_p{P}        the same samples divided by P (per prompt)
    mask_postprocess           a call's 3 low-res masks to binary masks at the
                               original resolution (per call)
    e2e_query_{K}              set_image, then K single-point predict() calls,
                               masks included: each sample is the whole job's
                               time (throughput: queries per second)

A reader of a newer minor layout must ignore fields it does not know; a change
that renames or removes a field raises SCHEMA_VERSION.
"""

from typing import Any, Dict, Iterable, List, Sequence

import numpy as np

SCHEMA_NAME = "sam-edge-bench"
SCHEMA_VERSION = 1
RUN_KINDS = ("bundle", "torch", "reference")
FIXED_STAGES = ("preprocess", "encoder", "decoder_image", "mask_postprocess")
SUMMARY_FIELDS = ("unit", "n", "samples_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms",
                  "iqr_ms", "throughput_per_s")


class SchemaError(ValueError):
    """A results file that does not follow the schema; the message lists every problem."""


def stage_names(prompts: Iterable[int], queries: Iterable[int]) -> List[str]:
    """Every stage a run reports for these prompt counts P and query counts K, in display order."""
    names = ["preprocess", "encoder", "decoder_image"]
    for p in prompts:
        names += [f"decoder_call_p{p}", f"decoder_prompt_p{p}"]
    names.append("mask_postprocess")
    names += [f"e2e_query_{k}" for k in queries]
    return names


def summarize_stage(samples_s: Sequence[float], unit: str, items_per_sample: float = 1.0) -> Dict[str, Any]:
    """The stage summary of `samples_s` (seconds each); a sample covers
    `items_per_sample` items of `unit` (throughput counts items, not samples)."""
    if len(samples_s) == 0:
        raise ValueError("a stage needs at least one timed sample")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {
        "unit": unit,
        "n": int(ms.size),
        "samples_ms": [round(float(x), 6) for x in ms],
        "min_ms": float(ms.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "iqr_ms": float(p75 - p25),
        "throughput_per_s": float(items_per_sample * 1e3 / p50) if p50 > 0 else None,
    }


def _expect(problems: List[str], where: str, value: Any, types, what: str) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        problems.append(f"{where}: expected {what}, got {type(value).__name__} {value!r:.60}")
        return False
    return True


def _check_stage(problems: List[str], where: str, stage: Any) -> None:
    if not _expect(problems, where, stage, dict, "an object"):
        return
    if "skipped" in stage:
        _expect(problems, f"{where}.skipped", stage["skipped"], str, "a reason (string)")
        return
    missing = [f for f in SUMMARY_FIELDS if f not in stage]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return
    _expect(problems, f"{where}.unit", stage["unit"], str, "a string")
    if _expect(problems, f"{where}.n", stage["n"], int, "an integer") and stage["n"] < 1:
        problems.append(f"{where}.n: expected >= 1, got {stage['n']}")
    if _expect(problems, f"{where}.samples_ms", stage["samples_ms"], list, "a list of numbers"):
        if len(stage["samples_ms"]) != stage["n"]:
            problems.append(f"{where}.samples_ms: {len(stage['samples_ms'])} samples but n = {stage['n']}")
    numbers = [stage[f] for f in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
    if all(_expect(problems, f"{where}.{f}", stage[f], (int, float), "a number")
           for f in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "iqr_ms")):
        if any(a > b for a, b in zip(numbers, numbers[1:])):
            problems.append(f"{where}: expected min <= p50 <= p90 <= p99 <= max, got {numbers}")
        if stage["iqr_ms"] < 0:
            problems.append(f"{where}.iqr_ms: negative ({stage['iqr_ms']})")
    if stage["throughput_per_s"] is not None:
        _expect(problems, f"{where}.throughput_per_s", stage["throughput_per_s"], (int, float), "a number or null")


def validate_result(doc: Any) -> Dict[str, Any]:
    """`doc` if it follows the schema; else SchemaError naming every problem found."""
    problems: List[str] = []
    if not isinstance(doc, dict):
        raise SchemaError(f"a sam-edge bench result is a JSON object; got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA_NAME:
        raise SchemaError(f"not a sam-edge bench result: schema is {doc.get('schema')!r}, expected {SCHEMA_NAME!r}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"schema_version {doc.get('schema_version')!r}: this sam-edge reads {SCHEMA_VERSION}")
    for key, types, what in (("created", str, "an ISO time"), ("sam_edge_version", str, "a string"),
                             ("command", list, "a list"), ("host", dict, "an object"),
                             ("settings", dict, "an object"), ("notes", list, "a list of strings"),
                             ("runs", list, "a list of runs")):
        if key not in doc:
            problems.append(f"missing {key}")
        else:
            _expect(problems, key, doc[key], types, what)
    if problems:
        raise SchemaError("; ".join(problems))
    host, settings = doc["host"], doc["settings"]
    for key in ("tag", "cpu_model", "cpus", "cpu_features"):
        if key not in host:
            problems.append(f"host: missing {key}")
    for key in ("repeat", "warmup", "prompts", "queries", "threads", "images"):
        if key not in settings:
            problems.append(f"settings: missing {key}")
    if problems:
        raise SchemaError("; ".join(problems))
    expected = stage_names(settings["prompts"], settings["queries"])
    names = set()
    if not doc["runs"]:
        problems.append("runs: empty")
    for i, run in enumerate(doc["runs"]):
        where = f"runs[{i}]"
        if not _expect(problems, where, run, dict, "an object"):
            continue
        for key in ("name", "kind", "model_type", "precision", "backend", "encoder_mode", "bundle", "memory", "stages"):
            if key not in run:
                problems.append(f"{where}: missing {key}")
        if any(key not in run for key in ("name", "kind", "stages", "memory")):
            continue
        where = f"runs[{run['name']!r}]"
        if run["name"] in names:
            problems.append(f"{where}: the name is not unique")
        names.add(run["name"])
        if run["kind"] not in RUN_KINDS:
            problems.append(f"{where}.kind: expected one of {RUN_KINDS}, got {run['kind']!r}")
        if _expect(problems, f"{where}.stages", run["stages"], dict, "an object"):
            missing = [s for s in expected if s not in run["stages"]]
            if missing:
                problems.append(f"{where}.stages: missing {', '.join(missing)}")
            for stage, summary in run["stages"].items():
                _check_stage(problems, f"{where}.stages.{stage}", summary)
        if _expect(problems, f"{where}.memory", run["memory"], dict, "an object"):
            for key in ("rss_before_load_mib", "rss_loaded_mib", "peak_rss_mib", "added_rss_mib", "method"):
                if key not in run["memory"]:
                    problems.append(f"{where}.memory: missing {key}")
        ratios = run.get("ratio_to_reference")
        if ratios is not None and _expect(problems, f"{where}.ratio_to_reference", ratios, dict, "an object"):
            for stage, ratio in ratios.items():
                _expect(problems, f"{where}.ratio_to_reference.{stage}", ratio, (int, float), "a number")
    if "validate" in doc and doc["validate"] is not None:
        _expect(problems, "validate", doc["validate"], dict, "an object of validate reports by run name")
    if problems:
        raise SchemaError("; ".join(problems))
    return doc


def load_result(path: str) -> Dict[str, Any]:
    """A results file, read and validated (SchemaError / OSError / ValueError say why not)."""
    import json

    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except ValueError as exc:
            raise SchemaError(f"{path} is not JSON: {exc}") from None
    try:
        return validate_result(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
