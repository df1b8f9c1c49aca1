"""Full-size ViT-H: export and int8 calibration, recording time and peak memory per step.

    PYTHONPATH=. python export/vit_h_memory.py --output /tmp/vit_h-int8 [--checkpoint sam_vit_h_4b8939.pth]

Needs ~16 GB of RAM and tens of minutes on a few cores; each step runs in its
own process so its peak RSS (ru_maxrss of the child) is its own. Writes
<output>.memory.json. The weights are > 2 GB, so encoder.onnx keeps them in
encoder.onnx.data (both hashed in the manifest).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = {
    "export fp32": "build --model vit_h --precision fp32 --output {out}-fp32 --overwrite --quiet",
    "export + int8 calibration": "build --model vit_h --precision int8 --output {out} --overwrite --quiet"
    " --num-calib-images {images} --calib-tensors-per-run {per_run}",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calib-images", type=int, default=4)
    parser.add_argument("--calib-tensors-per-run", type=int, default=16)
    args = parser.parse_args()
    records = {}
    for name, template in STEPS.items():
        command = template.format(out=args.output, images=args.calib_images, per_run=args.calib_tensors_per_run)
        if args.checkpoint:
            command += f" --checkpoint {args.checkpoint}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.time()
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "export", "sam_edge_export.py")] + command.split(),
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        records[name] = {
            "command": command,
            "returncode": result.returncode,
            "seconds": round(time.time() - start, 1),
            # ru_maxrss of children is the max over all finished children: exact for the
            # first step, an upper bound for later ones unless they exceed it.
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "peak_rss_exceeds_previous_steps": peak_kb > before,
        }
        print(name, records[name], flush=True)
    with open(args.output + ".memory.json", "w") as f:
        json.dump(records, f, indent=2)
    return 0 if all(r["returncode"] == 0 for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
