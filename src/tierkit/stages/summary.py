"""The end-of-run summary tables printed to the terminal."""

from rich.console import Console
from rich.table import Table

from tierkit.run_folder import QuantizationReport, RunMetrics


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_run_summary(metrics: RunMetrics, console: Console | None = None) -> None:
    table = Table(title=f"tierkit run summary (tier: {metrics.tier})")
    for column in ("model", "test acc", "params", "MACs", "FP32 size"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, entry in (("teacher", metrics.teacher), ("student", metrics.student)):
        if entry is None:
            continue
        table.add_row(
            f"{role} ({entry.architecture})",
            _pct(entry.test_acc),
            f"{entry.params:,}",
            f"{entry.macs:,}",
            f"{entry.size_bytes / 1024:.1f} KiB",
        )
    console = console or Console()
    console.print(table)
    teacher = metrics.teacher
    if teacher is not None and teacher.val_acc is not None:
        console.print(
            f"teacher: {_pct(teacher.val_acc)} on validation before distilling "
            f"({teacher.weights_format or 'weights'} from {teacher.source})"
        )
    if metrics.student.agreement is not None:
        console.print(f"student-teacher agreement on test: {_pct(metrics.student.agreement)}")
    if metrics.checkpoints.get("best"):
        console.print(f"best checkpoint: {metrics.checkpoints['best']}")
    if metrics.quantization:
        print_quantization_summary(metrics.quantization, console)
    if metrics.verdict:
        print_verdict(metrics, console)


def print_verdict(metrics: RunMetrics, console: Console) -> None:
    """PASS or MISS for each of the tier's budgets, on the run's best candidate."""
    verdict = metrics.verdict
    table = Table(title=f"tier {metrics.tier} budgets: {verdict.candidate}")
    for column in ("budget", "result", "measured"):
        table.add_column(column)
    for name, check in verdict.checks.items():
        result = {True: "[green]PASS[/green]", False: "[bold red]MISS[/bold red]", None: "not measured"}
        table.add_row(name, result[check["passed"]], check["says"])
    console.print(table)
    console.print(verdict.reason, style="green" if verdict.passed else "bold red")


QUANTIZED_VARIANTS = {
    "fp32": "FP32",
    "fp16": "FP16",
    "ptq": "INT8 post-training",
    "tuned": "INT8 tuned post-training",
    "qat": "INT8 QAT",
}


def print_quantization_summary(report: QuantizationReport, console: Console) -> None:
    """Each precision's ONNX Runtime accuracy and size, then which INT8 path shipped and why."""
    table = Table(title="quantization (ONNX Runtime)")
    for column in ("variant", "val acc", "test acc", "size", "file"):
        table.add_column(column, justify="left" if column in ("variant", "file") else "right")
    for key, label in QUANTIZED_VARIANTS.items():
        entry = getattr(report, key)
        if entry is None:
            continue
        shipped = " (ships)" if key == report.path else ""
        table.add_row(
            label + shipped, _pct(entry.val_acc), _pct(entry.test_acc), f"{entry.bytes / 1024:.1f} KiB", entry.file
        )
    console.print(table)
    if len(report.steps) > 1:
        print_escalation_steps(report, console)
    style = "bold red" if report.budget_met is False else "green"
    console.print(f"INT8 path: {report.path.upper()}: {report.reason}", style=style)
    if report.sensitivity:
        layers = ", ".join(report.sensitive_layers or []) or "none stands out"
        console.print(f"INT8 sensitivity per layer: {report.sensitivity} (sensitive layers: {layers})")
    left_float = report.shipped().float_compute_ops
    if left_float:
        console.print(
            f"{len(left_float)} layer(s) stay float in the shipped INT8 model ({', '.join(left_float)}): "
            "ONNX Runtime found no integer kernel for them",
            style="yellow",
        )


def print_escalation_steps(report: QuantizationReport, console: Console) -> None:
    """Every INT8 candidate the stage measured, cheapest step first, with what it cost in size."""
    table = Table(title="INT8 escalation (validation, against FP32)")
    for column in ("step", "recipe", "val acc", "drop", "size", "budget"):
        table.add_column(column, justify="left" if column in ("step", "recipe") else "right")
    for step in report.steps:
        table.add_row(
            step["step"],
            step["recipe"],
            _pct(step["val_acc"]),
            f"{100 * step['drop']:.2f} pt",
            f"{step['bytes'] / 1024:.1f} KiB",
            "met" if step["meets_budget"] else "missed",
        )
    console.print(table)


def print_finetune_summary(metrics: RunMetrics, console: Console | None = None) -> None:
    """Accuracy on the target device's data and on the original data, before and after fine-tuning."""
    report = metrics.finetune
    table = Table(title=f"tierkit fine-tuning (tier: {metrics.tier}, from {report.source_run})")
    for column in ("test split", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "test split" else "right")
    for key, label in (("target_test_acc", "target device (shifted)"), ("original_test_acc", "original data")):
        before, after = report.before[key], report.after[key]
        table.add_row(label, _pct(before), _pct(after), f"{100 * (after - before):+.2f} points")
    console = console or Console()
    console.print(table)
    if report.recovered_fraction is not None:
        console.print(
            f"the shift cost {report.shift_cost_points:.2f} points; fine-tuning won back "
            f"{report.regained_points:.2f} ({100 * report.recovered_fraction:.0f}%)"
        )
    console.print(f"structure and quantization unchanged: {'yes' if report.structure_unchanged else 'NO'}")
    if metrics.checkpoints.get("best"):
        console.print(f"best checkpoint: {metrics.checkpoints['best']} (python export.py run=<this run> exports it)")
    if metrics.quantization:
        print_quantization_summary(metrics.quantization, console)
    if metrics.verdict:
        print_verdict(metrics, console)
