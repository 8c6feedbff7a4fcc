"""Command-line entry points (train.py and export.py at the repository root call these)."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def import_from_working_folder() -> None:
    """Let configs name classes in the folder the command runs in (``model.teacher._target_=mynet.Net`` for a
    ./mynet.py), as ``python -m`` would; train.py's own folder is what Python puts on the path otherwise."""
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)


@contextmanager
def finishing_wandb_run() -> Iterator[None]:
    """Finish the W&B run a job started, failed or not, so the next job of a multirun gets a run of its own."""
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=exit_code)
