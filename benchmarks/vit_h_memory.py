"""Full-size ViT-H: export and int8 calibration, recording time and peak memory per step.

    PYTHONPATH=. python benchmarks/vit_h_memory.py --output /tmp/vit_h-int8 [--checkpoint sam_vit_h_4b8939.pth]

Steps, each in its own process, with that process's own peak RSS (from wait4):

1. `sam-edge build --precision fp32`: the export alone;
2. int8 calibration and quantization of step 1's encoder.onnx, alone;
3. `sam-edge build --precision int8`: export, calibration and quantization in one
   process, as users run it.

Needs ~12 GB of RAM and tens of minutes on 2 cores. Writes <output>.memory.json.
The fp32 weights are > 2 GB, so encoder.onnx keeps them in encoder.onnx.data
(both hashed in the manifest).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = [sys.executable, os.path.join(ROOT, "export", "sam_edge_export.py")]
CALIBRATE = (
    "import sys; from sam_edge.export import quantize; "
    "images, _ = quantize.calibration_images(limit=int(sys.argv[3])); "
    "quantize.quantize_static_int8(sys.argv[1], sys.argv[2], images, 1024)"
)


def run_step(argv) -> dict:
    """Run argv; its exit status, wall time and peak RSS (its own, from wait4)."""
    start = time.time()
    child = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=ROOT))
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": " ".join(argv[1:]),
        "returncode": child.returncode,
        "seconds": round(time.time() - start, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calib-images", type=int, default=4)
    args = parser.parse_args()
    weights = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    fp32 = args.output + "-fp32"
    steps = {
        "export fp32": EXPORT + ["build", "--model", "vit_h", "--precision", "fp32", "--output", fp32,
                                 "--overwrite", "--quiet"] + weights,
        "int8 calibration + quantization (alone)": [
            sys.executable, "-c", CALIBRATE, os.path.join(fp32, "encoder.onnx"), args.output + "-encoder-int8.onnx",
            str(args.calib_images),
        ],
        "int8 build (export + calibration + quantization)": EXPORT + [
            "build", "--model", "vit_h", "--precision", "int8", "--output", args.output, "--overwrite", "--quiet",
            "--num-calib-images", str(args.calib_images)] + weights,
    }
    records = {}
    for name, argv in steps.items():
        records[name] = run_step(argv)
        print(name, records[name], flush=True)
        if records[name]["returncode"] != 0:
            break
    records["calibration_images"] = args.calib_images
    records["weights"] = "checkpoint" if args.checkpoint else "seeded random"
    with open(args.output + ".memory.json", "w") as f:
        json.dump(records, f, indent=2)
    return 0 if all(r["returncode"] == 0 for r in records.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
