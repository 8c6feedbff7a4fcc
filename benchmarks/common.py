"""What every benchmark shares: the machine it ran on, where results go, and how it runs the training recipe."""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tierkit.cli.train import train
from tierkit.conf import CONFIG_DIR
from tierkit.run_folder import RunFolder
from tierkit.utils.files import load_torch
from tierkit.utils.noise import silence_known_noise

# The student the component benchmarks measure: model.student trained from scratch, the recipe their results in
# benchmarks/results were measured with before student=from_teacher became the default. Pinned, so that every
# recorded command still reproduces its figures.
SCRATCH_STUDENT = "student=scratch"

# The device tiers, largest first: the order every benchmark table lists them in.
TIERS = ("highend", "midrange", "lowend")

# The comparison's targets for lowend. Those only meaningful on one dataset (from published results on it), by
# data= option; the hardware floor's holds everywhere.
DATASET_TARGETS = {
    "fashion_mnist": {"teacher_acc": 0.935, "lowend_acc": 0.925, "lowend_params": 20_000, "smaller": 20, "faster": 8}
}
FLOOR_MULTIPLE = 3.0


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "amx_int8", "avx512_bf16")) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    lines = cpuinfo.read_text().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [flag for flag in wanted if flag in flags]


def describe() -> str:
    return (
        f"CPU: {cpu_model()} ({os.cpu_count()} cores; flags: {' '.join(cpu_flags()) or '-'}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(stolen, total) CPU time of all cores so far, in jiffies, from the first line of /proc/stat; None where
    there is none. Stolen time is what the hypervisor gave to other guests while this one was ready to run."""
    if not stat.exists():
        return None
    fields = [int(value) for value in stat.read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is already counted in user and nice.
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


BENCHMARK_STARTED = cpu_jiffies()


def stolen_percent(
    since: tuple[int, int] | None = BENCHMARK_STARTED, now: tuple[int, int] | None = None
) -> float | None:
    """The share of CPU time stolen by other guests since ``since`` (by default: since the benchmark started), in
    percent: a run whose share is large was timed on a contended machine, so its speeds understate the CPU."""
    now = now or cpu_jiffies()
    if since is None or now is None or now[1] <= since[1]:
        return None
    return round(100 * (now[0] - since[0]) / (now[1] - since[1]), 2)


def stolen_line(percent: float | None) -> list[str]:
    """The results table's closing line on contention, or none where the OS does not report it."""
    if percent is None:
        return []
    return [
        "",
        f"CPU time stolen by other guests of this virtual machine while the benchmark ran: {percent:.2f}% "
        "(times measured while this is more than a few percent understate the CPU).",
    ]


RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, payload: dict, table_lines: list[str] | None = None, folder: Path = RESULTS) -> list[str]:
    """Write <folder>/<name>.json (with the machine description and the CPU time stolen while the benchmark ran)
    and, given a table, <folder>/<name>.md, ending with the stolen share; returns the lines written there."""
    folder.mkdir(parents=True, exist_ok=True)
    stolen = stolen_percent()
    record = {"machine": describe(), "cpu_stolen_percent": stolen, **payload}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if table_lines is None:
        return []
    written = [*table_lines, *stolen_line(stolen)]
    (folder / f"{name}.md").write_text("\n".join(written) + "\n")
    print("\n".join(written))
    return written


def data_option(overrides: list[str]) -> str | None:
    """The conf/data option the last ``data=`` override picks, or None for the default data."""
    data = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    return data[-1] if data else None


def setting_slug(override: str) -> str:
    """An override as a file-name part: ``tier.student_width=0.25`` -> ``tier-student_width-0-25``."""
    return re.sub(r"[^\w-]+", "-", override)


def results_name(base: str, overrides: list[str]) -> str:
    """``base``, then ``_<data>`` when the runs use other data than the default, then each other override as a
    slug, so results with other data or settings never overwrite the default's."""
    data = data_option(overrides)
    others = [setting_slug(o) for o in overrides if not o.startswith("data=")]
    return "_".join([base, *([data] if data else []), *others])


def data_overrides_of(run_dir: Path) -> list[str]:
    """The ``data=`` option a finished run was trained with, read from its best checkpoint: ``[]`` for the default
    data, else ``["data=<option>"]``. A benchmark given an existing run names its results and picks its data by it,
    as it would for a run it trained itself."""
    trained = load_torch(RunFolder(run_dir).checkpoint("best"))["tierkit"]["config"]["data"]["_target_"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        default = compose("train").data["_target_"]
    if trained == default:
        return []
    files = sorted((CONFIG_DIR / "data").glob("*.yaml"))
    options = [file.stem for file in files if OmegaConf.load(file).get("_target_") == trained]
    if not options:
        raise SystemExit(f"{run_dir} was trained on {trained}, which no conf/data option names; benchmark it by hand")
    return [f"data={options[0]}"]


def tier_run_folders(sweep: Path) -> dict[str, Path]:
    """The folder of each tier's finished run under ``sweep`` (a sweep or a folder of runs), by tier name; exits
    naming the tiers it lacks."""
    found = {}
    for path in sorted(sweep.rglob("metrics.json")):
        metrics = RunFolder(path.parent).read_metrics()
        if metrics is not None:
            found[metrics.tier] = path.parent
    missing = [tier for tier in TIERS if tier not in found]
    if missing:
        raise SystemExit(f"{sweep} holds no finished run of tier(s) {missing}; train them, or give another sweep")
    return {tier: found[tier] for tier in TIERS}


def override_name(base: str, overrides: list[str]) -> str:
    """``base`` followed by each override's value (``student=from_teacher`` -> ``base_from_teacher``), so runs and
    results made with other overrides never overwrite the default's."""
    return "_".join([base, *(re.sub(r"\W+", "-", o.split("=", 1)[-1]) for o in overrides)])


def train_with(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Compose conf/train.yaml with ``overrides`` and train; returns metrics.json's content."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={output_dir}", "~callbacks.progress", *overrides])
    return train(cfg)


def finished_or_train(overrides: list[str], out: Path) -> dict:
    """metrics.json of the run in ``out`` when an earlier, stopped benchmark finished it there; else train it (a
    run stopped half-way is started again from scratch)."""
    finished = RunFolder(out).read_metrics() if out.is_dir() else None
    if finished is not None:
        print(f"  reusing the finished run in {out}", flush=True)
        return finished.to_dict()
    shutil.rmtree(out, ignore_errors=True)
    return train_with(overrides, out)


def measure_and_save(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace, Path], dict],
    table: Callable[[argparse.Namespace, dict], list[str]],
) -> None:
    """Run ``measure(args, work)`` with ``work`` = ``args.work`` (kept, so the same command run again reuses what
    finished) or a temporary folder; save the result as ``name``, with its wall time and ``table(args, result)``."""
    silence_known_noise()
    print(describe(), flush=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"tierkit-{name}-") as tmp:
        result = measure(args, args.work or Path(tmp))
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    save_results(name, result, table(args, result))


def add_work_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, help="keep every finished training here and reuse it when run again")


def run_command(command: list[str]) -> None:
    """Run an entry point from the repository root as a user would, echoing the command first."""
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=Path(__file__).resolve().parents[1], check=True)


def tiers_and_seeds(
    doc: str, overrides_help: str = "Hydra overrides for every run", resumable: bool = False
) -> argparse.Namespace:
    """The command line of a benchmark that trains every tier on several seeds; ``resumable`` adds ``--work``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", nargs="+", default=list(TIERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    if resumable:
        add_work_option(parser)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    return parser.parse_args()


def command_line(module: str, *options: str, overrides: Sequence[str] = ()) -> str:
    """How to run a benchmark again: its options, then its Hydra overrides after ``--``, without which an option
    that takes a list (``--seeds 1 2 3``) would take the overrides as more of its values."""
    return " ".join([f"python -m benchmarks.{module}", *options, *(["--", *overrides] if overrides else [])])


def spread(values: list[float], scale: float = 100, digits: int = 2) -> str:
    """Mean ± sample standard deviation, scaled (100: fractions shown as percent); one value alone, since one seed
    has no spread to show."""
    mean = scale * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def over_seeds(seeds: Sequence[int]) -> str:
    """How a table's footnote names its seeds: "seed 1" or "mean ± sd over seeds 1, 2, 3"."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean ± sd over seeds {', '.join(map(str, seeds))}"
