"""The README's first job across seeds: does `python train.py` then `python export.py` ship a model for its tier?

    python -m benchmarks.first_job [extra overrides...] [--seeds 1 2 3 4] [--keep DIR]

The first row is the job exactly as the README gives it (seed 42, teacher seed 0). Every other seed S varies both
the teacher and the student (`seed=S teacher.seed=S`), as a different machine or a fresh clone would, so each
row trains its own teacher. Each run is exported by `python export.py run=<run>`; the table gives the run's own
tier verdict (metrics.json) beside what export shipped for the tier, and why when nothing shipped. Both entry
points run as a user runs them, in subprocesses. Writes benchmarks/results/first_job.{json,md}, or, with
overrides, first_job_<the overrides' values>.{json,md} (`callbacks.pruning.mode=budget`: first_job_budget).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import describe, override_name, save_results
from tierkit.runtime import load_manifest

REPO = Path(__file__).resolve().parents[1]


def entry_point(script: str, *args: str) -> float:
    """Run train.py or export.py from the repository root; returns its wall time in seconds."""
    print("$", script, " ".join(args), flush=True)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - began


def first_job(seed: int | None, scratch: Path, overrides: list[str]) -> dict:
    """One train-then-export pair; ``seed=None`` is the README's command with nothing added."""
    name = "readme" if seed is None else f"seed{seed}"
    run, out = scratch / name, scratch / f"{name}-export"
    seeds = [] if seed is None else [f"seed={seed}", f"teacher.seed={seed}"]
    train_args = [*seeds, *overrides, f"hydra.run.dir={run}", f"paths.cache_dir={scratch / 'cache'}"]
    train_seconds = entry_point("train.py", *train_args, "~callbacks.progress")
    export_seconds = entry_point("export.py", f"run={run}", f"output_dir={out}")
    metrics = json.loads((run / "metrics.json").read_text())
    tier = metrics["tier"]
    variants = [v for v in load_manifest(out / "manifest.json")["variants"] if v["tier"] == tier]
    shipped = next((v for v in variants if v["ships"]), None)
    return {
        "seeds": "seed 42, teacher seed 0 (defaults)" if seed is None else f"seed {seed}, teacher seed {seed}",
        "tier": tier,
        "teacher_test_acc": metrics["teacher"]["test_acc"],
        "student_test_acc": metrics["student"]["test_acc"],
        "verdict": metrics["verdict"],
        "ships": shipped["name"] if shipped else None,
        "ships_why": shipped["why"] if shipped else "; ".join(f"{v['name']}: {v['why']}" for v in variants),
        "train_seconds": round(train_seconds),
        "export_seconds": round(export_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every train.py run")
    parser.add_argument(
        "--keep", type=Path, help="keep the run and export folders in this new folder (default: a temporary one)"
    )
    args = parser.parse_args()
    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierkit-first-job-") as tmp:
        scratch = args.keep or Path(tmp)
        for seed in [None, *args.seeds]:
            rows.append(first_job(seed, scratch, args.overrides))
            print(rows[-1], flush=True)
    command = " ".join(["python -m benchmarks.first_job", *args.overrides, "--seeds", *map(str, args.seeds)])
    shipped = sum(r["ships"] is not None for r in rows)
    lines = [
        f"Machine: {describe()}",
        f"Command: `{command}`",
        "",
        "| run | tier | teacher test | student test | drop (points) | run's verdict | export ships "
        "| train / export (s) |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        verdict = r["verdict"]
        lines.append(
            f"| {r['seeds']} | {r['tier']} | {100 * r['teacher_test_acc']:.2f}% | {100 * r['student_test_acc']:.2f}% | "
            f"{100 * verdict['checks']['accuracy']['value']:.2f} | {verdict['reason']} | "
            f"{r['ships'] or 'nothing: ' + r['ships_why']} | "
            f"{r['train_seconds']} / {r['export_seconds']} |"
        )
    lines += ["", f"Export shipped a model for the tier in {shipped} of {len(rows)} runs."]
    save_results(override_name("first_job", args.overrides), {"command": command, "rows": rows}, lines)


if __name__ == "__main__":
    main()
