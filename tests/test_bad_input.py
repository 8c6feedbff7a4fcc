"""Every mistake a user can make at the command line gets one clear message and a non-zero exit, and leaves what
was written before (a finished run, the teacher cache, an export) exactly as it was.

The README's bad-input table lists these cases; a test keeps the two in step.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, QUICK_PROFILE, REPO, run_cli

TINY = [*FAST, "debug=tiny"]


class Payload:
    """Unpickling this would create ``marker``: a stand-in for a checkpoint that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@dataclass(frozen=True)
class Case:
    shown: str  # the input as the README's table shows it
    script: str  # train.py, export.py, runtime or sensitivity
    args: tuple[str, ...]
    message: str
    # Run with the default (derived) student instead of the tiny scratch student FAST pins.
    default_student: bool = False


CASES = [
    Case("python train.py no_such_key=1", "train.py", ("no_such_key=1",), "Could not override 'no_such_key'"),
    Case("python train.py tier=ultra", "train.py", ("tier=ultra",), "Could not find 'tier/ultra'"),
    Case("python train.py stage=deploy", "train.py", ("stage=deploy",), "unknown stage 'deploy'"),
    Case("python train.py from_run=<run>", "train.py", ("from_run={run}",), "stage=train trains from scratch"),
    Case("python train.py stage=finetune", "train.py", ("stage=finetune",), "stage=finetune needs the run"),
    Case("python train.py distill.alpha=2", "train.py", ("distill.alpha=2",), "distill.alpha=2 is outside [0, 1]"),
    Case(
        "python train.py distill.temperature=0",
        "train.py",
        ("distill.temperature=0",),
        "distill.temperature=0 must be positive",
    ),
    Case(
        "python train.py student=scratch model.student._target_=tierkit.models.Nope",
        "train.py",
        ("student=scratch", "model.student._target_=tierkit.models.Nope"),
        "cannot import 'tierkit.models.Nope'",
    ),
    Case(
        "python train.py tier.budgets.max_drop_vs_teacher=0",
        "train.py",
        ("tier.budgets.max_drop_vs_teacher=0",),
        "tier.budgets.max_drop_vs_teacher=0 must be positive, set by the command line",
    ),
    Case(
        "python train.py callbacks.pruning.mode=budget callbacks.pruning.max_drop=0.001",
        "train.py",
        ("callbacks.pruning.mode=budget", "callbacks.pruning.max_drop=0.001"),
        "budget pruning needs an accuracy budget above its margin",
    ),
    Case(
        "python -m tierkit.quant.sensitivity <export>/teacher/fp32.onnx",
        "sensitivity",
        ("{export}/teacher/fp32.onnx", "data=synthetic"),
        "is not an INT8 model",
    ),
    Case(
        "python train.py student=scratch +model.student.width=-1",
        "train.py",
        ("student=scratch", "+model.student.width=-1"),
        "model.student.width=-1 must be positive, set by the command line",
    ),
    Case(
        "python train.py data.batch_size=0",
        "train.py",
        ("data.batch_size=0",),
        "data.batch_size=0 must be at least 1, set by the command line",
    ),
    Case(
        "python train.py tier.student_width=0.5",
        "train.py",
        ("tier.student_width=0.5",),
        "tier.student_width is set on the command line, but the student is derived from the teacher",
        default_student=True,
    ),
    Case(
        "python train.py student=from_teacher ~callbacks.pruning",
        "train.py",
        ("student=from_teacher", "~callbacks.pruning"),
        "student=from_teacher shrinks a copy of the teacher by pruning, but callbacks.pruning is off",
    ),
    Case(
        "python train.py student=scratch +model.student.depth=3",
        "train.py",
        ("student=scratch", "+model.student.depth=3"),
        "SmallCNN takes no argument 'depth', set by the command line",
    ),
    Case(
        "python train.py teacher.ckpt_path=<state_dict of another architecture>",
        "train.py",
        ("teacher.ckpt_path={other_architecture}",),
        "does not fit SmallCNN: ",
    ),
    Case(
        "python train.py teacher.ckpt_path=<Lightning checkpoint> teacher.state_dict_prefix=net.",
        "train.py",
        ("teacher.ckpt_path={lightning}", "teacher.state_dict_prefix=net."),
        "no key of the weights file starts with 'net.'",
    ),
    Case(
        "python train.py callbacks.pruning.target=1.5",
        "train.py",
        ("callbacks.pruning.target=1.5",),
        "callbacks.pruning.target=1.5 is outside (0, 1)",
    ),
    Case(
        "python train.py trainer.precision=half",
        "train.py",
        ("trainer.precision=half",),
        "trainer.precision=half is not one of 64, 32, 16,",
    ),
    Case(
        "python train.py distill.temperature=hot",
        "train.py",
        ("distill.temperature=hot",),
        "distill.temperature=hot is not of type float, set by the command line",
    ),
    Case(
        "python train.py +tier.budgets.max_size_kb=64",
        "train.py",
        ("+tier.budgets.max_size_kb=64",),
        "tier.budgets.max_size_kb is not a tierkit setting, set by the command line",
    ),
    Case("python train.py data=lightning", "train.py", ("data=lightning",), "data.module._target_ is not set"),
    Case(
        "python train.py callbacks.pruning.schedule=zigzag",
        "train.py",
        ("callbacks.pruning.schedule=zigzag",),
        "unknown callbacks.pruning.schedule 'zigzag'",
    ),
    Case(
        "python train.py quantization=default quantization.calibration.samples=8",
        "train.py",
        ("quantization=default", "quantization.calibration.samples=8"),
        "calibration needs at least one batch of 64 samples",
    ),
    Case(
        "python train.py distill.alpha=0 optimizer.lr=1e30",
        "train.py",
        ("distill.alpha=0", "optimizer.lr=1e30"),
        "the training loss became nan",
    ),
    Case(
        "python train.py data=mnist data.root=/does/not/exist",
        "train.py",
        ("data=mnist", "data.root=/does/not/exist"),
        "MNIST folder /does/not/exist does not exist",
    ),
    Case(
        "python train.py data.val_size=5000", "train.py", ("data.val_size=5000",), "data.val_size=5000 leaves no room"
    ),
    Case(
        "python train.py data.mean=[0.5,0.5]",
        "train.py",
        ("data.mean=[0.5,0.5]",),
        "data.mean and data.std need one value per channel",
    ),
    Case(
        "python train.py shift=camera +data.shift.wobble=1",
        "train.py",
        ("shift=camera", "+data.shift.wobble=1"),
        "unknown shift setting(s) ['wobble']",
    ),
    Case("python train.py ckpt_path=/no/such.ckpt", "train.py", ("ckpt_path=/no/such.ckpt",), "does not exist"),
    Case(
        "python train.py ckpt_path=<run>/metrics.json",
        "train.py",
        ("ckpt_path={run}/metrics.json",),
        "is not a tierkit training checkpoint",
    ),
    Case(
        "python train.py ckpt_path=<checkpoint that runs code when unpickled>",
        "train.py",
        ("ckpt_path={evil}",),
        "is not a tierkit training checkpoint (UnpicklingError",
    ),
    Case(
        "python train.py ckpt_path=<checkpoint with one weight changed after training>",
        "train.py",
        ("ckpt_path={changed_run}/checkpoints/last.ckpt",),
        "changed after it was saved: its weights or run config no longer match the sha256 recorded in it",
    ),
    Case(
        "python train.py teacher.ckpt_path=<cached teacher changed after saving>",
        "train.py",
        ("teacher.ckpt_path={changed_teacher}",),
        "changed after tierkit saved it: its content no longer matches the sha256 recorded in it",
    ),
    Case(
        "python train.py teacher.ckpt_path=<checkpoint that runs code when unpickled>",
        "train.py",
        ("teacher.ckpt_path={evil}",),
        "refuses to load because unpickling them could run code",
    ),
    Case(
        "python export.py run=/no/such/run",
        "export.py",
        ("run=/no/such/run",),
        "run folder /no/such/run does not exist",
    ),
    Case(
        "python export.py output_dir=<an earlier export>",
        "export.py",
        ("run={run}", "output_dir={export}"),
        "already holds an export (manifest.json)",
    ),
    Case(
        "python export.py precisions=[int4]",
        "export.py",
        ("run={run}", "precisions=[int4]"),
        "unknown precisions 'int4', set by the command line",
    ),
    Case(
        "python export.py int8_weight_bits=[4]",
        "export.py",
        ("run={run}", "int8_weight_bits=[4]"),
        "unknown int8_weight_bits 4, set by the command line",
    ),
    Case(
        "python export.py profiling.hardware=[tpu]",
        "export.py",
        ("run={run}", "profiling.hardware=[tpu]"),
        "unknown hardware config(s) ['tpu']",
    ),
    Case(
        "python export.py run=<run whose checkpoint runs code when unpickled>",
        "export.py",
        ("run={evil_run}",),
        "is not a readable tierkit checkpoint (UnpicklingError",
    ),
    Case(
        "python export.py run=<run whose checkpoint was changed after training>",
        "export.py",
        ("run={changed_run}",),
        "changed after it was saved",
    ),
    Case(
        "python -m tierkit.runtime select --manifest /no/manifest.json",
        "runtime",
        ("select", "--manifest", "/no/manifest.json"),
        "/no/manifest.json",
    ),
    Case(
        "python -m tierkit.runtime predict --manifest <export whose model file was altered>",
        "runtime",
        ("predict", "--manifest", "{tampered}/manifest.json", "--input", "{batch}"),
        "sha256",
    ),
    Case(
        "python -m tierkit.runtime predict --input <batch of the wrong shape>",
        "runtime",
        ("predict", "--manifest", "{export}/manifest.json", "--input", "{wrong_batch}"),
        "but the model takes (N, 1, 16, 16)",
    ),
    Case(
        "python -m tierkit.runtime predict --input <empty file>",
        "runtime",
        ("predict", "--manifest", "{export}/manifest.json", "--input", "{empty}"),
        "not a plain .npy array (No data left in file)",
    ),
    Case(
        "python -m tierkit.runtime select --device <1 MiB device>",
        "runtime",
        ("select", "--manifest", "{export}/manifest.json", "--device", "{tiny_device}"),
        "no shipping variant fits",
    ),
]


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders``: what a failed command must leave untouched."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix != ".lock"
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A finished run, its teacher cache and its export, plus the broken inputs the cases point at."""
    root = tmp_path_factory.mktemp("bad-input")
    run = root / "outputs" / "run1"
    trained = run_cli(root, *TINY, f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    export = root / "exports" / "e1"
    exported = run_cli(root, f"run={run}", f"output_dir={export}", *QUICK_PROFILE, script="export.py")
    assert exported.returncode == 0, exported.stderr[-3000:]
    evil = root / "evil.ckpt"
    torch.save({"tierkit": Payload(root / "payload-ran"), "state_dict": {}}, evil)
    evil_run = root / "evil_run"
    (evil_run / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, evil_run / "checkpoints" / "best.ckpt")
    changed_run = root / "changed_run"
    shutil.copytree(run, changed_run)
    for path in (changed_run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        next(iter(checkpoint["state_dict"].values())).view(-1)[0] += 1.0
        torch.save(checkpoint, path)
    changed_teacher = root / "changed_teacher.pt"
    teacher = torch.load(next((root / "cache").rglob("teacher.pt")), weights_only=True)
    teacher["metrics"]["test_acc"] = 1.0
    torch.save(teacher, changed_teacher)
    tampered = root / "tampered"
    shutil.copytree(export, tampered)
    # Every model file altered: which variant the runtime picks depends on the measured latencies.
    for model in tampered.rglob("*.onnx"):
        with model.open("ab") as model_file:
            model_file.write(b"\0")
    torch.save({"encoder.weight": torch.zeros(4, 4)}, root / "other_architecture.pt")
    torch.save({"epoch": 1, "state_dict": {"model.encoder.weight": torch.zeros(4, 4)}}, root / "lightning.ckpt")
    (root / "empty.npy").touch()
    np.save(root / "batch.npy", np.zeros((2, 1, 16, 16), dtype=np.float32))
    np.save(root / "wrong_batch.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    (root / "tiny_device.json").write_text(json.dumps({"cores": 1, "memory_mib": 1}))
    places = {
        "run": run,
        "export": export,
        "evil": evil,
        "evil_run": evil_run,
        "changed_run": changed_run,
        "changed_teacher": changed_teacher,
        "tampered": tampered,
        "batch": root / "batch.npy",
        "empty": root / "empty.npy",
        "wrong_batch": root / "wrong_batch.npy",
        "tiny_device": root / "tiny_device.json",
        "other_architecture": root / "other_architecture.pt",
        "lightning": root / "lightning.ckpt",
    }
    return root, places, (run, export, root / "cache")


def run_case(root: Path, case: Case, places: dict[str, Path], run_dir: Path) -> subprocess.CompletedProcess:
    args = [arg.format(**places) for arg in case.args]
    if case.script == "runtime":
        return subprocess.run(
            [sys.executable, "-m", "tierkit.runtime", *args], cwd=root, capture_output=True, text=True, timeout=120
        )
    if case.script == "sensitivity":
        return subprocess.run(
            [sys.executable, "-m", "tierkit.quant.sensitivity", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
    if case.script == "export.py":
        return run_cli(root, *QUICK_PROFILE, *args, script="export.py")
    # A case that names its student, or is about the default one, drops FAST's pinned tiny scratch student.
    own_student = case.default_student or any(arg.startswith("student=") for arg in args)
    derived = case.default_student or "student=from_teacher" in args
    tiny = [
        arg
        for arg in TINY
        if not (own_student and arg.startswith("student=")) and not (derived and arg.startswith("model.student."))
    ]
    return run_cli(root, *tiny, *args, f"hydra.run.dir={run_dir}")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.shown for case in CASES])
def test_bad_input_gets_one_clear_message_and_damages_nothing(workspace, case):
    root, places, protected = workspace
    before = snapshot(*protected)
    run_dir = root / "outputs" / f"case{CASES.index(case)}"
    result = run_case(root, case, places, run_dir)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert case.message in output, output[-2000:]
    assert "Traceback" not in output
    assert snapshot(*protected) == before, "a failed command changed an earlier run, the teacher cache or an export"
    assert not (root / "payload-ran").exists(), "a checkpoint's pickled code ran"
    assert not (run_dir / "metrics.json").exists()


def test_readme_table_lists_every_case():
    readme = (REPO / "README.md").read_text()
    missing = [case.shown for case in CASES if f"`{case.shown}`" not in readme or case.message not in readme]
    assert not missing, f"README's bad-input table lacks {missing}"
