"""The export stage: finished runs turned into a deployable set.

One verified ONNX variant per tier and precision (two INT8 weight ranges), profiled under every hardware setting,
checked against the tier's budgets, and described in manifest.json (with report.md and pareto.png) for
`tierkit.runtime`.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tierkit.conf import CONFIG_DIR
from tierkit.conf.validate import validate_export_config
from tierkit.errors import TierkitError
from tierkit.export.manifest import complete_manifest, provenance
from tierkit.export.measure import measure
from tierkit.export.report import write_report
from tierkit.export.summary import print_summary
from tierkit.export.tiers import choose_shipping
from tierkit.export.variants import (
    export_teacher,
    export_variants,
    find_runs,
    int8_weight_bits,
    load_runs,
)
from tierkit.profile import ort_session
from tierkit.tracking import log_export, runs_group
from tierkit.utils.files import write_json

# Where the code came from, for the manifest's git commit (an installed copy has none).
REPO_DIR = Path(__file__).resolve().parents[3]
HARDWARE_DIR = CONFIG_DIR / "hardware"


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export, measure and describe every run; returns the manifest that was written."""
    validate_export_config(cfg)
    out = Path(cfg.output_dir)
    if (out / "manifest.json").exists():
        raise TierkitError(
            f"{out} already holds an export (manifest.json); writing into it would change files it describes",
            where="output_dir",
            fix="pass a new output_dir, or delete the old export first",
        )
    cfg.int8_weight_bits, cfg.reduce_range = int8_weight_bits(cfg), None
    runs = load_runs(find_runs(cfg), cfg.checkpoint)
    shape = list(runs[0].config.data.input_shape)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
    with progress:
        task = progress.add_task("Exporting runs to ONNX", total=len(runs) + 1)
        teacher = export_teacher(runs, out)
        progress.advance(task)
        variants = []
        for run in runs:
            variants += export_variants(run, cfg, out, run.name)
            progress.advance(task)
        entries = {"teacher": teacher, **{v["name"]: v for v in variants}}
        files = {name: out / entry["file"] for name, entry in entries.items()}
        skipped = measure(files, entries, shape, cfg, HARDWARE_DIR, progress)
    choose_shipping(variants, teacher["accuracy"], cfg.ship_latency_tolerance)
    input_name = ort_session(files["teacher"]).get_inputs()[0].name
    measured_hardware = [row["hardware"] for row in teacher["latency"]]
    plot_hardware = cfg.profiling.plot_hardware
    body = {
        "provenance": provenance(REPO_DIR, [run.config.get("seed") for run in runs]),
        "input": {"name": input_name, "shape": shape, "dtype": "float32"},
        "num_classes": int(runs[0].config.data.num_classes),
        "teacher": teacher,
        "variants": variants,
        "profiling": {
            **OmegaConf.to_container(cfg.profiling),
            "skipped": skipped,
            "plot_hardware": plot_hardware if plot_hardware in measured_hardware else measured_hardware[0],
            "accuracy_reference": "teacher fp32 in ONNX Runtime, test split",
        },
    }
    manifest = complete_manifest(body, out / "manifest.json")
    write_report(manifest, out)
    write_json(out / "manifest.json", manifest)
    print_summary(manifest, out)
    if cfg.wandb.enabled:
        config = OmegaConf.to_container(cfg, resolve=True)
        log_export(manifest, out, cfg.wandb, config, runs_group([run.config for run in runs]))
    return manifest
