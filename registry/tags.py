"""The registry's vocabulary: the MLflow experiment name and every tag name, in one place.

Values are what stores already hold; a constant's name says what the tag means where it is set.
"""
from __future__ import annotations

EXPERIMENT = "continual"  # the one MLflow experiment every run lives in
# MLflow 3 opens an experiment in its GenAI "Evaluations" view unless told it holds model training.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
RUN_DESCRIPTION = "mlflow.note.content"  # MLflow's own tag: a run's description in the UI

# -- on registered models ------------------------------------------------------------------------
IS_TASK = "continual.task"  # "1": this registered model is a task
SPEC = "continual.spec"  # the TaskSpec as JSON
IS_SHARED_PART = "continual.shared_part"  # "1": this registered model holds versions of a shared part
PROFILE_RUN = "continual.profile_run"  # run whose artifacts hold the task's profile vectors
LEGACY_PROFILE_RUN = "continual.embedding_run"  # the same, in stores written before the rename
TASK_KIND = "kind"  # classification | generation
TASK_LABELS = "labels"  # JSON list of label names
DATA_FINGERPRINT = "data_fingerprint"  # sha256 of the task's data (also on versions)

# -- on adapter versions (model versions of a task) ----------------------------------------------
ADAPTER_KIND = "adapter_kind"  # lora, shared-b-lora, ... (also on training runs)
BASE_MODEL_ID = "base_model_id"
BASE_MODEL_FINGERPRINT = "base_model_fingerprint"
SHARED_PART = "shared_part"  # "<shared model>:<version>" the adapter was trained and evaluated with
PARENT_ADAPTER = "parent_adapter"  # "<task>:<version>" a warm start copied
WARM_START_HEAD = "warm_start_head"  # copied | fresh
INIT_FROM = "init_from"  # what --init-from asked for (auto, a task, none)
BASE_MODIFIED = "base_modified"  # "true": the adapter trained base layers (progressive unfreezing)
UNFREEZE_SCHEDULE = "unfreeze_schedule"
SHA_PREFIX = "sha256."  # sha256.<file name> of every file of the version (config and label map included)
EXPERIMENT_VERSION = "continual.experiment"  # set on versions an experiment (sequence, bench) registered:
#                                             its value names the experiment; "newest" skips these
QUARANTINED = "continual.quarantined"  # set by `continual adapters verify --repair` on a version whose
#                                        files fail verification: the reason; "newest" skips these
METRIC_PREFIX = "metric."  # metric.<name> of the training run's final metrics

# -- on shared-part versions ---------------------------------------------------------------------
TRAINED_WITH_TASK = "trained_with_task"  # the task whose training produced this shared version
PARENT_SHARED = "parent_shared"  # "<shared model>:<version>" the training started from (its lineage)

# -- on runs ---------------------------------------------------------------------------------------
RUN_TASK = "continual.task"  # the task a run trained or registered (comma-joined for joint training)
SEQUENCE = "continual.sequence"  # the sequence a run belongs to
METHOD = "continual.method"  # the sequence's continual-learning method
REGISTERED = "continual.registered"  # "false": the run registered no adapter version
REGISTRATION = "continual.registration"  # how a sequence's versions relate to what it evaluated
TASK_AGNOSTIC = "continual.task_agnostic"  # "true": evaluated without task names (routed)
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own tag for nested runs
