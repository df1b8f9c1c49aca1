"""sam_edge_ops, sam-edge's kernels as an ONNX Runtime custom-op library
(csrc/ort/): where the library is, and registering it with session options.

    options = onnxruntime.SessionOptions()
    register_ort_ops(options)     # raises with the reason when it cannot
    session = onnxruntime.InferenceSession(graph, options)

Its ops live in the ONNX domain "ai.sam_edge", version 1 (csrc/ort/sam_edge_ops.h
documents each). `pip install .` builds the library beside sam_edge._C as
sam_edge/libsam_edge_ops.so; the environment variable SAM_EDGE_OPS_LIBRARY
names another build. onnxruntime itself is not imported here.
"""

import os
from pathlib import Path
from typing import Optional

#: The ONNX domain of the library's ops, and its version.
DOMAIN = "ai.sam_edge"
DOMAIN_VERSION = 1
#: The environment variable that names a library other than the installed one.
LIBRARY_ENV = "SAM_EDGE_OPS_LIBRARY"
_INSTALLED = Path(__file__).resolve().parent.parent / "libsam_edge_ops.so"


def library_path() -> Optional[str]:
    """The library's path: SAM_EDGE_OPS_LIBRARY when set (whether or not the file
    exists), else the installed build, else None."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    return str(_INSTALLED) if _INSTALLED.is_file() else None


def register_ort_ops(options) -> str:
    """Register the library's ops with an onnxruntime.SessionOptions; returns the
    library's path.

    Raises FileNotFoundError when the library is not built (or SAM_EDGE_OPS_LIBRARY
    names no file), and onnxruntime's error, carrying the library's reason, when
    the library refuses: a CPU without AVX-512, or an onnxruntime older than 1.16."""
    path = library_path()
    if path is None:
        raise FileNotFoundError(
            f"sam_edge_ops is not built: pip install . builds it as {_INSTALLED} (or set {LIBRARY_ENV})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{LIBRARY_ENV} names {path!r}, which is not a file")
    options.register_custom_ops_library(path)
    return path
