"""Peak memory of training on an image folder as it grows: decoded in memory, or decoded lazily in workers.

    python -m benchmarks.image_folder_memory [--sizes 2000 20000] [--side 64]

Writes ``--sizes`` generated colour images (``--side`` pixels square, 10 class folders) to a scratch folder, then
for each size runs ``python train.py data=imagefolder`` with ``data.lazy=true`` and with ``data.lazy=false``: the
student alone (no teacher), 20 training batches, 5 validation and test batches, 2 DataLoader workers. Reported: the
peak resident memory (max RSS) of the largest process of the run, measured by the kernel (getrusage of a wrapper
process that waits for train.py and its workers), and the wall time. Writes
benchmarks/results/image_folder_memory.{json,md}.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import SCRATCH_STUDENT, describe, save_results

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
# Runs the command given after it and prints the largest max RSS (KiB) among it and its waited-for descendants.
WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def write_images(folder: Path, count: int, side: int) -> None:
    """``count`` random colour PNGs spread over the class folders; numbered so a larger set extends a smaller one."""
    rng = np.random.default_rng(0)
    for name in range(CLASSES):
        (folder / f"class{name}").mkdir(parents=True, exist_ok=True)
    existing = sum(1 for _ in folder.glob("*/*.png"))
    for index in range(existing, count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{index % CLASSES}" / f"{index:06d}.png")


def peak_rss(folder: Path, side: int, lazy: bool, out: Path) -> tuple[float, float]:
    """Peak RSS in MiB and wall seconds of one short training run on ``folder``."""
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "data=imagefolder",
        f"data.root={folder}",
        f"data.num_classes={CLASSES}",
        f"data.input_shape=[3,{side},{side}]",
        f"data.lazy={str(lazy).lower()}",
        "data.num_workers=2",
        "experiment=no_kd",
        SCRATCH_STUDENT,
        "quantization=off",
        "~callbacks.pruning",
        "~callbacks.progress",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=20",
        "+trainer.limit_val_batches=5",
        "+trainer.limit_test_batches=5",
        "logger=csv",
        f"hydra.run.dir={out}",
    ]
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, cwd=out.parent)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
    return int(result.stdout.split()[-1]) / 1024, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[2000, 20000])
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierkit-folder-") as tmp:
        scratch = Path(tmp)
        folder = scratch / "images"
        for size in sorted(args.sizes):
            write_images(folder, size, args.side)  # the larger set extends the smaller one
            for lazy in (True, False):
                mib, seconds = peak_rss(folder, args.side, lazy, scratch / f"run-{size}-{lazy}")
                rows.append({"images": size, "lazy": lazy, "peak_rss_mib": round(mib, 1), "seconds": round(seconds)})
                print(rows[-1], flush=True)
    command = f"python -m benchmarks.image_folder_memory --sizes {' '.join(map(str, args.sizes))} --side {args.side}"
    lines = [
        f"Machine: {describe()}",
        f"Command: {command}",
        "",
        f"| images ({args.side}x{args.side} RGB) | data.lazy | peak RSS | vs the smallest folder | wall time |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        base = next(r for r in rows if r["lazy"] == row["lazy"])
        growth = 100 * (row["peak_rss_mib"] / base["peak_rss_mib"] - 1)
        lines.append(
            f"| {row['images']:,} | {str(row['lazy']).lower()} | {row['peak_rss_mib']:.0f} MiB | {growth:+.1f}% | "
            f"{row['seconds']} s |"
        )
    save_results("image_folder_memory", {"command": command, "rows": rows}, lines)


if __name__ == "__main__":
    main()
