"""`sam-edge info`: versions, and which kernels and backends run here."""

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="versions and which kernels/backends are active")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)
    return p


def run_info(args: argparse.Namespace) -> int:
    from ..info import info

    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<24} {value}")
    return 0
