"""Fixed against budget-driven pruning, on a tier whose fixed recipe misses its accuracy budget.

    python -m benchmarks.budget_pruning [--data fashion_mnist] [--tier lowend] [--seed 1] [--students scratch ...]
                                        [--modes fixed budget]

One teacher (trained once, cached in the scratch folder), then the tier's student with the fixed schedule
(`callbacks.pruning.mode=fixed`, today's default) and with `callbacks.pruning.mode=budget`, for each kind of
student asked for (`scratch`: the width-scaled student; `from_teacher`: the teacher pruned to the tier's size).
Reported per run: the share of channels pruning removed, why it stopped, parameters, test accuracy, the drop
against the teacher and the tier verdict each run ended with (accuracy, size and latency budgets, measured on
this machine). Writes benchmarks/results/budget_pruning_<data>.{json,md}. With --modes naming one mode, the other
mode's rows are kept from the last results file of the same data, tier and seed, and marked as kept.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, describe, save_results, train_with
from tierkit.utils.noise import silence_known_noise

MODELS = {"fashion_mnist": "cnn", "mnist1d": "cnn1d", "mnist5k": "cnn"}


def run(data: str, tier: str, seed: int, student: str, mode: str, scratch: Path) -> dict:
    out = scratch / f"{student}-{mode}"
    overrides = [
        f"data={data}",
        f"model={MODELS[data]}",
        f"tier={tier}",
        f"seed={seed}",
        f"student={student}",
        f"callbacks.pruning.mode={mode}",
        f"paths.cache_dir={scratch / 'cache'}",
    ]
    began = time.perf_counter()
    metrics = train_with(overrides, out)
    pruning = metrics.get("pruning") or {}
    verdict = metrics["verdict"]
    return {
        "student": student,
        "mode": mode,
        "removed": pruning.get("removed", 0.0),
        "target": pruning.get("target"),
        "stopped_early": pruning.get("stopped_early"),
        "params": metrics["student"]["params"],
        "test_acc": metrics["student"]["test_acc"],
        "teacher_test_acc": metrics["teacher"]["test_acc"],
        "int8_test_acc": metrics["student"].get("int8_test_acc"),
        "verdict": verdict,
        "seconds": round(time.perf_counter() - began),
    }


def kept_rows(name: str, tier: str, seed: int, students: list[str], modes: list[str]) -> list[dict]:
    """The last results file's rows for the students asked for in the modes not re-run, when it measured the same
    tier and seed; each is marked with the command that measured it."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    last = json.loads(path.read_text())
    if f"--tier {tier} --seed {seed} " not in last["command"]:
        return []
    return [
        {**row, "kept_from": row.get("kept_from", last["command"])}
        for row in last["rows"]
        if row["student"] in students and row["mode"] not in modes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion_mnist", choices=list(MODELS))
    parser.add_argument("--tier", default="lowend")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--students", nargs="+", default=["scratch"], choices=["scratch", "from_teacher"])
    parser.add_argument("--modes", nargs="+", default=["fixed", "budget"], choices=["fixed", "budget"])
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    name = f"budget_pruning_{args.data}"
    kept = kept_rows(name, args.tier, args.seed, args.students, args.modes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierkit-budget-") as tmp:
        for student in args.students:
            for mode in ("fixed", "budget"):
                if mode in args.modes:
                    rows.append(run(args.data, args.tier, args.seed, student, mode, Path(tmp)))
                    print(rows[-1], flush=True)
                else:
                    rows += [r for r in kept if (r["student"], r["mode"]) == (student, mode)]
    command = (
        f"python -m benchmarks.budget_pruning --data {args.data} --tier {args.tier} --seed {args.seed} "
        f"--students {' '.join(args.students)} --modes {' '.join(args.modes)}"
    )
    lines = [
        f"Machine: {describe()}",
        f"Command: {command}",
        "",
        "| student | pruning | channels removed | params | test acc | INT8 test acc | drop vs teacher "
        "| verdict | why pruning stopped |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        shipped = r["verdict"]["candidate"]
        drop = r["verdict"]["checks"]["accuracy"]["value"]
        result = ("PASS" if r["verdict"]["passed"] else "MISS") + f" ({shipped})"
        int8 = "-" if r["int8_test_acc"] is None else f"{100 * r['int8_test_acc']:.2f}%"
        mark = " (kept)" if r.get("kept_from") else ""
        lines.append(
            f"| {r['student']} | {r['mode']}{mark} | {100 * r['removed']:.1f}% of {100 * (r['target'] or 0):.0f}% | "
            f"{r['params']:,} | {100 * r['test_acc']:.2f}% | {int8} | {100 * drop:.2f} pt | {result} | "
            f"{r['stopped_early'] or '-'} |"
        )
    teacher = rows[0]["teacher_test_acc"]
    lines += ["", f"Teacher test accuracy {100 * teacher:.2f}%; data {args.data}, tier {args.tier}, seed {args.seed}."]
    for source in dict.fromkeys(r["kept_from"] for r in rows if r.get("kept_from")):
        lines.append(f"(kept): not re-run, measured by `{source}`.")
    save_results(name, {"command": command, "rows": rows}, lines)


if __name__ == "__main__":
    main()
