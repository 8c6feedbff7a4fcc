"""report.md and pareto.png: the export's measurements as a table and as a picture."""

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from tierkit.export.tiers import budget_latency
from tierkit.profile.variants import fastest
from tierkit.utils.files import atomic_write

TIER_COLOURS = {"highend": "tab:blue", "midrange": "tab:orange", "lowend": "tab:green"}
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "D"}


def _check_cell(variant: dict) -> str:
    failed = [name for name, passed in variant["checks"].items() if not passed]
    return "pass" if not failed else "fail: " + ", ".join(failed)


def _ms(value: float) -> str:
    return f"{value:.4f}"


def _ships_cell(variant: dict) -> str:
    """'yes' for the tier's pick, 'for <classes>' for a stand-in on CPU classes where the pick is not exact."""
    if variant.get("ships"):
        return "yes"
    if variant.get("ships_for"):
        return "for " + ", ".join(variant["ships_for"])
    return "no"


def _cpu_class_lines(variants: list[dict]) -> list[str]:
    """INT8 accuracy on every CPU class, from the manifest's accuracy_by_cpu (emulated figures marked *)."""
    int8 = [v for v in variants if v.get("accuracy_by_cpu") and v["precision"] == "int8"]
    if not int8:
        return []
    classes = list(int8[0]["accuracy_by_cpu"])
    lines = [
        "",
        "## INT8 accuracy on each CPU class",
        "",
        "Full-range (8-bit) weights saturate on x86 without VNNI; 7-bit weights are exact everywhere. "
        "\\* emulated with tierkit.quant.kernel_emulation; the rest measured in ONNX Runtime here.",
        "",
        "| variant | weight bits | exact on | " + " | ".join(classes) + " |",
        "|---|---:|---|" + "---:|" * len(classes),
    ]
    for v in int8:
        cells = [
            f"{100 * v['accuracy_by_cpu'][c]['accuracy']:.2f}%"
            + ("\\*" if v["accuracy_by_cpu"][c].get("how") == "emulated" else "")
            for c in classes
        ]
        lines.append(
            f"| {v['name']} | {v.get('weight_bits', '')} | {', '.join(v.get('cpu_classes', []))} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def render_report(manifest: dict) -> str:
    """Markdown: the variants against their budgets, every measured setting, and where the time goes."""
    teacher, variants = manifest["teacher"], manifest["variants"]
    plot_hardware = manifest["profiling"]["plot_hardware"]
    lines = [
        "# tierkit export",
        "",
        f"Created {manifest['created']} on {manifest['provenance']['cpu']['model']} "
        f"({manifest['provenance']['cpu']['cores']} cores), commit {manifest['provenance']['git_commit']}.",
        f"Accuracy is measured in ONNX Runtime on the test split; drops are against the teacher's FP32 model "
        f"({100 * teacher['accuracy']:.2f}%).",
        "",
        "## Variants",
        "",
        "| variant | ships | accuracy | drop (points) | size | params | MACs | budget p50 (ms) | best setting | "
        "best p50 (ms) | throughput (/s) | peak memory | budgets | why |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for v in [teacher, *variants]:
        best = fastest(v["latency"])
        budget = f"{_ms(budget_latency(v)['p50_ms'])} ({v['budget_hardware']})" if "budget_hardware" in v else ""
        memory = f"{v['peak_memory_mib']:.1f} MiB" if v.get("peak_memory_mib") is not None else "n/a"
        lines.append(
            f"| {v['name']} | {_ships_cell(v)} | {100 * v['accuracy']:.2f}% | "
            f"{-100 * v.get('accuracy_drop', 0):+.2f} | {v['bytes'] / 1024:.1f} KiB | {v['params']:,} | "
            f"{v['macs']:,} | {budget} | {best['hardware']} {best['graph_optimization_level']} | "
            f"{_ms(best['p50_ms'])} | "
            f"{best['throughput_per_s']:,.0f} | {memory} | {_check_cell(v) if 'checks' in v else ''} | "
            f"{v.get('why', '')} |"
        )
    lines += _cpu_class_lines(variants)
    settings = [(row["hardware"], row["graph_optimization_level"]) for row in teacher["latency"]]
    lines += [
        "",
        "## Batch-1 latency p50 / p99 (ms) under every setting",
        "",
        "| variant | " + " | ".join(f"{h} {level.removeprefix('ORT_').lower()}" for h, level in settings) + " |",
        "|---|" + "---:|" * len(settings),
    ]
    for v in [teacher, *variants]:
        cells = [f"{_ms(row['p50_ms'])} / {_ms(row['p99_ms'])}" for row in v["latency"]]
        lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    lines += ["", "## Where the time goes (ONNX Runtime operator profile, best setting)", ""]
    for v in [teacher, *variants]:
        ops = ", ".join(f"{op['op']} {100 * op['share']:.0f}%" for op in v.get("operators", []))
        lines.append(f"- **{v['name']}**: {ops}")
    skipped = manifest["profiling"]["skipped"]
    if skipped:
        lines += ["", "## Settings not measured", ""] + [f"- {note}" for note in skipped]
    lines += ["", f"![accuracy against latency on {plot_hardware}](pareto.png)", ""]
    return "\n".join(lines)


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], -1.0
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def plot_pareto(manifest: dict, path: Path) -> Path:
    """Accuracy against batch-1 latency (marker area ~ file size) for the teacher and every variant."""
    hardware = manifest["profiling"]["plot_hardware"]
    teacher, variants = manifest["teacher"], manifest["variants"]
    biggest = max(v["bytes"] for v in [teacher, *variants])
    figure = Figure(figsize=(8, 5.5), dpi=120)
    axes = figure.add_subplot()
    points = []
    for v in [teacher, *variants]:
        latency, accuracy = fastest(v["latency"], hardware)["p50_ms"], 100 * v["accuracy"]
        points.append((latency, accuracy))
        is_teacher = v is teacher
        axes.scatter(
            latency,
            accuracy,
            s=40 + 900 * v["bytes"] / biggest,
            marker="*" if is_teacher else PRECISION_MARKERS[v["precision"]],
            color="black" if is_teacher else TIER_COLOURS.get(v["tier"], "tab:gray"),
            edgecolors="red" if v.get("ships") else "none",
            linewidths=2,
            alpha=0.75,
            zorder=3,
        )
        if is_teacher or v.get("ships"):  # the rest are told apart by colour and marker
            axes.annotate(v["name"], (latency, accuracy), textcoords="offset points", xytext=(8, 6), fontsize=8)
    front = _pareto_front(points)
    axes.plot(*zip(*front, strict=True), color="gray", linestyle="--", linewidth=1, zorder=1, label="Pareto front")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(f"batch-1 latency p50 on {hardware} (ms, log scale)")
    axes.set_ylabel("test accuracy in ONNX Runtime (%)")
    axes.set_title("tierkit export: accuracy against latency (marker area ~ file size, red edge = ships)")
    handles = [Line2D([], [], marker=m, linestyle="", color="gray", label=p) for p, m in PRECISION_MARKERS.items()] + [
        Line2D([], [], marker="*", linestyle="", color="black", label="teacher")
    ]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=t) for t, c in TIER_COLOURS.items()]
    axes.legend(handles=[*handles, axes.get_lines()[0]], fontsize=7, loc="lower right")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    return path


def write_report(manifest: dict, folder: Path) -> None:
    atomic_write(folder / "report.md", lambda tmp: tmp.write_text(render_report(manifest)))
    plot_pareto(manifest, folder / "pareto.png")
