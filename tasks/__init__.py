"""Tasks: what a task is and how its data is read, checked and fingerprinted.

The bottom layer of the project: it imports nothing from ``registry`` or ``continual`` and no
torch or mlflow, so anything may use it.
"""

from tasks.demo import DEMO_TASKS, write_demo_suite
from tasks.errors import ContinualError, ContinualWarning, TaskError
from tasks.fingerprint import data_fingerprint
from tasks.loaders import Example, build_spec, load_split, read_records
from tasks.spec import SPLITS, TASK_KINDS, TaskSpec, validate_task_name

__all__ = [
    "DEMO_TASKS",
    "SPLITS",
    "TASK_KINDS",
    "ContinualError",
    "ContinualWarning",
    "Example",
    "TaskError",
    "TaskSpec",
    "build_spec",
    "data_fingerprint",
    "load_split",
    "read_records",
    "validate_task_name",
    "write_demo_suite",
]
