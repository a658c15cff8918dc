"""Which warnings and log lines reach a person: the project's own warnings always; third-party noise
(deprecations, tips, progress bars, INFO logs) never. The CLI and the bench scripts share this policy."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Callable

# Libraries whose warnings are noise to a user (tips, deprecations, "few dataloader workers").
NOISY_MODULES = r"(lightning|lightning_fabric|lightning_utilities|pytorch_lightning|torch|transformers|peft|mlflow|" \
                r"huggingface_hub|tokenizers|pydantic|alembic|sqlalchemy|faiss|numpy|scipy|sklearn|typer|click)(\..*)?$"
_NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "transformers")


def filter_warnings(show: Callable | None = None) -> None:
    """Silence third-party warnings by category (deprecations) and by module; keep every ContinualWarning.
    `show` replaces how a warning that gets through is printed."""
    from tasks.errors import ContinualWarning

    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=NOISY_MODULES)
    warnings.filterwarnings("default", category=ContinualWarning)  # checked first: the newest filter wins
    if show is not None:
        warnings.showwarning = show


def quiet_libraries(training: bool = False, show: Callable | None = None) -> None:
    """Keep library chatter (Lightning tips, HF progress bars, INFO logs) out of the terminal; the project's
    warnings still reach it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if training:
        import lightning  # noqa: F401  (it sets its loggers' levels on import; override them after)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    filter_warnings(show)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
