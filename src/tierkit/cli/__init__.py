"""Command-line entry points (train.py and export.py at the repository root call these)."""

import os
import sys


def import_from_working_folder() -> None:
    """Let configs name classes in the folder the command runs in (``model.teacher._target_=mynet.Net`` for a
    ./mynet.py), as ``python -m`` would; train.py's own folder is what Python puts on the path otherwise."""
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
