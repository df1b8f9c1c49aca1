"""The build and validate sub-commands without the sam-edge CLI around them,
for the recipes in this directory (`sam-edge build` / `sam-edge validate`
parse and run them the same way).

    python export/sam_edge_export.py build --model vit_b --checkpoint sam_vit_b.pth --output bundles/vit_b-fp32
    python export/sam_edge_export.py validate bundles/vit_b-fp32 --checkpoint sam_vit_b.pth
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sam_edge.cli import build, validate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sam_edge_export", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(required=True)
    build.add_parser(subparsers)
    validate.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
