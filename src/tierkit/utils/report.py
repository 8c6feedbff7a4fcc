"""The end-of-run summary table printed to the terminal."""

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_run_summary(metrics: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"tierkit run summary (tier: {metrics.get('tier', '-')})")
    for column in ("model", "test acc", "params", "MACs", "FP32 size"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role in ("teacher", "student"):
        entry = metrics.get(role)
        if not entry:
            continue
        table.add_row(
            f"{role} ({entry.get('architecture', '?')})",
            _pct(entry.get("test_acc")),
            f"{entry['params']:,}",
            f"{entry['macs']:,}",
            f"{entry['size_bytes'] / 1024:.1f} KiB",
        )
    console = console or Console()
    console.print(table)
    student = metrics.get("student", {})
    if student.get("agreement") is not None:
        console.print(f"student-teacher agreement on test: {_pct(student['agreement'])}")
    if metrics.get("checkpoints", {}).get("best"):
        console.print(f"best checkpoint: {metrics['checkpoints']['best']}")
