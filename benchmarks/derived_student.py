"""A student derived from the teacher (pruned to the tier's size, keeping the teacher's weights) against today's
width-scaled student trained from scratch, on the same tier, size, epochs and seeds.

    python -m benchmarks.derived_student [--tiers lowend ...] [--seeds 1 2 3] [-- extra overrides...]

For each tier and seed both students distil from the same teacher for the tier's epochs. Reported: parameters,
test accuracy (mean ± sample sd), and the first epoch at which each reaches the scratch student's mean final
validation accuracy: at any size, and counting only epochs after the last pruning step (the model at the tier's
size). Writes benchmarks/results/derived_student.{json,md} (derived_student_<data>.* with a data= override, and
_<tiers> when --tiers names fewer than all three, so a run of one tier never overwrites another's), again after each
tier, so a long run that is stopped keeps the tiers it finished.
"""

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    TIERS,
    command_line,
    describe,
    results_name,
    save_results,
    spread,
    tiers_and_seeds,
    train_with,
)
from tierkit.run_folder import RunFolder
from tierkit.utils.noise import silence_known_noise

MODES = ("scratch", "from_teacher")


def validation_curve(output_dir: Path) -> list[float]:
    """val/acc after each epoch, from the run's CSV log."""
    rows = list(csv.DictReader((RunFolder(output_dir).logs / "csv" / "metrics.csv").open()))
    by_epoch = {int(row["epoch"]): float(row["val/acc"]) for row in rows if row.get("val/acc")}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def first_epoch_reaching(curve: list[float], target: float, from_epoch: int = 1) -> int | None:
    """1-based epoch, ``from_epoch`` on, at which validation accuracy first reaches ``target``; None if never."""
    return next((e for e, value in enumerate(curve, start=1) if e >= from_epoch and value >= target), None)


def epochs_cell(epochs: list[int | None]) -> str:
    reached = [e for e in epochs if e is not None]
    never = len(epochs) - len(reached)
    text = spread(reached, scale=1, digits=1) if reached else "-"
    return text + (f" ({never} of {len(epochs)} never)" if never else "")


def main() -> None:
    args = tiers_and_seeds(__doc__, "Hydra overrides for every run (e.g. data=fashion_mnist)")
    silence_known_noise()
    print(describe(), flush=True)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tierkit-derived-") as tmp:
        for tier in args.tiers:
            runs = {mode: [] for mode in MODES}
            for seed in args.seeds:
                for mode in MODES:
                    out = Path(tmp) / f"{tier}-{mode}-{seed}"
                    began = time.perf_counter()
                    overrides = [f"tier={tier}", f"seed={seed}", f"student={mode}", "quantization=off"]
                    metrics = train_with([*overrides, *args.overrides], out)
                    runs[mode].append(
                        {
                            "seed": seed,
                            "params": metrics["student"]["params"],
                            "test_acc": metrics["student"]["test_acc"],
                            "val_curve": validation_curve(out),
                            # 1-based epoch whose validation is the first at the tier's size (after the last step).
                            "final_size_epoch": metrics["pruning"]["history"][-1]["epoch"] + 1,
                            "seconds": round(time.perf_counter() - began, 1),
                            "teacher_params": metrics["teacher"]["params"],
                            "teacher_test_acc": metrics["teacher"]["test_acc"],
                        }
                    )
                    print(
                        f"{tier} seed {seed} {mode}: {metrics['student']['params']:,} params, "
                        f"test acc {100 * metrics['student']['test_acc']:.2f}%",
                        flush=True,
                    )
            target = statistics.mean(run["val_curve"][-1] for run in runs["scratch"])
            for mode in MODES:
                for run in runs[mode]:
                    run["epochs_to_scratch_final_val"] = first_epoch_reaching(run["val_curve"], target)
                    run["epochs_to_it_at_final_size"] = first_epoch_reaching(
                        run["val_curve"], target, run["final_size_epoch"]
                    )
            rows.append({"tier": tier, "scratch_final_val_acc": target, **runs})
            write_results(args, rows, time.perf_counter() - started)


def derived_results_name(args: argparse.Namespace) -> str:
    """The results file's name: the data it ran on, and the tiers when not all of them ran."""
    name = results_name("derived_student", args.overrides)
    return name if sorted(args.tiers) == sorted(TIERS) else "_".join([name, *args.tiers])


def write_results(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    lines = [
        f"Machine: {describe()}",
        "Command: "
        + command_line(
            "derived_student", "--tiers", *args.tiers, "--seeds", *map(str, args.seeds), overrides=args.overrides
        ),
        "",
        "| tier | student | params | test acc (%) | epochs to the scratch student's final val acc "
        "| the same, counting only epochs at the tier's size | wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for mode in MODES:
            runs = row[mode]
            lines.append(
                f"| {row['tier']} | {mode} | {runs[0]['params']:,} | {spread([r['test_acc'] for r in runs])} | "
                f"{epochs_cell([r['epochs_to_scratch_final_val'] for r in runs])} of {len(runs[0]['val_curve'])} | "
                f"{epochs_cell([r['epochs_to_it_at_final_size'] for r in runs])} (size from epoch "
                f"{runs[0]['final_size_epoch']}) | "
                f"{statistics.mean(r['seconds'] for r in runs):.0f} |"
            )
    first = rows[0]["scratch"][0]
    lines += [
        "",
        f"Teacher: {first['teacher_params']:,} params, {100 * first['teacher_test_acc']:.2f}% test accuracy. "
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, args.seeds))}; "
        f"{len(args.seeds) * len(rows) * len(MODES)} runs in {seconds:.0f} s.",
    ]
    save_results(derived_results_name(args), {"rows": rows}, lines)


if __name__ == "__main__":
    main()
