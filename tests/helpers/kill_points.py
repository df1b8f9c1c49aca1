"""Deterministic kill points for the fault tests' child processes.

    points = KillPoints(sys.argv[1])          # "NAME#N": SIGKILL at the N-th event NAME; "": never
    points.wrap(os, "replace")               # events "replace" and "replace done" around each call
    ...run the build...; points.events is every event passed, in order

Imported by the child scripts of test_build_faults.py and test_tensorrt_build_faults.py.
"""

import os
import signal
from typing import List


class KillPoints:
    def __init__(self, kill_at: str) -> None:
        self.kill_at = kill_at
        self.events: List[str] = []

    def event(self, name: str) -> None:
        self.events.append(name)
        if self.kill_at == f"{name}#{self.events.count(name)}":
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner, attr: str) -> None:
        """Replace owner.attr by a wrapper that passes the events attr and "attr done" around each call."""
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            self.event(attr)
            result = original(*args, **kwargs)
            self.event(attr + " done")
            return result

        setattr(owner, attr, wrapper)
