"""What every bench script shares: quiet third-party logging (the figures are the output)."""
from __future__ import annotations

import logging
import os
import warnings


def quiet() -> None:
    """Silence third-party warnings, progress bars and INFO logs; nothing is downloaded (HF_HUB_OFFLINE)."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lightning  # noqa: F401  (importing it resets its loggers' level)
    from transformers.utils import logging as hf_logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
