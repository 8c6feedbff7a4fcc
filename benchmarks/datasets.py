"""The recipe on data harder than the bundled MNIST subset: Fashion-MNIST in full and MNIST-1D, one tier each,
trained and exported on this machine, with the time an epoch takes.

    python -m benchmarks.datasets [--datasets fashion_mnist mnist1d] [--tier lowend] [-- extra overrides...]

For each dataset: the teacher is trained from scratch (its wall time per epoch, validation included), then the
tier's student is distilled, pruned and quantized (its time per epoch), then exported. Reported: teacher and student
test accuracy in PyTorch, the shipped INT8 file's test accuracy in ONNX Runtime, sizes and times. Writes
benchmarks/results/datasets.{json,md}.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from benchmarks.common import SCRATCH_STUDENT, command_line, describe, save_results
from tierkit.cli.train import train
from tierkit.conf import CONFIG_DIR
from tierkit.stages.export import export
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.instantiate import instantiate
from tierkit.utils.noise import silence_known_noise

MODELS = {"fashion_mnist": "cnn", "mnist1d": "cnn1d"}
# The export here is about finishing end to end; benchmarks.export measures latency properly.
QUICK_EXPORT = ["profiling.hardware=[cpu_1thread,cpu_2thread]", "profiling.repeats=50", "profiling.operator_runs=20"]


class EpochTimes(L.Callback):
    """Wall time of every training epoch (validation included); each fit appends one JSON line to ``path``
    (the FP32 fit first, then the QAT stage's when it runs)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self._started)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(self.seconds) + "\n")


def compose_run(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["~callbacks.progress", *overrides])


def run_dataset(name: str, tier: str, scratch: Path, extra: list[str]) -> dict:
    overrides = [
        f"data={name}",
        f"model={MODELS[name]}",
        f"tier={tier}",
        SCRATCH_STUDENT,
        f"paths.output_dir={scratch / name}",
        f"paths.cache_dir={scratch / 'cache'}",
        *extra,
    ]
    cfg = compose_run(overrides)
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    began = time.perf_counter()
    obtain_teacher(cfg, datamodule)
    teacher_seconds = (time.perf_counter() - began) / cfg.teacher.max_epochs
    print(f"{name}: teacher trained, {teacher_seconds:.1f} s per epoch", flush=True)
    times = scratch / f"{name}-epoch-seconds.jsonl"
    timer = [
        "+callbacks.epoch_times._target_=benchmarks.datasets.EpochTimes",
        f"+callbacks.epoch_times.path={times}",
    ]
    metrics = train(compose_run([*overrides, *timer]))
    student_seconds = json.loads(times.read_text().splitlines()[0])
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        export_cfg = compose(
            "export", overrides=[f"run={scratch / name}", f"output_dir={scratch / f'{name}-export'}", *QUICK_EXPORT]
        )
    manifest = export(export_cfg)
    shipped = [v for v in manifest["variants"] if v["ships"]]
    int8 = [v for v in manifest["variants"] if v["precision"] == "int8" and v.get("weight_bits") == 8]
    return {
        "dataset": name,
        "tier": tier,
        "train_samples": len(datamodule.splits["train"]),
        "test_samples": len(datamodule.splits["test"]),
        "teacher_params": metrics["teacher"]["params"],
        "teacher_test_acc": metrics["teacher"]["test_acc"],
        "teacher_seconds_per_epoch": round(teacher_seconds, 1),
        "student_params": metrics["student"]["params"],
        "student_test_acc": metrics["student"]["test_acc"],
        "student_seconds_per_epoch": round(statistics.median(student_seconds), 1),
        "int8_path": metrics["quantization"]["path"],
        "int8_onnx_test_acc": int8[0]["accuracy"] if int8 else None,
        "int8_bytes": int8[0]["bytes"] if int8 else None,
        "shipped": [f"{v['name']} ({v['precision']})" for v in shipped],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tier", default="lowend")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tierkit-datasets-") as tmp:
        for name in args.datasets:
            rows.append(run_dataset(name, args.tier, Path(tmp), args.overrides))
            print(rows[-1], flush=True)
    lines = [
        f"Machine: {describe()}",
        "Command: "
        + command_line("datasets", "--datasets", *args.datasets, "--tier", args.tier, overrides=args.overrides),
        "",
        "| data | train / test | teacher params | teacher test acc | s per teacher epoch | student params "
        "| student test acc | s per student epoch | INT8 path | INT8 (8-bit) test acc in ORT | INT8 size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        int8 = "-" if r["int8_onnx_test_acc"] is None else f"{100 * r['int8_onnx_test_acc']:.2f}%"
        size = "-" if r["int8_bytes"] is None else f"{r['int8_bytes'] / 1024:.1f} KiB"
        lines.append(
            f"| {r['dataset']} | {r['train_samples']:,} / {r['test_samples']:,} | {r['teacher_params']:,} | "
            f"{100 * r['teacher_test_acc']:.2f}% | {r['teacher_seconds_per_epoch']} | {r['student_params']:,} | "
            f"{100 * r['student_test_acc']:.2f}% | {r['student_seconds_per_epoch']} | {r['int8_path']} | {int8} | "
            f"{size} |"
        )
    lines += ["", f"Tier {args.tier}; {time.perf_counter() - started:.0f} s in all."]
    save_results("datasets", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
