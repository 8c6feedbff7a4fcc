"""Structured pruning: whole channels and neurons removed through torch-pruning's dependency graph."""

from tierkit.prune.callback import StructuredPruning
from tierkit.prune.schedules import pruning_schedule

__all__ = ["StructuredPruning", "pruning_schedule"]
