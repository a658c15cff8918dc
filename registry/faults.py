"""Named crash points for testing what a kill leaves behind (a "failpoint", as in FreeBSD/TiKV).

The registry calls `crash_point("name")` between the steps of every write that matters (registering
a task, writing and registering an adapter version, a shared part, ending a run).  Nothing happens
unless `$CONTINUAL_CRASH_AT` names that point: then the process sends itself SIGKILL (default) or
SIGTERM (`name:TERM`), so tests can show that a kill at any step leaves no version pointing at
missing or partial files.  `name#N` fires at the N-th time the point is passed (default the first).
"""
from __future__ import annotations

import os
import signal

CRASH_ENV = "CONTINUAL_CRASH_AT"

# Every point the registry passes, in the order a registration passes them (tests iterate this).
POINTS = (
    "task.profiled",          # a task's profile run is written, its registered model not yet created
    "run.started",            # a training run exists (RUNNING), nothing trained yet
    "metrics.logged",         # a run logged metrics (after training: its dev/test accuracy)
    "adapter.written",        # the adapter folder is written and hashed in a temporary folder
    "shared.logged",          # the shared part's file is in the run's artifacts
    "shared.registered",      # the shared part's version exists, the task version not yet
    "adapter.file_logged",    # some of the adapter's files are in the run's artifacts, not all
    "adapter.logged",         # every adapter file is in the run's artifacts, no version yet
    "version.registered",     # the version exists, the run is not ended yet
    "run.ended",              # the run is ended (FINISHED), the process has not exited yet
)

_passed: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here if `$CONTINUAL_CRASH_AT` asks for it (a no-op otherwise)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, how = wanted.partition(":")
    point, _, nth = point.partition("#")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] != int(nth or 1):
        return
    os.kill(os.getpid(), signal.SIGTERM if how.upper() == "TERM" else signal.SIGKILL)
