"""Reliability: runs killed part-way (SIGTERM or SIGKILL) in each stage leave nothing that looks finished and
resume to where an uninterrupted run with the same seed ends; the same seed gives the same run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tierkit.runtime import load_manifest, verify_file

from conftest import FAST, QUICK_PROFILE, REPO, fake_slurm

# Every test here runs the entry points as subprocesses: the full suite's tier (pytest -m 'not slow' skips it).
pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
# Digits (360 test images): small enough to train in seconds, hard enough that accuracies differ.
RECIPE = [
    *[o for o in FAST if o not in ("data=synthetic", "quantization=off")],
    "data=digits",
    "seed=7",
    "teacher.max_epochs=2",
    "trainer.max_epochs=4",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=3",
    "callbacks.pruning.steps=4",
    "callbacks.pruning.schedule=linear",
    "callbacks.pruning.round_to=null",
    "callbacks.pruning.target=0.5",
    # A budget no INT8 model meets: the run always goes on to QAT.
    "quantization.max_drop_vs_fp32=-1",
    "quantization.escalation.enabled=false",
    "quantization.qat.epochs=3",
    "quantization.qat.callback.freeze_epoch=2",
    "quantization.calibration.samples=128",
]


def start(root: Path, *args: str, script: str = "train.py", env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        **(env or {}),
        "TIERKIT_CACHE_DIR": str(root / "cache"),
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def kill_when(process: subprocess.Popen, marker: Path, signum: int, timeout: float = 240) -> tuple[int, str]:
    """Send ``signum`` once ``marker`` exists; returns the exit code and output."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"the run ended before {marker.name}: {process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {marker.name} after {timeout} s"
        time.sleep(0.05)
    process.send_signal(signum)
    return finish(process)


def paused(root: Path, after_batch: int | None = None) -> list[str]:
    """Pause at each epoch's start, or after batch ``after_batch`` of each epoch (see tests/pause.py)."""
    where = ["+callbacks.pause._target_=pause.PauseAtEpochStart"]
    if after_batch is not None:
        where = ["+callbacks.pause._target_=pause.PauseAfterBatch", f"+callbacks.pause.batch={after_batch}"]
    return [*where, f"+callbacks.pause.folder={root / 'markers'}", "+callbacks.pause.seconds=5"]


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same recipe, never interrupted."""
    root = tmp_path_factory.mktemp("faults")
    run = root / "outputs" / "reference"
    code, output = finish(start(root, *RECIPE, f"hydra.run.dir={run}"))
    assert code == 0, output[-3000:]
    return root, run, metrics_of(run)


def assert_same_result(resumed: dict, reference: dict) -> None:
    assert resumed["student"]["params"] == reference["student"]["params"], "the same pruned structure"
    if "pruning" in resumed:  # a resumed QAT stage starts after pruning ended
        assert resumed["pruning"]["history"][-1] == reference["pruning"]["history"][-1]
    assert abs(resumed["student"]["test_acc"] - reference["student"]["test_acc"]) <= 0.005
    for path in ("ptq", "qat"):
        assert abs(resumed["quantization"][path]["test_acc"] - reference["quantization"][path]["test_acc"]) <= 0.005
    assert resumed["quantization"]["path"] == reference["quantization"]["path"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_while_distilling_and_pruning_resumes_to_the_same_result(reference, signum):
    root, _, expected = reference
    run = root / "outputs" / f"killed-{signum.name}"
    process = start(root, *RECIPE, *paused(root / signum.name), f"hydra.run.dir={run}")
    code, output = kill_when(process, root / signum.name / "markers" / "fp32-epoch2", signum)
    assert code != 0, output[-2000:]
    assert not (run / "metrics.json").exists(), "a killed run must not look finished"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    if signum == signal.SIGTERM:
        assert f"resume with ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in output
    resumed = root / "outputs" / f"resumed-{signum.name}"
    last_path = run / "checkpoints" / "last.ckpt"
    code, output = finish(start(root, *RECIPE, f"ckpt_path={last_path}", f"hydra.run.dir={resumed}"))
    assert code == 0, output[-3000:]
    assert_same_result(metrics_of(resumed), expected)


def test_killed_during_qat_resumes_the_qat_stage_to_the_same_result(reference):
    root, _, expected = reference
    run = root / "outputs" / "killed-qat"
    process = start(root, *RECIPE, *paused(root / "qat"), f"hydra.run.dir={run}")
    code, output = kill_when(process, root / "qat" / "markers" / "qat-epoch2", signal.SIGKILL)
    assert code != 0 and not (run / "metrics.json").exists()
    qat_last = run / "checkpoints" / "qat" / "last.ckpt"
    assert torch.load(qat_last, weights_only=True)["tierkit"]["qat"], "the QAT checkpoint carries its quantizers"
    resumed = root / "outputs" / "resumed-qat"
    code, output = finish(start(root, *RECIPE, f"ckpt_path={qat_last}", f"hydra.run.dir={resumed}"))
    assert code == 0, output[-3000:]
    assert_same_result(metrics_of(resumed), expected)


@pytest.mark.parametrize(
    ("job", "signum", "after_batch", "marker", "resumes_from"),
    [
        (4101, signal.SIGUSR1, None, "fp32-epoch2", "hpc_ckpt_1.ckpt"),
        (4102, signal.SIGUSR1, 7, "fp32-epoch2-batch7", "hpc_ckpt_1.ckpt"),
        (4103, signal.SIGUSR1, 5, "qat-epoch1-batch5", "checkpoints/qat/hpc_ckpt_1.ckpt"),
        (4104, signal.SIGTERM, None, "fp32-epoch2", "checkpoints/last.ckpt"),
    ],
    ids=["SIGUSR1-epoch-start", "SIGUSR1-mid-epoch", "SIGUSR1-mid-qat", "SIGTERM"],
)
def test_a_requeued_slurm_job_resumes_in_its_own_folder(reference, job, signum, after_batch, marker, resumes_from):
    """SIGUSR1 is SLURM's warning before a time limit (sbatch --signal=SIGUSR1@90): Lightning saves
    hpc_ckpt_<n>.ckpt wherever the epoch stands and requeues the job. A bare SIGTERM (preemption, or submitit's own
    requeue) leaves the last epoch's checkpoint. Either way the requeued job, same id, finds its folder and ends
    where an uninterrupted run ends."""
    root, _, expected = reference
    run = root / "outputs" / "slurm" / str(job)
    process = start(root, *RECIPE, *paused(root / str(job), after_batch), env=fake_slurm(root / str(job), job))
    code, output = kill_when(process, root / str(job) / "markers" / marker, signum)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "(a requeued SLURM job does so by itself)" in output
    assert not (run / "metrics.json").exists(), "a preempted run must not look finished"
    assert (run / resumes_from).is_file(), sorted(str(p.relative_to(run)) for p in run.rglob("*.ckpt"))
    requeues = root / str(job) / "scontrol.log"
    if signum == signal.SIGUSR1:
        assert requeues.read_text().split() == ["requeue", str(job)]
    else:
        assert not requeues.exists()
    code, output = finish(start(root, *RECIPE, env=fake_slurm(root / str(job), job, restarts=1)))
    assert code == 0, output[-3000:]
    assert f"resuming from {run / resumes_from}" in output
    assert_same_result(metrics_of(run), expected)


def test_killed_while_training_the_teacher_leaves_no_teacher_and_retrains_the_same_one(reference, tmp_path):
    root, _, _ = reference
    recipe = [*RECIPE, "teacher.max_epochs=40", "trainer.max_epochs=1", "quantization=off"]
    process = start(tmp_path, *recipe, f"hydra.run.dir={tmp_path / 'killed'}")
    teacher_log = tmp_path / "killed" / "logs" / "teacher" / "metrics.csv"
    code, _ = kill_when(process, teacher_log, signal.SIGKILL)
    assert code != 0
    entries = list((tmp_path / "cache" / "teachers").glob("*/*"))
    assert not [p for p in entries if p.name != "train.lock"], f"a killed teacher left {entries}"
    code, output = finish(start(tmp_path, *recipe, f"hydra.run.dir={tmp_path / 'again'}"))
    assert code == 0, output[-3000:]
    (retrained,) = (tmp_path / "cache" / "teachers").glob("*/teacher.pt")
    code, output = finish(start(root, *recipe, f"hydra.run.dir={root / 'outputs' / 'teacher40'}"))
    assert code == 0, output[-3000:]
    uninterrupted = root / "cache" / "teachers" / retrained.parent.name / "teacher.pt"
    first, second = (torch.load(p, weights_only=True)["state_dict"] for p in (retrained, uninterrupted))
    assert all(torch.equal(first[k], second[k]) for k in first), "the retrained teacher equals an uninterrupted one"


def test_killed_export_leaves_no_manifest_and_a_rerun_completes_it(reference):
    root, run, _ = reference
    out = root / "exports" / "killed"
    process = start(root, f"run={run}", f"output_dir={out}", *QUICK_PROFILE, script="export.py")
    code, _ = kill_when(process, out / "teacher" / "fp32.onnx", signal.SIGKILL)
    assert code != 0
    assert not (out / "manifest.json").exists(), "a killed export must not look complete"
    code, output = finish(start(root, f"run={run}", f"output_dir={out}", *QUICK_PROFILE, script="export.py"))
    assert code == 0, output[-3000:]
    manifest = load_manifest(out / "manifest.json")
    assert all(verify_file(out, variant) for variant in manifest["variants"])
    assert not list(out.rglob("*.part")), "no temporary file is left behind"


def without_volatile(value, run: Path):
    """metrics.json minus what differs between identical runs: wall time, the tier verdict (it times the models)
    and the run's own paths."""
    if isinstance(value, dict):
        return {k: without_volatile(v, run) for k, v in value.items() if k not in ("train_seconds", "verdict")}
    if isinstance(value, list):
        return [without_volatile(v, run) for v in value]
    return value.replace(str(run), "<run>") if isinstance(value, str) else value


def test_the_same_seed_gives_identical_metrics_on_cpu(reference):
    root, run, expected = reference
    again = root / "outputs" / "again"
    code, output = finish(start(root, *RECIPE, f"hydra.run.dir={again}"))
    assert code == 0, output[-3000:]
    assert without_volatile(metrics_of(again), again) == without_volatile(expected, run)
    first, second = (torch.load(r / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"] for r in (run, again))
    assert all(torch.equal(first[k], second[k]) for k in first), "bit-identical student weights"
