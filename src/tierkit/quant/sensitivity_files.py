"""A layer sensitivity report as files: JSON for tools, Markdown for people, a chart for a glance."""

import json
from pathlib import Path

from matplotlib.figure import Figure

from tierkit.quant.layer_analysis import LayerSensitivity, SensitivityReport
from tierkit.utils.files import atomic_write

# A layer is sensitive when quantizing it alone, or leaving it in float, moves validation accuracy by at least this
# much, and by at least SHARE of what INT8 costs the whole model.
NOTICEABLE = 0.005
SHARE = 0.25


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}".replace("-0.00", "+0.00")


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def sensitive_layers(report: SensitivityReport) -> list[LayerSensitivity]:
    """The layers worth a look: quantizing them alone, or leaving them in float, moves accuracy noticeably."""
    threshold = max(NOTICEABLE, SHARE * (report.float_val_acc - report.int8_val_acc))
    return [entry for entry in report.ranked() if max(entry.gain_left_float or 0, entry.drop_alone or 0) >= threshold]


def headline(report: SensitivityReport) -> str:
    drop = 100 * (report.float_val_acc - report.int8_val_acc)
    sensitive = sensitive_layers(report)
    if not sensitive:
        return f"INT8 costs {drop:.2f} points on validation; no layer is sensitive on its own"
    names = ", ".join(entry.layer for entry in sensitive[:3])
    return f"INT8 costs {drop:.2f} points on validation; most sensitive: {names}"


def markdown(report: SensitivityReport) -> str:
    lines = [
        f"# Quantization sensitivity: {report.model}",
        "",
        f"Validation accuracy: float {100 * report.float_val_acc:.2f}%, INT8 {100 * report.int8_val_acc:.2f}%. "
        f"Settings: {', '.join(f'{k}={v}' for k, v in report.settings.items())}.",
        "",
        headline(report) + ".",
        "",
        "Ranked, most sensitive first. SQNR in dB (higher is cleaner); accuracy effects in validation points: "
        "*alone* is the change when only this layer is INT8, *left in float* the change when every other layer is.",
        "",
        "| rank | layer | module | op | weight shape | weight SQNR | output SQNR | alone | left in float |",
        "|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    for rank, entry in enumerate(report.ranked(), start=1):
        shape = "x".join(map(str, entry.weight_shape))
        lines.append(
            f"| {rank} | {entry.layer} | {entry.module or '-'} | {entry.op_type} | {shape} | "
            f"{_db(entry.weight_sqnr_db)} | {_db(entry.output_sqnr_db)} | "
            f"{_points(None if entry.drop_alone is None else -entry.drop_alone)} | {_points(entry.gain_left_float)} |"
        )
    return "\n".join(lines) + "\n"


def chart(report: SensitivityReport, path: Path) -> None:
    """Output SQNR per layer in graph order beside the accuracy each layer wins back in float."""
    layers = report.layers
    labels = [entry.layer for entry in layers]
    figure = Figure(figsize=(max(6, 0.5 * len(layers) + 2), 6))
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.bar(labels, [entry.output_sqnr_db or 0 for entry in layers], color="tab:blue", label="output")
    top.plot(labels, [entry.weight_sqnr_db or 0 for entry in layers], "o", color="tab:orange", label="weights")
    top.set_ylabel("SQNR (dB)")
    top.legend(loc="lower left")
    top.set_title(headline(report), fontsize=9)
    gains = [100 * (entry.gain_left_float or 0) for entry in layers]
    drops = [-100 * (entry.drop_alone or 0) for entry in layers]
    positions = range(len(layers))
    bottom.bar([p - 0.2 for p in positions], gains, width=0.4, color="tab:green", label="left in float")
    bottom.bar([p + 0.2 for p in positions], drops, width=0.4, color="tab:red", label="quantized alone")
    bottom.axhline(0, color="black", linewidth=0.5)
    if all(entry.drop_alone is None for entry in layers):
        note = "accuracy effects not measured (quantization.sensitivity.accuracy_effects)"
        bottom.text(0.5, 0.5, note, transform=bottom.transAxes, ha="center", va="center", fontsize=9)
    bottom.set_ylabel("validation points")
    bottom.legend(loc="lower left")
    bottom.tick_params(axis="x", labelrotation=60)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def write_sensitivity(report: SensitivityReport, folder: Path, stem: str = "sensitivity") -> dict[str, Path]:
    """``<folder>/<stem>.json``, ``.md`` and ``.png``, each written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {suffix: folder / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}
    atomic_write(paths["json"], lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n"))
    atomic_write(paths["md"], lambda tmp: tmp.write_text(markdown(report)))
    chart(report, paths["png"])
    return paths
