"""Memory over a long run: after warm-up, a long `python train.py tier=lowend` should hold no more memory.

    python -m benchmarks.memory [--epochs 50] [--warmup 10] [--quick] [--out DIR]

Runs the training entry point as a user would (distillation and the tier's structured pruning on; the
quantization stage off, since the point is the training loop), with benchmarks.memory_probe recording the
process's resident memory (RSS), the C allocator's in-use bytes and its live Python objects after every epoch.
Reports the growth from the end of warm-up (which takes in the pruning steps) to the last epoch, the slope over
those epochs and a verdict, and writes benchmarks/results/memory.{json,md,png}. --quick: tiny synthetic data
and a few epochs, a smoke test that writes to --out or a fresh temporary folder, never to benchmarks/results.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure

from benchmarks.common import RESULTS, SCRATCH_STUDENT, describe, run_command, save_results

# "No growth": after warm-up RSS rises by less than this per epoch (under 100 MiB over 1,000 epochs) ...
MAX_SLOPE_MIB_PER_EPOCH = 0.1
# ... and that slope, over the epochs after warm-up, adds less than this fraction of the RSS at its end.
MAX_GROWTH = 0.02
# The lowend tier's pruning steps start epochs 3, 5, 7 and 9: each rebuilds the student and its optimizer
# and moves RSS by tens of MiB either way, so warm-up ends one epoch after the last.
WARMUP = 10
# Tiny data and models, a one-epoch teacher (in a scratch cache), pruning squeezed into the first epochs.
QUICK = [
    "data=synthetic",
    "model.teacher.base_channels=8",
    "model.student.base_channels=8",
    "teacher.max_epochs=1",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=1",
    "callbacks.pruning.steps=2",
]


def train_recording(epochs: int, extra: list[str], scratch: Path) -> tuple[str, list[dict], float]:
    """Run train.py with the memory probe; returns the user's command, the per-epoch records and the wall time."""
    overrides = ["tier=lowend", SCRATCH_STUDENT, f"trainer.max_epochs={epochs}", "quantization=off", *extra]
    log = scratch / "memory.jsonl"
    # train.py runs from the repository root, so benchmarks.memory_probe imports like any module there.
    probe = [
        "+callbacks.memory_probe._target_=benchmarks.memory_probe.RecordMemory",
        f"+callbacks.memory_probe.path={log}",
    ]
    started = time.perf_counter()
    run_command(
        [sys.executable, "train.py", *overrides, *probe, f"hydra.run.dir={scratch / 'run'}", "~callbacks.progress"]
    )
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in log.read_text().splitlines()]
    if [r["epoch"] for r in records] != list(range(1, epochs + 1)):
        raise RuntimeError(
            f"expected one record for each of {epochs} epochs, got epochs {[r['epoch'] for r in records]}"
        )
    return " ".join(["python train.py", *overrides]), records, wall


def slope(records: list[dict], key: str) -> float:
    """Least-squares growth of ``key`` per epoch."""
    return statistics.linear_regression([r["epoch"] for r in records], [r[key] for r in records]).slope


def median_slope(records: list[dict], key: str) -> float:
    """Growth of ``key`` per epoch as the median of the slopes between every two epochs (Theil-Sen).

    The allocator now and then holds on to a few dozen freed MiB for an epoch or two; a least-squares line
    follows such a spike near either end, the median of pairwise slopes does not, while a steady leak moves both.
    """
    pairs = [(a, b) for i, a in enumerate(records) for b in records[i + 1 :]]
    return statistics.median((b[key] - a[key]) / (b["epoch"] - a["epoch"]) for a, b in pairs)


def summarize(records: list[dict], warmup: int) -> dict:
    """Growth from the end of warm-up (epoch ``warmup``) to the last epoch, and the verdict."""
    after = records[warmup - 1 :]
    first, last = after[0], after[-1]
    growth = last["rss_mib"] - first["rss_mib"]
    robust = median_slope(after, "rss_mib")
    projected = robust * (last["epoch"] - first["epoch"])
    return {
        "warmup_epochs": warmup,
        "rss_mib_end_of_warmup": first["rss_mib"],
        "rss_mib_last": last["rss_mib"],
        "rss_growth_mib": round(growth, 2),
        "rss_growth_percent": round(100 * growth / first["rss_mib"], 2),
        "rss_anon_growth_mib": round(last["rss_anon_mib"] - first["rss_anon_mib"], 2),
        "rss_file_growth_mib": round(last["rss_file_mib"] - first["rss_file_mib"], 2),
        "rss_slope_mib_per_epoch": round(slope(after, "rss_mib"), 4),
        "rss_median_slope_mib_per_epoch": round(robust, 4),
        "rss_projected_growth_mib": round(projected, 2),
        "rss_projected_growth_percent": round(100 * projected / first["rss_mib"], 2),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in records),
        "malloc_in_use_mib_end_of_warmup": first["malloc_in_use_mib"],
        "malloc_in_use_mib_last": last["malloc_in_use_mib"],
        "malloc_in_use_growth_mib": round(last["malloc_in_use_mib"] - first["malloc_in_use_mib"], 2),
        "objects_end_of_warmup": first["objects"],
        "objects_last": last["objects"],
        "objects_growth": last["objects"] - first["objects"],
        "objects_slope_per_epoch": round(slope(after, "objects"), 1),
        "verdict": "no growth"
        if robust < MAX_SLOPE_MIB_PER_EPOCH and projected < MAX_GROWTH * first["rss_mib"]
        else "GROWS",
    }


def table_lines(summary: dict, epochs: int, wall: float, benchmark: str, command: str) -> list[str]:
    warmup = summary["warmup_epochs"]
    return [
        f"Machine: {describe()}",
        f"Command: `{benchmark}` (runs `{command}`, the memory probe added)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| RSS at the end of warm-up (epoch {warmup}) | {summary['rss_mib_end_of_warmup']:.1f} MiB |",
        f"| RSS at the last epoch (epoch {epochs}) | {summary['rss_mib_last']:.1f} MiB |",
        f"| growth | {summary['rss_growth_mib']:+.1f} MiB ({summary['rss_growth_percent']:+.2f}%): "
        f"{summary['rss_anon_growth_mib']:+.1f} anonymous, {summary['rss_file_growth_mib']:+.1f} file-backed |",
        f"| slope, epochs {warmup}-{epochs}: least squares | {summary['rss_slope_mib_per_epoch']:+.3f} MiB/epoch |",
        f"| slope, epochs {warmup}-{epochs}: median of pairwise slopes | "
        f"{summary['rss_median_slope_mib_per_epoch']:+.3f} MiB/epoch, {summary['rss_projected_growth_mib']:+.1f} MiB "
        f"({summary['rss_projected_growth_percent']:+.2f}%) over the {epochs - warmup} epochs |",
        f"| peak RSS | {summary['peak_rss_mib']:.1f} MiB |",
        f"| malloc in use (mallinfo2), epoch {warmup} → {epochs} | {summary['malloc_in_use_mib_end_of_warmup']:.1f} → "
        f"{summary['malloc_in_use_mib_last']:.1f} MiB ({summary['malloc_in_use_growth_mib']:+.1f}) |",
        f"| live Python objects, epoch {warmup} → {epochs} | {summary['objects_end_of_warmup']:,} → "
        f"{summary['objects_last']:,} ({summary['objects_growth']:+,}; "
        f"{summary['objects_slope_per_epoch']:+.1f}/epoch) |",
        f"| wall time of the run | {wall:.0f} s |",
        "",
        f"Verdict: **{summary['verdict']}** (the rule for no growth: the median of pairwise slopes is under "
        f"{MAX_SLOPE_MIB_PER_EPOCH} MiB/epoch and adds under {100 * MAX_GROWTH:.0f}% over the epochs after warm-up; "
        "unlike least squares it ignores the allocator's brief hold on freed memory). RSS (/proc/self/status), "
        "malloc's in-use bytes (tensors included) and live Python objects (len(gc.get_objects())) are read after "
        "gc.collect() as every training epoch ends.",
    ]


def plot(records: list[dict], warmup: int, path: Path) -> None:
    """RSS and malloc's in-use memory (top) and live Python objects (bottom) against epochs, the warm-up shaded."""
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    rss, objects = figure.subplots(2, 1, sharex=True)
    epochs = [r["epoch"] for r in records]
    rss.plot(epochs, [r["rss_mib"] for r in records], marker=".", color="tab:blue", label="RSS")
    rss.plot(epochs, [r["malloc_in_use_mib"] for r in records], marker=".", color="tab:green", label="malloc in use")
    rss.set_ylabel("MiB")
    rss.set_title("memory of `python train.py tier=lowend` after every training epoch")
    objects.plot(epochs, [r["objects"] for r in records], marker=".", color="tab:orange")
    objects.set_ylabel("live Python objects")
    objects.set_xlabel("epochs done")
    for axes in (rss, objects):
        axes.axvspan(0.5, warmup, color="tab:gray", alpha=0.2, label="warm-up")
        axes.grid(alpha=0.3)
    rss.legend(loc="center right")
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="training epochs (default 50; 5 with --quick)")
    parser.add_argument(
        "--warmup", type=int, help=f"epochs left out of the growth figures (default {WARMUP}; 2 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and a few epochs: a smoke test")
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results; a temporary one with --quick)"
    )
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.quick else 50)
    warmup = args.warmup or (2 if args.quick else WARMUP)
    if not 1 <= warmup < epochs:
        parser.error(f"--warmup {warmup} leaves no epochs after it in {epochs}")
    if args.quick and args.out and args.out.resolve() == RESULTS:
        parser.error("--quick never writes to benchmarks/results (its figures are not the real ones)")
    out = args.out or (Path(tempfile.mkdtemp(prefix="tierkit-memory-")) if args.quick else RESULTS)
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tierkit-bench-memory-") as tmp:
        scratch = Path(tmp)
        extra = [*QUICK, f"teacher.cache_dir={scratch / 'cache'}"] if args.quick else []
        command, records, wall = train_recording(epochs, extra, scratch)
    summary = summarize(records, warmup)
    benchmark = f"python -m benchmarks.memory --epochs {epochs} --warmup {warmup}" + (" --quick" if args.quick else "")
    lines = table_lines(summary, epochs, wall, benchmark, command)
    payload = {"mode": "quick" if args.quick else "full", "benchmark": benchmark, "command": command, "epochs": epochs}
    save_results("memory", {**payload, "wall_seconds": round(wall, 1), **summary, "records": records}, lines, out)
    plot(records, warmup, out / "memory.png")
    print(f"Wrote {out / 'memory.json'}, memory.md and memory.png")


if __name__ == "__main__":
    main()
