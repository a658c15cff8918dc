"""Concurrent writers: processes training into one store (SQLite, and a real `mlflow server`), racing
registrations of one task name and of the first version of one share group.

The processes are forked by tests/reliability_driver.py and start at the same instant."""
from __future__ import annotations

import dataclasses

import pytest

from test_mlflow_server import server  # noqa: F401  (the module-scoped fixture: a real server on a free port)
from test_reliability_kill import run_driver


def assert_trained(result: dict, task: str, n: int) -> None:
    state = result["state"]
    assert result["statuses"] == [0] * len(result["statuses"]), result
    versions = [v for v in state["versions"] if v.startswith(f"{task}:")]
    assert sorted(versions, key=lambda v: int(v.split(":")[1])) == [f"{task}:{i}" for i in range(1, n + 1)]
    assert state["broken"] == [] and state["verify_problems"] == []
    assert state["runs"].get("FAILED", 0) == 0 and state["runs"].get("RUNNING", 0) == 0


@pytest.fixture
def store_with_task(new_registry):
    reg = new_registry("concurrent", demo_sizes={"train": 32, "dev": 8, "test": 16})
    return reg.local_root


@pytest.mark.slow
def test_two_processes_train_into_one_sqlite_store(store_with_task, tiny_base_dir):
    """2 processes x 2 trainings give versions 1-4, none duplicated, none failed."""
    result = run_driver("concurrent", {"store": str(store_with_task), "task": "demo-topic", "processes": 2,
                                       "each": 2, "base": str(tiny_base_dir)})
    assert_trained(result, "demo-topic", 4)


@pytest.mark.slow
def test_four_processes_three_trainings_sqlite(store_with_task, tiny_base_dir):
    result = run_driver("concurrent", {"store": str(store_with_task), "task": "demo-topic", "processes": 4,
                                       "each": 3, "base": str(tiny_base_dir)})
    assert_trained(result, "demo-topic", 12)


@pytest.mark.slow
def test_four_clients_three_trainings_mlflow_server(server, tiny_base_dir, tmp_path):  # noqa: F811
    from registry import AdapterRegistry
    from tasks.demo import write_demo_suite

    reg = AdapterRegistry(server)
    spec = write_demo_suite(tmp_path / "data", sizes={"train": 32, "dev": 8, "test": 16})[0]
    reg.register_task(dataclasses.replace(spec, name="served"), embed=False)
    result = run_driver("concurrent", {"store": server, "task": "served", "processes": 4, "each": 3,
                                       "base": str(tiny_base_dir)})
    assert_trained(result, "served", 12)


def test_racing_registrations_of_one_task_name(new_store):
    """One task; every loser exits 1 with one line naming the task, and leaves no run behind."""
    store = new_store("race-task")
    result, stderr = run_driver("race-task", {"store": str(store), "processes": 3, "preload_profiler": True},
                                with_stderr=True)
    assert sorted(result["statuses"]) == [0, 1, 1], result
    assert result["tasks"] == ["raced"]
    assert result["runs"] == [["register-raced", "FINISHED"]]  # the losers' profile runs are deleted
    assert stderr.count("error: task name 'raced' is already registered as a task") == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "MlflowException" not in stderr


@pytest.mark.slow
def test_racing_first_versions_of_one_share_group(store_with_task, tiny_base_dir):
    """Three tasks register the first versions of one new share group at once: one shared part, three
    versions of it, each recorded by exactly one task version."""
    tasks = ["demo-topic", "demo-sentiment", "demo-intent"]
    result = run_driver("race-shared", {"store": str(store_with_task), "tasks": tasks, "base": str(tiny_base_dir)})
    state = result["state"]
    assert result["statuses"] == [0, 0, 0], result
    assert sorted(state["versions"]) == sorted(f"{t}:1" for t in tasks) and state["broken"] == []
    assert state["shared"] == {"shared-b-lora--default": {"all": [1, 2, 3], "committed": [1, 2, 3]}}
    assert state["verify_problems"] == []
