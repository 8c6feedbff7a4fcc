"""Device fine-tuning: how much of the accuracy a device shift costs the compressed lowend model comes back.

    python -m benchmarks.finetune [--run outputs/DATE/TIME] [-- overrides...]

Without --run it first trains `python train.py tier=lowend` with the overrides (about 2 minutes on 2 cores on
mnist5k). Then it fine-tunes that run on its own data through `shift=camera` twice, on the labels alone and with
the teacher still distilling, and compares accuracy before and after on the shifted and the original test split.
It also checks that the tuned student keeps its structure and that its INT8 ONNX model has the same graph as the
source's. Writes benchmarks/results/finetune.{json,md} and benchmarks/results/finetune_shift.png (what the shift
looks like), named finetune_<data> when the run was trained on other data than the default.
"""

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import hydra
import onnx
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from benchmarks.common import (
    RESULTS,
    SCRATCH_STUDENT,
    data_option,
    data_overrides_of,
    describe,
    results_name,
    save_results,
)
from benchmarks.common import run_command as run
from tierkit.conf import CONFIG_DIR
from tierkit.onnxio.verify import float_compute_ops
from tierkit.run_folder import RunFolder

VARIANTS = {"labels alone (alpha 0)": "finetune.alpha=0.0", "with the teacher (alpha 0.5)": "finetune.alpha=0.5"}


def graph_signature(path: Path) -> list[tuple]:
    """Operator types in order and every initializer's type and shape: equal signatures, equal INT8 graphs."""
    graph = onnx.load(str(path)).graph
    return [tuple(node.op_type for node in graph.node), sorted((i.data_type, tuple(i.dims)) for i in graph.initializer)]


def save_shift_preview(path: Path, data_overrides: list[str]) -> None:
    """Eight test images of the run's data as trained on (top) and as the camera shift delivers them (bottom)."""
    figure = Figure(figsize=(8, 2.3), dpi=100)
    for row, overrides in enumerate((data_overrides, [*data_overrides, "shift=camera"])):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        data = hydra.utils.instantiate(cfg.data)
        data.setup()
        images = data.splits["test"].images[:8] * data.std + data.mean
        for i, image in enumerate(images):
            axes = figure.add_subplot(2, 8, row * 8 + i + 1)
            axes.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            axes.axis("off")
    name = data_option(data_overrides) or "mnist5k"
    figure.suptitle(f"{name} test images: as trained on (top) and through shift=camera (bottom)", fontsize=9)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished lowend run to fine-tune instead of training one")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the lowend run this trains (not with --run)")
    args = parser.parse_args()
    if args.run and args.overrides:
        parser.error("overrides go to the lowend run this benchmark trains; an existing --run was trained already")
    scratch = Path(tempfile.mkdtemp(prefix="tierkit-bench-finetune-"))
    source = args.run or scratch / "lowend"
    if args.run is None:
        run(
            [
                sys.executable,
                "train.py",
                "tier=lowend",
                SCRATCH_STUDENT,
                *args.overrides,
                f"hydra.run.dir={source}",
                "~callbacks.progress",
            ]
        )
    # Fine-tuning reads the device's data from its own command line: the source's data, shifted.
    data = data_overrides_of(source)
    source_int8 = RunFolder(source).quantization / "int8_ptq.onnx"
    # Layers the source left in float on purpose (quantization.float_first_layer) must stay float, and no others.
    source_float_ops = float_compute_ops(source_int8)
    rows = []
    for label, override in VARIANTS.items():
        tuned = scratch / label.split()[0]
        finetune = ["stage=finetune", f"from_run={source}", *data, "shift=camera", override]
        run([sys.executable, "train.py", *finetune, f"hydra.run.dir={tuned}", "~callbacks.progress"])
        metrics = RunFolder(tuned).read_metrics()
        tuned_int8 = RunFolder(tuned).quantization / "int8_ptq.onnx"
        rows.append(
            {
                "variant": label,
                **asdict(metrics.finetune),
                "params": metrics.student.params,
                "int8_graph_unchanged": graph_signature(tuned_int8) == graph_signature(source_int8),
                "int8_float_compute_ops": float_compute_ops(tuned_int8),
                "int8_bytes": tuned_int8.stat().st_size,
            }
        )
    first = rows[0]
    trained_as = (
        f"the lowend run in `{args.run}`, {' '.join(data) or 'default data'}"
        if args.run
        else f"`{' '.join(['python train.py tier=lowend', SCRATCH_STUDENT, *args.overrides])}`"
    )
    lines = [
        f"Machine: {describe()}",
        "",
        f"Source: {trained_as} ({first['params']:,} params); shift: `shift=camera` "
        f"({', '.join(f'{k}={v}' for k, v in first['shift'].items() if k != 'seed')}); 5 epochs of fine-tuning.",
        "",
        "| fine-tuning | shifted test before | shifted test after | recovered | original test before | "
        "original test after | structure unchanged | INT8 graph unchanged |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        before, after = row["before"], row["after"]
        lines.append(
            f"| {row['variant']} | {100 * before['target_test_acc']:.2f}% | {100 * after['target_test_acc']:.2f}% | "
            f"{100 * row['recovered_fraction']:.0f}% of {row['shift_cost_points']:.1f} points | "
            f"{100 * before['original_test_acc']:.2f}% | {100 * after['original_test_acc']:.2f}% | "
            f"{'yes' if row['structure_unchanged'] else 'NO'} | "
            f"{'yes' if row['int8_graph_unchanged'] and row['int8_float_compute_ops'] == source_float_ops else 'NO'} |"
        )
    name = results_name("finetune", data)
    save_shift_preview(RESULTS / f"{name}_shift.png", data)
    save_results(name, {"source": str(source), "source_float_compute_ops": source_float_ops, "rows": rows}, lines)


if __name__ == "__main__":
    main()
