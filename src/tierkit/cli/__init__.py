"""Command-line entry points (train.py and export.py at the repository root call these)."""
