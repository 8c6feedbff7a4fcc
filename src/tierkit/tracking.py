"""Experiment tracking beyond Lightning's own metrics: each stage's results, and Weights & Biases extras.

Every logger gets each stage's numbers (``student/``, ``teacher/``, ``quantization/``, ``finetune/``, ``verdict/``).
A W&B run also gets a results table, the run's ONNX files and INT8 sensitivity report as an artifact (the report's
chart as an image) and its summary strings (which INT8 path shipped and why). ``python export.py
wandb.enabled=true`` logs one run per export. wandb is imported only when a W&B run exists, so runs without it
never pay for the import.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from tierkit.export.tiers import budget_latency
from tierkit.profile.variants import fastest
from tierkit.run_folder import RunFolder, RunMetrics

# The sections of metrics.json that hold a stage's results (pruning steps are logged as they happen).
STAGE_SECTIONS = ("student", "teacher", "quantization", "finetune", "verdict")
RESULT_COLUMNS = (
    "stage",
    "tier",
    "seed",
    "architecture",
    "params",
    "macs",
    "size_bytes",
    "test_acc",
    "teacher_test_acc",
    "fp32_onnx_bytes",
    "fp32_onnx_test_acc",
    "fp16_onnx_bytes",
    "fp16_onnx_test_acc",
    "int8_path",
    "int8_bytes",
    "int8_test_acc",
    "int8_budget_met",
)
EXPORT_COLUMNS = (
    "variant",
    "tier",
    "precision",
    "ships",
    "accuracy",
    "accuracy_drop",
    "bytes",
    "params",
    "macs",
    "budget_hardware",
    "budget_p50_ms",
    "best_setting",
    "best_p50_ms",
    "throughput_per_s",
    "peak_memory_mib",
    "why",
)


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}/{key}")
    elif isinstance(value, bool | int | float | str):
        yield prefix, value


def stage_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every number and string of the stage sections as flat names: ``quantization/ptq/test_acc``, ..."""
    return {name: value for section in STAGE_SECTIONS for name, value in _leaves(metrics.get(section), section)}


def log_stage_metrics(loggers: Sequence[Logger], metrics: dict[str, Any]) -> None:
    """Log each stage's numbers to every logger (CSV, TensorBoard, W&B) and write them out."""
    numbers = {name: float(value) for name, value in stage_values(metrics).items() if not isinstance(value, str)}
    for logger in loggers:
        logger.log_metrics(numbers)
        logger.save()


def results_row(metrics: RunMetrics) -> dict[str, Any]:
    """One row of the results table: the student, each ONNX precision and the INT8 model that shipped."""
    student, quantization = metrics.student, metrics.quantization
    precisions = {key: getattr(quantization, key) if quantization else None for key in ("fp32", "fp16")}
    shipped = quantization.shipped() if quantization else None
    return {
        "stage": metrics.stage,
        "tier": metrics.tier,
        "seed": metrics.seed,
        "architecture": student.architecture,
        "params": student.params,
        "macs": student.macs,
        "size_bytes": student.size_bytes,
        "test_acc": student.test_acc,
        "teacher_test_acc": metrics.teacher.test_acc if metrics.teacher else None,
        **{
            f"{precision}_onnx_{key}": getattr(scores, key) if scores else None
            for precision, scores in precisions.items()
            for key in ("bytes", "test_acc")
        },
        "int8_path": quantization.path if quantization else None,
        "int8_bytes": shipped.bytes if shipped else None,
        "int8_test_acc": shipped.test_acc if shipped else None,
        "int8_budget_met": quantization.budget_met if quantization else None,
    }


def log_run_results(loggers: Sequence[Logger], metrics: RunMetrics, folder: RunFolder) -> None:
    """A finished run's results: stage metrics to every logger; table, summary and ONNX artifact to W&B."""
    data = metrics.to_dict()
    log_stage_metrics(loggers, data)
    runs = [logger.experiment for logger in loggers if isinstance(logger, WandbLogger)]
    if not runs:
        return
    import wandb

    run, row = runs[0], results_row(metrics)
    run.summary.update(stage_values(data))
    run.log({"results": wandb.Table(columns=list(RESULT_COLUMNS), data=[[row[c] for c in RESULT_COLUMNS]])})
    chart = folder.quantization / "sensitivity.png"
    if chart.is_file():
        run.log({"quantization/sensitivity": wandb.Image(str(chart))})
    files = sorted(folder.quantization.glob("*.onnx")) + sorted(folder.quantization.glob("sensitivity.*"))
    if files:
        artifact = wandb.Artifact(f"{row['stage']}-{row['tier']}-onnx", type="model", metadata=row)
        for file in files:
            artifact.add_file(str(file), name=file.name)
        run.log_artifact(artifact)


def export_row(entry: dict[str, Any]) -> list[Any]:
    """One row of the export table for the teacher or a variant of the manifest."""
    best = fastest(entry["latency"])
    row = {
        "variant": entry["name"],
        "tier": entry.get("tier", "teacher"),
        "precision": entry["precision"],
        "ships": entry.get("ships"),
        "accuracy": entry["accuracy"],
        "accuracy_drop": entry.get("accuracy_drop"),
        "bytes": entry["bytes"],
        "params": entry["params"],
        "macs": entry["macs"],
        "budget_hardware": entry.get("budget_hardware"),
        "budget_p50_ms": budget_latency(entry)["p50_ms"] if "budget_hardware" in entry else None,
        "best_setting": f"{best['hardware']} {best['graph_optimization_level']}",
        "best_p50_ms": best["p50_ms"],
        "throughput_per_s": best["throughput_per_s"],
        "peak_memory_mib": entry.get("peak_memory_mib"),
        "why": entry.get("why"),
    }
    return [row[c] for c in EXPORT_COLUMNS]


def runs_group(configs: Sequence[DictConfig]) -> str | None:
    """The W&B group the exported runs logged to (their sweep's), when they all logged to one."""
    groups = {OmegaConf.select(config, "logger.wandb.group") for config in configs}
    return groups.pop() if len(groups) == 1 else None


def log_export(
    manifest: dict[str, Any], out: Path, settings: DictConfig, config: dict[str, Any], group: str | None
) -> None:
    """One W&B run for an export: the variants table, pareto.png, and every file of the set as one artifact."""
    import wandb

    files = ["manifest.json", "report.md", "pareto.png"]
    files += [entry["file"] for entry in [manifest["teacher"], *manifest["variants"]]]
    hardware = manifest["profiling"]["plot_hardware"]
    Path(settings.dir).mkdir(parents=True, exist_ok=True)
    with wandb.init(
        project=settings.project,
        name=settings.name or f"export-{out.name}",
        group=settings.group or group,
        job_type="export",
        dir=str(settings.dir),
        mode="offline" if settings.offline else "online",
        config=config,
    ) as run:
        rows = [export_row(entry) for entry in [manifest["teacher"], *manifest["variants"]]]
        plot = wandb.Image(str(out / "pareto.png"), caption=f"accuracy against latency on {hardware}")
        run.log({"variants": wandb.Table(columns=list(EXPORT_COLUMNS), data=rows), "pareto": plot})
        run.summary.update({f"ships/{v['tier']}": v["name"] for v in manifest["variants"] if v["ships"]})
        artifact = wandb.Artifact("export", type="model", metadata={"schema_version": manifest["schema_version"]})
        for file in files:
            artifact.add_file(str(out / file), name=file)
        run.log_artifact(artifact)
