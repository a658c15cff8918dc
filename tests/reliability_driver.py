"""Runs many short jobs in forked children and reports what each left in its store (for test_reliability_*.py).

Importing torch, Lightning and MLflow costs seconds per process; this driver pays it once and forks a
child per job (a `continual` CLI command, or library calls), so a test can kill dozens of jobs at
named points in well under a minute.  Children run single-threaded (OpenMP pools do not survive a
fork).  Usage: `python tests/reliability_driver.py MODE JSON_ARGS` -> one JSON document on stdout.

Modes
  kill        each case runs one CLI command in a fresh copy of a store with `$CONTINUAL_CRASH_AT` set
              (or is sent SIGTERM from outside once it is training); reports exit status and store state.
  concurrent  N children each run M trainings of one task into one store, at the same moment.
  race-task   N children register the same task name at the same moment.
  race-shared N children each train a different task of one new share group at the same moment.
"""
from __future__ import annotations

import time as _time

_STARTED = _time.monotonic()

import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402

torch.set_num_threads(1)

import lightning  # noqa: E402,F401
import continual.cli as cli  # noqa: E402
import continual.trainer as trainer_mod  # noqa: E402
from registry import AdapterRegistry  # noqa: E402
from registry import tags as T  # noqa: E402
from registry.faults import CRASH_ENV, crash_point  # noqa: E402

SENTINEL_ENV = "RELIABILITY_SENTINEL"  # a child touches this file when its first training step is done


def _instrument_training() -> None:
    """Add a callback to every Trainer: a crash point after each training step ("fit.step"), and the
    sentinel file a parent waits for before it sends a signal from outside."""
    from lightning.pytorch.callbacks import Callback

    class StepPoint(Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            sentinel = os.environ.get(SENTINEL_ENV)
            if sentinel and not os.path.exists(sentinel):
                Path(sentinel).write_text(str(os.getpid()))
                time.sleep(30)  # the parent's SIGTERM lands here, in the middle of fit
            crash_point("fit.step")

    original = trainer_mod.build_trainer

    def build_trainer(config, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepPoint()]
        return original(config, **kwargs)

    trainer_mod.build_trainer = build_trainer
    import continual.train

    continual.train.build_trainer = build_trainer


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fn()
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported through the exit status
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid


def _status(wait_status: int) -> int:
    """Exit code, or -signal for a child killed by a signal."""
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def _state(store: "str | Path") -> dict:
    """What a store holds after a job: versions (and whether each verifies), runs by status, shared parts."""
    reg = AdapterRegistry(store)
    versions, broken = [], []
    for spec in reg.tasks():
        for v in reg.versions(spec.name):
            versions.append(v.ref)
            try:
                reg.verified_adapter_dir(v)
                recorded = v.tags.get(T.SHARED_PART)
                if recorded:
                    name, number = recorded.rsplit(":", 1)
                    if reg.store.get_version(name, int(number)) is None:
                        raise RuntimeError(f"shared part {recorded} missing")
            except Exception as err:  # noqa: BLE001 - the finding
                broken.append(f"{v.ref}: {err}")
    runs = {}
    for r in reg.find_runs():
        runs[r.info.status] = runs.get(r.info.status, 0) + 1
    shared = {}
    for m in reg.store.list_models():
        if T.IS_SHARED_PART in m.tags:
            shared[m.name] = {"all": reg.shared_versions(m.name), "committed": reg.shared_versions(m.name, committed=True)}
    report = reg.verify(repair=False)
    return {"versions": versions, "broken": broken, "runs": runs, "shared": shared,
            "tasks": [t.name for t in reg.tasks()],
            "verify_problems": [str(p) for p in report.problems]}


def _cli(argv: list[str], env: dict[str, str]) -> None:
    os.environ.update(env)
    if argv and argv[0] == "demo":  # the demo's own settings train for minutes: one step is enough here
        import continual.demo
        from continual.config import TrainConfig

        continual.demo.run_demo.__defaults__ = (
            TrainConfig(max_steps=2, train_limit=32, max_length=32, num_threads=1), False, None)
    sys.argv = ["continual", *argv]
    cli.main()


def mode_kill(args: dict) -> list[dict]:
    template = Path(args["template"])
    out = []
    for i, case in enumerate(args["cases"]):
        store = Path(args["work"]) / f"case-{i}"
        shutil.copytree(Path(args["empty_template"]) if case.get("template") == "empty" else template, store)
        argv = [a.replace("{store}", str(store)) for a in case["argv"]]
        env = {}
        sentinel = None
        if case["point"] == "external":
            sentinel = store / "training.started"
            env[SENTINEL_ENV] = str(sentinel)
        else:
            env[CRASH_ENV] = f"{case['point']}:{case['signal']}"
        started = time.monotonic()
        pid = _fork(lambda: _cli(argv, env))
        if sentinel is not None:
            deadline = time.monotonic() + 120
            while not sentinel.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            os.kill(pid, signal.SIGTERM)  # from outside, as a scheduler or CI would
        _, wait_status = os.waitpid(pid, 0)
        seconds = round(time.monotonic() - started, 2)
        state = _state(store)
        out.append({**case, "status": _status(wait_status), "seconds": seconds, "state": state,
                    "check_seconds": round(time.monotonic() - started - seconds, 2)})
    return out


def _train_many(store: str, task: str, count: int, base: str, method: str = "lora") -> None:
    from continual.config import TrainConfig
    from continual.train import train_task

    reg = AdapterRegistry(store)
    config = TrainConfig(max_steps=1, batch_size=8, max_length=32, eval_batch_size=64, num_threads=1)
    for _ in range(count):
        result = train_task(reg, task, config, method=method, base_model=base)
        print(json.dumps({"pid": os.getpid(), "version": result.version.ref}), flush=True)


def _start_together(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


def mode_concurrent(args: dict) -> dict:
    at = time.time() + 1.0
    pids = [_fork(lambda: (_start_together(at), _train_many(args["store"], args["task"], args["each"], args["base"])))
            for _ in range(args["processes"])]
    statuses = [_status(os.waitpid(pid, 0)[1]) for pid in pids]
    return {"statuses": statuses, "state": _state(args["store"])}


def mode_race_task(args: dict) -> dict:
    from tasks.demo import write_demo_suite

    spec = [s for s in write_demo_suite(Path(args["store"]) / "data", sizes={"train": 32, "dev": 8, "test": 8})
            if s.name == "demo-topic"][0]
    argv = ["tasks", "register", "raced", "--train", spec.train, "--store", args["store"]]
    at = time.time() + 1.0
    pids = [_fork(lambda: (_start_together(at), _cli(argv, {}))) for _ in range(args["processes"])]
    statuses = [_status(os.waitpid(pid, 0)[1]) for pid in pids]
    reg = AdapterRegistry(args["store"])
    runs = [(r.info.run_name, r.info.status) for r in reg.find_runs()]
    return {"statuses": statuses, "tasks": [t.name for t in reg.tasks()], "runs": runs}


def mode_race_shared(args: dict) -> dict:
    at = time.time() + 1.0
    pids = [_fork(lambda t=t: (_start_together(at), _train_many(args["store"], t, 1, args["base"], "shared-b-lora")))
            for t in args["tasks"]]
    statuses = [_status(os.waitpid(pid, 0)[1]) for pid in pids]
    return {"statuses": statuses, "state": _state(args["store"])}


if __name__ == "__main__":
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    _instrument_training()
    print(f"driver ready after {_time.monotonic() - _STARTED:.1f}s", file=sys.stderr)
    if payload.get("preload_profiler"):  # task registration encodes with the default base: load it once
        from modeling.base_model import load_base_model

        load_base_model()
    result = {"kill": mode_kill, "concurrent": mode_concurrent, "race-task": mode_race_task,
              "race-shared": mode_race_shared}[mode](payload)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
