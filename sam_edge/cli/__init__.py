"""The `sam-edge` command line.

    sam-edge predict --model vit_b --checkpoint sam_vit_b.pth photo.jpg --point 320,240 --output out/
    sam-edge build --model vit_b --checkpoint sam_vit_b.pth --precision int8 --output bundles/vit_b-int8
    sam-edge validate bundles/vit_b-int8 --checkpoint sam_vit_b.pth
    sam-edge info
    sam-edge serve BUNDLE --replicas 2 --host 127.0.0.1 --port 8000
    sam-edge export-triton BUNDLE --output model_repository/
    sam-edge bench BUNDLE --reference --json out.json --plot out.png

Each sub-command is a module here: its arguments, and a handler that turns them
into the typed parameters of the library function that does the work. Importing
this package costs argparse only; a handler imports what its command needs.

Exit status: 0 on success, 1 when the work fails (a message on stderr, no
traceback unless SAM_EDGE_DEBUG=1), 2 on bad usage.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import __version__
from . import bench, build, info, predict, serve, validate
from .errors import CommandError

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-edge", description="Segment Anything at the edge.")
    parser.add_argument("--version", action="version", version=f"sam-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    predict.add_parser(sub)
    build.add_parser(sub)
    validate.add_parser(sub)
    bench.add_parser(sub)
    serve.add_serve_parser(sub)
    serve.add_export_triton_parser(sub)
    info.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict" and not args.point and not args.box:
        parser.error("predict needs at least one --point or --box")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sam-edge: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        if os.environ.get("SAM_EDGE_DEBUG"):
            raise
        print(f"sam-edge: error: {exc}", file=sys.stderr)
        return 1
