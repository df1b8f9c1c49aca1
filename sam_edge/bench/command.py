"""The `sam-edge bench` run: the subjects a BenchRequest names measured by runner,
then the table, the JSON and the plot; or --compare of two results files.
The command line's arguments are sam_edge/cli/bench.py's."""

import dataclasses
import datetime
import json
import os
import sys
from typing import Any, Dict, List, Optional

from .schema import SCHEMA_NAME, SCHEMA_VERSION


@dataclasses.dataclass
class BenchRequest:
    """What to measure (bundle directories, or a torch model size) and how."""

    bundles: List[str] = dataclasses.field(default_factory=list)
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    images: Optional[str] = None
    prompts: List[int] = dataclasses.field(default_factory=lambda: [1, 16])
    queries: List[int] = dataclasses.field(default_factory=lambda: [1, 10, 100])
    repeat: int = 3
    warmup: int = 1
    threads: Optional[int] = None
    reference: bool = False
    validate: bool = False
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    notes: List[str] = dataclasses.field(default_factory=list)
    tag: Optional[str] = None
    seed: int = 0


def compare(path_a: str, path_b: str) -> int:
    """Print the per-stage changes from results file A to B; returns 0."""
    from .compare import compare_results
    from .schema import load_result

    lines, _ = compare_results(load_result(path_a), load_result(path_b))
    print("\n".join(lines))
    return 0


def run_bench(request: BenchRequest) -> int:
    """Measure, print the table, write the JSON and the plot the request asks for; returns 0."""
    doc = measure_all(request)
    from .table import format_table

    print(format_table(doc))
    if request.json_path:
        directory = os.path.dirname(os.path.abspath(request.json_path))
        os.makedirs(directory, exist_ok=True)
        with open(request.json_path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {request.json_path}")
    if request.plot_path:
        from .plot import plot_results

        print(f"wrote {plot_results(doc, request.plot_path)}")
    return 0


def measure_all(request: BenchRequest) -> Dict[str, Any]:
    """Measure every subject the request names; returns the validated results document."""
    from tqdm import tqdm

    from .. import __version__, postprocess
    from . import runner, subjects
    from .schema import validate_result

    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    images, source, notes = runner.bench_images(request.images)
    notes = list(request.notes) + notes
    needs_torch = bool(request.model or request.reference or request.validate)
    if request.threads:
        postprocess.set_num_threads(request.threads)
        if needs_torch:
            import torch

            torch.set_num_threads(request.threads)
    factories = []
    manifests = {}
    if request.bundles:
        from ..runtime.bundle import read_manifest

        for bundle in request.bundles:
            manifests[bundle] = read_manifest(bundle)
            factories.append(lambda b=bundle: subjects.bundle_subject(b, request.threads))
        model_types = []
        for bundle, manifest in manifests.items():
            if manifest["model_type"] not in model_types:
                model_types.append(manifest["model_type"])
        references = [(t, next(m for m in manifests.values() if m["model_type"] == t)) for t in model_types]
    else:
        factories.append(lambda: subjects.torch_subject(request.model, request.checkpoint))
        references = [(request.model, None)]
    if request.reference:
        for model_type, manifest in references:
            if manifest is not None:  # refuse a reduced test bundle before any timing
                subjects.reference_config_check(manifest)
            factories.append(lambda t=model_type, m=manifest: subjects.reference_subject(t, request.checkpoint, m))
    runs = []
    with tqdm(total=len(factories) * request.repeat * len(images), desc="bench", unit="image") as bar:
        for factory in factories:
            runs.append(runner.measure(factory, images, request.prompts, request.queries, request.repeat,
                                       request.warmup, seed=request.seed, progress=bar))
    runner.add_reference_ratios(runs)
    for run in runs:
        notes.extend(f"{run['name']}: {n}" for n in run.pop("notes", []))
    from .host import device_tag, hardware

    host = hardware()
    host["load_average_at_start"] = load_at_start
    host["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    host["tag"] = request.tag or device_tag()
    torch_module = sys.modules.get("torch")
    doc = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sam_edge_version": __version__,
        "command": ["sam-edge"] + sys.argv[1:] if os.path.basename(sys.argv[0]).startswith("sam-edge") else sys.argv,
        "host": host,
        "settings": {
            "repeat": request.repeat,
            "warmup": request.warmup,
            "prompts": request.prompts,
            "queries": request.queries,
            "calls_per_image": runner.CALLS_PER_IMAGE,
            "seed": request.seed,
            "threads": {
                "requested": request.threads,
                "onnxruntime_intra_op": request.threads or "onnxruntime default (one per core)",
                "torch": torch_module.get_num_threads() if torch_module is not None else None,
                "postprocess": postprocess.active_path(),
            },
            "images": {"source": source, "count": len(images), "sizes": [list(i.shape[:2]) for i in images]},
        },
        "notes": notes,
        "runs": runs,
    }
    if request.validate:
        from ..export.validate import validate_bundle

        doc["validate"] = {}
        for bundle, run in zip(request.bundles, runs):
            doc["validate"][run["name"]] = validate_bundle(bundle, request.checkpoint, images, seed=request.seed)
    return validate_result(doc)
