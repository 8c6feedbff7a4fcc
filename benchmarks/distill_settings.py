"""Which distillation settings help a student? Temperature and alpha chosen on validation, then checked on test.

    python -m benchmarks.distill_settings [--temperatures 2 4 8] [--alphas 0.5 0.9] [--seeds 1 2 3]
                                          [--work DIR] [-- overrides...]

Every (temperature, alpha) pair distils the default tier's student on the first seed: the student trained from
scratch at the tier's width with pruning and quantization off, as in the comparison's student rows. The pair with
the best validation accuracy is then trained on every seed beside the student alone (labels only) on the same
seeds, and only those runs are read on the test split, so the test split never takes part in the choice. Writes
benchmarks/results/distill_settings[_<data>].{json,md}. With --work DIR every finished training stays in DIR and
the same command started again reuses it (a Fashion-MNIST run takes about ten minutes on two cores).
"""

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    SCRATCH_STUDENT,
    add_work_option,
    command_line,
    describe,
    finished_or_train,
    measure_and_save,
    results_name,
    spread,
)

# What distillation should add over the same student alone (points, mean of seeds): the classic Fashion-MNIST
# figure for a small CNN student, and the comparison's target.
DISTILLATION_GAIN_POINTS = 0.5
UNPRUNED_FP32 = [SCRATCH_STUDENT, "~callbacks.pruning", "quantization=off"]


@dataclass(frozen=True)
class Setting:
    """One way to train the student: distilled at a temperature and alpha, or alone (alpha 0: labels only)."""

    temperature: float
    alpha: float

    @property
    def alone(self) -> bool:
        return self.alpha == 0

    @property
    def label(self) -> str:
        return "alone (labels only)" if self.alone else f"T={self.temperature:g}, alpha={self.alpha:g}"

    @property
    def slug(self) -> str:
        return "alone" if self.alone else f"t{self.temperature:g}_a{self.alpha:g}"

    @property
    def overrides(self) -> list[str]:
        if self.alone:
            return ["distill.alpha=0"]
        return [f"distill.temperature={self.temperature}", f"distill.alpha={self.alpha}"]


ALONE = Setting(temperature=1.0, alpha=0.0)


def trained(setting: Setting, seed: int, work: Path, extra: list[str]) -> dict:
    print(f"training {setting.label}, seed {seed}", flush=True)
    overrides = [*UNPRUNED_FP32, *setting.overrides, f"seed={seed}", *extra]
    return finished_or_train(overrides, work / f"{setting.slug}_{seed}")


def chosen_on_validation(validation: dict[Setting, float]) -> Setting:
    """The distilled setting with the best validation accuracy; on a tie, the first in grid order."""
    return max((s for s in validation if not s.alone), key=validation.__getitem__)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperatures", nargs="+", type=float, default=[2.0, 4.0, 8.0])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    add_work_option(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. data=fashion_mnist)")
    args = parser.parse_args()
    if any(not 0 < a <= 1 for a in args.alphas):
        parser.error("--alphas must lie in (0, 1]: alpha 0 is the student alone, which is always trained")
    return args


def measure(args: argparse.Namespace, work: Path) -> dict:
    first = args.seeds[0]
    grid = [Setting(t, a) for t in args.temperatures for a in args.alphas]
    runs = {setting: trained(setting, first, work, args.overrides) for setting in [ALONE, *grid]}
    validation = {setting: metrics["student"]["val_acc_best"] for setting, metrics in runs.items()}
    best = chosen_on_validation(validation)
    test = {
        setting: [
            (runs[setting] if seed == first else trained(setting, seed, work, args.overrides))["student"]["test_acc"]
            for seed in args.seeds
        ]
        for setting in (ALONE, best)
    }
    # The student alone trains without a teacher, so only a distilled run records the teacher.
    teacher, student = runs[best]["teacher"], runs[ALONE]["student"]
    return {
        "validation": {s.label: v for s, v in validation.items()},
        "chosen": best.label,
        "test": {s.label: v for s, v in test.items()},
        "gains": [kd - alone for kd, alone in zip(test[best], test[ALONE], strict=True)],
        "student": {"architecture": student["architecture"], "params": student["params"], "tier": runs[ALONE]["tier"]},
        "teacher_test_acc": teacher["test_acc"],
    }


def table(args: argparse.Namespace, result: dict) -> list[str]:
    seeds = ", ".join(map(str, args.seeds))
    command = command_line(
        "distill_settings",
        "--temperatures",
        *(f"{t:g}" for t in args.temperatures),
        "--alphas",
        *(f"{a:g}" for a in args.alphas),
        "--seeds",
        *map(str, args.seeds),
        overrides=args.overrides,
    )
    student = result["student"]
    gain = 100 * statistics.mean(result["gains"])
    verdict = "PASS" if gain >= DISTILLATION_GAIN_POINTS else "MISS"
    lines = [
        f"Machine: {describe()}",
        f"Command: {command}",
        "",
        f"Student: {student['architecture']}, {student['params']:,} parameters ({student['tier']} width, trained "
        f"from scratch, no pruning, FP32); teacher {100 * result['teacher_test_acc']:.2f}% on test.",
        "",
        f"| setting | best validation accuracy, seed {args.seeds[0]} (%) |",
        "|---|---:|",
    ]
    for label, accuracy in result["validation"].items():
        mark = " (chosen)" if label == result["chosen"] else ""
        lines.append(f"| {label}{mark} | {100 * accuracy:.2f} |")
    lines += ["", f"| student | test accuracy, seeds {seeds} (%) | per seed (%) |", "|---|---:|---|"]
    for label, accuracies in result["test"].items():
        per_seed = ", ".join(f"{100 * a:.2f}" for a in accuracies)
        lines.append(f"| {label} | {spread(accuracies)} | {per_seed} |")
    lines += [
        "",
        f"Distillation gain on test: {gain:+.2f} points (mean of the per-seed differences, "
        f"{spread(result['gains'])} points); target >= +{DISTILLATION_GAIN_POINTS} points: {verdict}.",
    ]
    return lines


def main() -> None:
    args = parse_args()
    measure_and_save(results_name("distill_settings", args.overrides), args, measure, table)


if __name__ == "__main__":
    main()
