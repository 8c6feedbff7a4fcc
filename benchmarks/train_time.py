"""Wall-clock time of `python train.py` on the default data, cold (teacher trained) and warm (cached).

python -m benchmarks.train_time [--repeats N] [--label NAME] [extra overrides...]

Writes benchmarks/results/train_time.json, or train_time_<NAME>.json with --label (another machine's figures beside
the first's).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import describe, save_results

REPO = Path(__file__).resolve().parents[1]


def timed_run(cache_dir: Path, run_dir: Path, overrides: list[str]) -> float:
    command = [sys.executable, str(REPO / "train.py"), f"teacher.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    subprocess.run(
        [*command, *overrides],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="cold and warm runs each (median reported)")
    parser.add_argument("--label", help="name the results file train_time_<label>, e.g. after the machine")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to train.py")
    args = parser.parse_args()
    print(describe())
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="tierkit-bench-") as tmp:
        for i in range(args.repeats):
            cache = Path(tmp) / f"cache{i}"
            cold.append(timed_run(cache, Path(tmp) / f"cold{i}", args.overrides))
            warm.append(timed_run(cache, Path(tmp) / f"warm{i}", args.overrides))
            print(f"repeat {i + 1}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s", flush=True)
    result = {
        "command": " ".join(["python train.py", *args.overrides]),
        "cold_seconds_median": round(statistics.median(cold), 1),
        "warm_seconds_median": round(statistics.median(warm), 1),
        "repeats": args.repeats,
    }
    save_results(f"train_time_{args.label}" if args.label else "train_time", result)
    print(
        f"python train.py {' '.join(args.overrides)}: {result['cold_seconds_median']} s with the teacher trained, "
        f"{result['warm_seconds_median']} s with it cached (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
