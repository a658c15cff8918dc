"""Kills at every step of training and registration never leave a version pointing at missing or partial
files, and every interrupted command exits non-zero (SIGTERM: 143 with one line, run KILLED).

Each case forks a `continual` command from tests/reliability_driver.py in a fresh copy of a store, with
`$CONTINUAL_CRASH_AT` naming the point where it kills itself (SIGKILL, or SIGTERM handled as a user's
`kill` would be), or with SIGTERM sent from outside once training has started.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from registry import AdapterRegistry
from registry.faults import POINTS

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("reliability_driver.py")
FAST_TRAIN = ["--set", "max_steps=2", "--set", "batch_size=8", "--set", "max_length=32", "--set", "num_threads=1",
              "--set", "eval_batch_size=64"]

# point -> (command, versions a kill there may leave: a point before the version exists leaves none)
TRAIN_POINTS = ["run.started", "fit.step", "metrics.logged", "adapter.written", "adapter.file_logged",
                "adapter.logged", "version.registered", "run.ended"]
SHARED_POINTS = ["shared.logged", "shared.registered"]
AFTER_VERSION = {"version.registered", "run.ended"}


def run_driver(mode: str, payload: dict, timeout: int = 1200, with_stderr: bool = False):
    """The driver's JSON result (and its children's stderr, with `with_stderr`)."""
    proc = subprocess.run([sys.executable, str(DRIVER), mode, json.dumps(payload)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert "@@RESULT@@" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.split("@@RESULT@@", 1)[1])
    return (result, proc.stderr) if with_stderr else result


@pytest.fixture(scope="module")
def template(new_registry, tiny_base_dir):
    reg = new_registry("kill-template", demo_sizes={"train": 32, "dev": 8, "test": 16})
    return reg.local_root


def cases(tiny_base_dir, template: Path, tmp_path: Path, full: bool = True) -> list[dict]:
    train = ["train", "demo-topic", "--store", "{store}", "--base-model", str(tiny_base_dir), *FAST_TRAIN]
    shared = [*train, "--method", "shared-b-lora"]
    register = ["tasks", "register", "newtask", "--train", str(template / "data" / "demo-intent" / "train.jsonl"),
                "--store", "{store}"]
    if not full:  # the default tier's subset: in training, in the upload, around the version, shared parts
        return [{"point": "shared.registered", "signal": "KILL", "argv": shared},
                {"point": "fit.step", "signal": "KILL", "argv": train},
                {"point": "adapter.file_logged", "signal": "KILL", "argv": train},
                {"point": "fit.step", "signal": "TERM", "argv": train},
                {"point": "adapter.logged", "signal": "TERM", "argv": train},
                {"point": "version.registered", "signal": "TERM", "argv": train}]
    out = []
    for sig in ("KILL", "TERM"):
        out += [{"point": p, "signal": sig, "argv": train} for p in TRAIN_POINTS]
        out += [{"point": p, "signal": sig, "argv": shared} for p in SHARED_POINTS]
        out.append({"point": "task.profiled", "signal": sig, "argv": register})
    sequence = tmp_path / "seq.yaml"
    sequence.write_text(json.dumps({
        "name": "killed-seq", "tasks": ["demo-topic", "demo-sentiment"], "method": "lora",
        "base_model": str(tiny_base_dir), "config": {"max_steps": 1, "batch_size": 8, "max_length": 32, "num_threads": 1}}))
    out.append({"point": "external", "signal": "TERM", "argv": ["run", str(sequence), "--store", "{store}"]})
    out.append({"point": "external", "signal": "TERM", "argv": train})
    return out


def check(results: list[dict]) -> None:
    for r in results:
        where = f"{r['argv'][0]} killed at {r['point']} ({r['signal']})"
        state = r["state"]
        if r["signal"] == "KILL":
            assert r["status"] == -9, where
        else:
            assert r["status"] == 143, f"{where}: exit {r['status']}"
        # The invariant: every version that exists verifies (files present, sha256 of each, shared part there).
        assert state["broken"] == [], f"{where}: {state['broken']}"
        trained = [v for v in state["versions"] if v.startswith("demo-topic:")]
        if r["argv"][0] == "train" and r["point"] not in AFTER_VERSION:
            assert trained == [], f"{where}: registered {trained} although killed before the version"
        if r["argv"][0] == "train" and r["point"] in AFTER_VERSION:
            assert trained == ["demo-topic:1"], where
        if r["signal"] == "TERM":
            assert state["runs"].get("RUNNING", 0) == 0, f"{where}: {state['runs']}"
            if r["point"] not in ("run.ended", "task.profiled"):
                assert state["runs"].get("KILLED", 0) >= 1, f"{where}: {state['runs']}"
        if r["point"] == "task.profiled" and r["signal"] == "TERM":  # its profile run is deleted with it
            assert state["runs"] == {"FINISHED": 3}, f"{where}: {state['runs']}"
        for name, s in state["shared"].items():
            # A crash between the shared part and the task version may leave an orphan; it is never "current".
            assert set(s["committed"]) <= set(s["all"])
            if r["point"] == "shared.registered":
                assert s["all"] == [1] and s["committed"] == [], f"{where}: {s}"
        if r["point"] == "task.profiled":
            assert "newtask" not in state["tasks"], where


@pytest.mark.slow
def test_kill_at_every_point(template, tiny_base_dir, tmp_path, new_store):
    all_cases = cases(tiny_base_dir, template, tmp_path)
    all_cases.append({"point": "external", "signal": "TERM", "argv": ["demo", "--store", "{store}"],
                      "template": "empty"})
    results = run_driver("kill", {"template": str(template), "work": str(tmp_path), "cases": all_cases,
                                  "preload_profiler": True, "empty_template": str(new_store("empty"))})
    check(results)
    points = {r["point"] for r in results}
    assert len(points) >= 10 and set(POINTS) <= points | {"external"}
    print(f"\n{len(results)} kills at {len(points)} points: " + ", ".join(
        f"{r['argv'][0]}@{r['point']}:{r['signal']}={r['status']} ({r['seconds']}s)" for r in results))


def test_kill_at_some_points_then_repair(template, tiny_base_dir, tmp_path):
    """The default tier's subset.  The first case (a kill between the shared part and the task version)
    leaves an orphan that `current` never picks and `verify --repair` removes; then the store verifies clean."""
    import time

    from registry.verify import ORPHAN_GRACE_S, verify_store

    results = run_driver("kill", {"template": str(template), "work": str(tmp_path),
                                  "cases": cases(tiny_base_dir, template, tmp_path, full=False)})
    check(results)
    assert len(results) == 6
    reg = AdapterRegistry(tmp_path / "case-0")
    assert verify_store(reg).ok  # too young to call an orphan: could be a registration in progress
    late = verify_store(reg, now=time.time() + ORPHAN_GRACE_S + 1)
    assert [p.what.split(" (")[0] for p in late.problems] == ["no task version records this shared version"]
    fixed = verify_store(reg, repair=True, now=time.time() + ORPHAN_GRACE_S + 1)
    assert fixed.ok and reg.shared_versions("shared-b-lora--default") == []
    assert verify_store(reg).problems == []
