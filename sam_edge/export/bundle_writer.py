"""The one writer of bundle directories, ONNX Runtime's and TensorRT's alike.

    writer = BundleStaging(output, overwrite)    # refuses an existing output early
    staging = writer.begin()
    try:
        ...write the bundle's files into `staging`...
        writer.write_manifest(dict(manifest, files=writer.file_records()))
        move_bundle_into_place(staging, output)
    except BaseException:
        writer.discard()
        raise

A bundle is written into a staging directory next to `output` and renamed into
place only once it is complete, so an interrupted or failed build never leaves
a directory that looks like a bundle. The finished bundle takes the modes the
umask gives, whatever mkdtemp or a library chose while it was written.

A build killed with SIGKILL cannot clean up after itself: it leaves its staging
directory, and during the final move perhaps the previous bundle moved aside.
Those siblings are named `.NAME.KIND-PID-HOST-XXXXXXXX` after the process that
made them, and the next build of NAME removes the ones whose process is gone
(never those of a build still running, nor those another host made).
"""

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Any, Dict, List, Mapping, Optional

from ..runtime.bundle import MANIFEST_NAME, file_record

#: Sibling kinds: a bundle being written, the previous bundle during the move, and the
#: ONNX Runtime bundle that a TensorRT build makes its engines from.
SIBLING_KINDS = ("building", "old", "onnx")


def _host_id() -> str:
    """Eight hex digits naming this host (a hostname may hold any character)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def sibling_directory(output: str, kind: str) -> str:
    """A new private directory `.NAME.KIND-PID-HOST-XXXXXXXX` next to `output`, owned by this process."""
    if kind not in SIBLING_KINDS:
        raise ValueError(f"kind must be one of {SIBLING_KINDS}; got {kind!r}")
    output = os.path.abspath(os.fspath(output))
    prefix = f".{os.path.basename(output)}.{kind}-{os.getpid()}-{_host_id()}-"
    return tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(output))


def _process_is_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    try:  # a killed process its parent has not reaped yet still answers signal 0
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def remove_stale_siblings(output: str) -> List[str]:
    """Remove the siblings of `output` left by builds of it on this host whose process is gone;
    returns their names."""
    output = os.path.abspath(os.fspath(output))
    parent, name = os.path.dirname(output), os.path.basename(output)
    pattern = re.compile(
        rf"\.{re.escape(name)}\.(?:{'|'.join(SIBLING_KINDS)})-(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-[^/]+"
    )
    removed = []
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for entry in sorted(entries):
        match = pattern.fullmatch(entry)
        if match and match["host"] == _host_id() and _process_is_gone(int(match["pid"])):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


def checked_output(output: str, overwrite: bool) -> str:
    """`output` as an absolute path; FileExistsError if something is there and not `overwrite`."""
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    return output


class BundleStaging:
    """The staging directory of a bundle at `output`.

    Construction checks `output` (FileExistsError unless `overwrite`); `begin` removes
    stale siblings and makes the staging directory, `path`; `discard` removes it.
    """

    def __init__(self, output: str, overwrite: bool = False) -> None:
        self.output = checked_output(output, overwrite)
        self.path: Optional[str] = None

    def begin(self) -> str:
        """Make the staging directory; returns its path."""
        os.makedirs(os.path.dirname(self.output), exist_ok=True)
        remove_stale_siblings(self.output)
        self.path = sibling_directory(self.output, "building")
        return self.path

    def discard(self) -> None:
        """Remove the staging directory and what it holds, unless it was moved into place."""
        if self.path is not None and os.path.lexists(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def file_records(self) -> Dict[str, Dict[str, Any]]:
        """{file name: {"sha256", "bytes"}} of every file in the staging directory but hidden ones."""
        return {name: file_record(os.path.join(self.path, name))
                for name in sorted(os.listdir(self.path)) if not name.startswith(".")}

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Write MANIFEST_NAME, plainly opened: its mode is the umask's, which the move gives every file."""
        with open(os.path.join(self.path, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")


def move_bundle_into_place(staging: str, output: str) -> None:
    """Rename the finished staging directory (holding MANIFEST_NAME) to `output`; an old bundle
    there is moved aside first and deleted only after the new one is in place."""
    # mkdtemp made the directory private (0700), and onnx writes external weights
    # 0600: give every directory and file the mode open() gave the manifest (the
    # umask's), so that a bundle built by one user can be served by another.
    file_mode = os.stat(os.path.join(staging, MANIFEST_NAME)).st_mode & 0o777
    dir_mode = file_mode | (file_mode & 0o444) >> 2
    for directory, subdirectories, files in os.walk(staging):
        for name in subdirectories:
            os.chmod(os.path.join(directory, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(directory, name), file_mode)
    os.chmod(staging, dir_mode)
    old = None
    if os.path.exists(output):
        old = sibling_directory(output, "old")
        os.rmdir(old)
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file_atomically(path: str, data: bytes) -> None:
    """Write `path` through a temporary file renamed over it, with the mode the umask gives."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.getpid()}-{os.urandom(4).hex()}")
        try:
            f = open(tmp, "xb")  # not mkstemp: its files are 0600
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        with f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
