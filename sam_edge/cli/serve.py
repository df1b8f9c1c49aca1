"""`sam-edge serve` (Ray Serve) and `sam-edge export-triton` (a Triton model repository)."""

import argparse

from .errors import CommandError


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a bundle over HTTP on Ray Serve (pip install 'sam-edge[serve]')")
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle built by `sam-edge build`")
    p.add_argument("--replicas", type=int, default=2, metavar="N", help="decoder replicas (default 2)")
    p.add_argument("--encoder-replicas", type=int, default=1, metavar="N", help="encoder replicas (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--cache-mib", type=int, default=512, metavar="MIB",
                   help="embedding cache per decoder replica, MiB (default 512)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, metavar="N",
                   help="largest image accepted, in pixels (default 4096*4096)")
    p.add_argument("--max-body-mib", type=int, default=32, metavar="MIB", help="largest request body (default 32)")
    p.set_defaults(func=run_serve)
    return p


def add_export_triton_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export-triton", help="write a Triton Inference Server model repository for a bundle")
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle built by `sam-edge build`")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the model repository to write")
    p.add_argument("--cache-mib", type=int, default=512, metavar="MIB",
                   help="the Python-backend model's embedding cache, MiB (default 512)")
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                   help="requests the predictor model takes per execute (default 16)")
    p.add_argument("--ops-library-dir", metavar="DIR",
                   help="where the repository will be on the Triton server, for graphs with sam-edge's "
                        "custom ops (default: --output's absolute path)")
    p.add_argument("--encoder", choices=("standard", "ops"), default="standard",
                   help="the encoder graph to serve: 'standard' (standard ONNX ops, any server; the default) or "
                        "'ops' (the bundle's encoder_ops.onnx, attention in sam-edge's op library, which the "
                        "server registers; needs an AVX-512 CPU there, and runs on KIND_CPU instances)")
    p.set_defaults(func=run_export_triton)
    return p


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..serve.app import ServeConfig, run_server  # imports ray: only here, never for the lean runtime
    except ImportError as exc:
        raise CommandError(f"sam-edge serve needs Ray Serve: pip install 'sam-edge[serve]' ({exc})") from None
    config = ServeConfig(
        bundle=args.bundle, decoder_replicas=args.replicas, encoder_replicas=args.encoder_replicas,
        cache_bytes=args.cache_mib << 20,
        limits={"max_pixels": args.max_pixels, "max_body_bytes": args.max_body_mib << 20},
    )
    from ..runtime.bundle import read_manifest

    read_manifest(args.bundle)  # a missing or foreign bundle fails here, before Ray starts
    run_server(config, args.host, args.port)
    return 0


def run_export_triton(args: argparse.Namespace) -> int:
    from ..serve.triton_repo import export_triton_repository

    written = export_triton_repository(args.bundle, args.output, cache_bytes=args.cache_mib << 20,
                                       max_batch_size=args.max_batch_size, ops_library_dir=args.ops_library_dir,
                                       encoder=args.encoder)
    print(f"sam-edge export-triton: wrote {len(written)} models to {args.output}: {', '.join(written)}")
    return 0
