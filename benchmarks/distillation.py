"""Does distillation help? Each tier's student trained with the teacher (KD) and alone, on the same seeds.

    python -m benchmarks.distillation [--tiers lowend ...] [--seeds 1 2 3] [--work DIR] [-- extra overrides...]

Writes benchmarks/results/distillation.{json,md} (distillation_<data>.* with a data= override; any other
override is added to the name as key-value). The gain is shown on test and on validation, where a choice between
students or settings is made. With --work DIR every finished training stays in DIR and the same command run
again reuses it: on the full Fashion-MNIST the eighteen trainings take hours on two cores.
"""

import statistics
import tempfile
from pathlib import Path

from benchmarks.common import (
    SCRATCH_STUDENT,
    command_line,
    describe,
    finished_or_train,
    over_seeds,
    results_name,
    save_results,
    spread,
    tiers_and_seeds,
)
from tierkit.utils.noise import silence_known_noise


def run(tier: str, seed: int, kd: bool, out: Path, extra: list[str]) -> dict:
    # Pruning off: this measures what distillation alone does for each tier's student.
    kd_off = [] if kd else ["experiment=no_kd"]
    overrides = [f"tier={tier}", f"seed={seed}", SCRATCH_STUDENT, "~callbacks.pruning", *kd_off, *extra]
    return finished_or_train(overrides, out)


def int8_test_acc(metrics: dict) -> float | None:
    """Test accuracy of the INT8 file the run's quantization stage chose (post-training, tuned or QAT): the file a
    tier would ship. None when the run did not quantize."""
    report = metrics.get("quantization")
    return report[report["path"]]["test_acc"] if report else None


def int8_cell(accuracies: list[float | None]) -> str:
    return "-" if None in accuracies else spread(accuracies)


def main() -> None:
    args = tiers_and_seeds(__doc__, resumable=True)
    silence_known_noise()
    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierkit-kd-") as tmp:
        for tier in args.tiers:
            results = {"kd": [], "alone": []}
            for seed in args.seeds:
                for mode in results:
                    out = (args.work or Path(tmp)) / f"{tier}-{mode}-{seed}"
                    metrics = run(tier, seed, mode == "kd", out, args.overrides)
                    results[mode].append(metrics)
                    accuracy = 100 * metrics["student"]["test_acc"]
                    print(f"{tier} seed {seed} {mode}: test acc {accuracy:.2f}%", flush=True)
            student, teacher = results["kd"][0]["student"], results["kd"][0]["teacher"]
            test = {mode: [m["student"]["test_acc"] for m in runs] for mode, runs in results.items()}
            val = {mode: [m["student"]["val_acc_best"] for m in runs] for mode, runs in results.items()}
            rows.append(
                {
                    "tier": tier,
                    "student_params": student["params"],
                    "student_macs": student["macs"],
                    "teacher_params": teacher["params"],
                    "teacher_macs": teacher["macs"],
                    "teacher_test_acc": teacher["test_acc"],
                    "kd_test_acc": test["kd"],
                    "alone_test_acc": test["alone"],
                    "kd_val_acc": val["kd"],
                    "alone_val_acc": val["alone"],
                    "kd_int8_test_acc": [int8_test_acc(m) for m in results["kd"]],
                    "alone_int8_test_acc": [int8_test_acc(m) for m in results["alone"]],
                    "kd_agreement": [m["student"]["agreement"] for m in results["kd"]],
                    "train_seconds": sum(m["train_seconds"] for runs in results.values() for m in runs),
                }
            )
    lines = [
        f"Machine: {describe()}",
        "Command: "
        + command_line(
            "distillation", "--tiers", *args.tiers, "--seeds", *map(str, args.seeds), overrides=args.overrides
        ),
        "",
        "| tier | student params | student MACs | teacher test acc "
        "| student + KD (%) | student alone (%) | KD gain (points) | KD gain on validation (points) "
        "| INT8 file: KD / alone (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        gain = 100 * (statistics.mean(row["kd_test_acc"]) - statistics.mean(row["alone_test_acc"]))
        val_gain = 100 * (statistics.mean(row["kd_val_acc"]) - statistics.mean(row["alone_val_acc"]))
        lines.append(
            f"| {row['tier']} | {row['student_params']:,} | {row['student_macs']:,} | "
            f"{100 * row['teacher_test_acc']:.2f}% | {spread(row['kd_test_acc'])} | {spread(row['alone_test_acc'])} | "
            f"{gain:+.2f} | {val_gain:+.2f} | "
            f"{int8_cell(row['kd_int8_test_acc'])} / {int8_cell(row['alone_int8_test_acc'])} |"
        )
    teacher = rows[0]
    lines += [
        "",
        f"Teacher: {teacher['teacher_params']:,} params, {teacher['teacher_macs']:,} MACs. "
        f"{over_seeds(args.seeds).capitalize()} (the same seeds with and "
        f"without KD); {len(args.seeds) * len(args.tiers) * 2} runs, "
        f"{sum(row['train_seconds'] for row in rows) / 60:.0f} min of training"
        + (" (runs an earlier command finished in --work are reused)." if args.work else "."),
    ]
    save_results(results_name("distillation", args.overrides), {"rows": rows}, lines)


if __name__ == "__main__":
    main()
