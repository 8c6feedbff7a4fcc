"""`python train.py` as a user runs it: end to end, resume, and one clear message per mistake."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from tierkit.export.tiers import budget_latency
from tierkit.models.checkpoint import load_student
from tierkit.runtime import DeviceInfo, NoVariantFits, load_manifest, select_variant, verify_file

from conftest import FAST, REPO, fake_slurm, run_cli

# Every test here runs the entry points as subprocesses: the full suite's tier (pytest -m 'not slow' skips it).
pytestmark = pytest.mark.slow

TINY = [*FAST, "debug=tiny"]
# Two epochs with a pruning step at each.
PRUNED = [
    "trainer.max_epochs=2",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=1",
    "callbacks.pruning.steps=2",
    "callbacks.pruning.target=0.5",
    "callbacks.pruning.round_to=null",
    "callbacks.pruning.schedule=linear",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run = root / "outputs" / "run1"
    result = run_cli(root, *TINY, *PRUNED, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run, result


def test_train_writes_a_complete_run_folder(finished_run):
    _, run, result = finished_run
    for path in (".hydra/config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json"):
        assert (run / path).is_file(), path
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"]["params"] < metrics["teacher"]["params"]
    assert 0 <= metrics["student"]["test_acc"] <= 1 and 0 <= metrics["teacher"]["test_acc"] <= 1
    assert metrics["checkpoints"]["last"].endswith("last.ckpt")
    assert "tierkit run summary" in result.stdout


def test_checkpoint_carries_the_composed_config_and_pruned_shapes(finished_run):
    _, run, _ = finished_run
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    student, _ = load_student(run / "checkpoints" / "best.ckpt")
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(p.numel() for p in student.parameters()) == metrics["student"]["params"]
    assert metrics["pruning"]["history"][-1]["params"] == metrics["student"]["params"]
    config = checkpoint["tierkit"]["config"]
    assert config["data"]["_target_"] == "tierkit.data.SyntheticDataModule"
    assert config["model"]["student"]["base_channels"] == 8
    assert not any(k.startswith("_teacher") for k in checkpoint["state_dict"])


def test_resume_from_last_continues_training(finished_run):
    root, first_run, _ = finished_run
    # A resumed run takes the model from the checkpoint even if today's command line says otherwise.
    result = run_cli(
        root,
        *TINY,
        *PRUNED,
        "tier.student_width=0.9",
        "ckpt_path=last",
        "trainer.max_epochs=3",
        f"hydra.run.dir={root / 'r2'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "r2" / "metrics.json").read_text())
    first = json.loads((first_run / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert first["pruning"]["steps_done"] == metrics["pruning"]["steps_done"] == 2
    assert metrics["student"]["architecture"] == first["student"]["architecture"]
    assert metrics["student"]["params"] == first["student"]["params"], "the pruned structure came back"
    assert metrics["pruning"]["history"] == first["pruning"]["history"]
    assert "Resuming from" in result.stdout + result.stderr


def test_nan_loss_stops_without_leaving_a_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        tmp_path, *TINY, "distill.alpha=0", "optimizer.lr=1e30", "trainer.detect_anomaly=false", f"hydra.run.dir={run}"
    )
    assert result.returncode == 2
    assert "loss became nan" in result.stdout + result.stderr
    assert not (run / "checkpoints" / "best.ckpt").exists()


EXPORT_FAST = [
    "profiling.repeats=20",
    "profiling.warmup=2",
    "profiling.throughput_repeats=4",
    "profiling.operator_runs=5",
]


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    root, run, _ = finished_run
    out = tmp_path_factory.mktemp("export") / "exports"
    result = run_cli(root, f"run={run}", f"output_dir={out}", *EXPORT_FAST, script="export.py")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, out, result


def test_export_writes_a_valid_manifest_with_verified_fp32_fp16_int8(exported):
    run, out, _ = exported
    manifest = load_manifest(out / "manifest.json")
    variants = {v["name"].removeprefix("midrange-"): v for v in manifest["variants"]}
    assert sorted(variants) == ["fp16", "fp32", "int8", "int8-w7"]
    assert all(v["tier"] == "midrange" and verify_file(out, v) for v in variants.values())
    full, reduced = variants["int8"], variants["int8-w7"]
    assert (full["weight_bits"], reduced["weight_bits"]) == (8, 7)
    assert full["cpu_classes"] == ["x86_vnni", "arm"] and reduced["cpu_classes"] == ["x86_vnni", "x86_no_vnni", "arm"]
    assert reduced["file"] == "midrange/int8_w7.onnx" and reduced["float_compute_ops"] == []
    # The full-range file's accuracy where it saturates is emulated on a VNNI machine, measured on one without.
    hows = {cpu: facts["how"] for cpu, facts in full["accuracy_by_cpu"].items()}
    assert hows["x86_vnni"] == hows["arm"] != hows["x86_no_vnni"]
    assert variants["fp32"]["file"] == "midrange/fp32.onnx"
    assert variants["fp32"]["max_logit_difference"] < 1e-3
    assert variants["int8"]["float_compute_ops"] == [], "INT8 layers must run on integer kernels"
    assert variants["int8"]["int8_method"] == "ptq" and len(variants["int8"]["calibration"]["sha256"]) == 64
    assert variants["fp16"]["bytes"] < variants["fp32"]["bytes"]
    # Weights are stored as int8 (on a model this tiny, per-channel scales and graph overhead outweigh them).
    int8_graph = onnx.load(str(out / variants["int8"]["file"])).graph
    assert any(init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4 for init in int8_graph.initializer)
    metrics = json.loads((run / "metrics.json").read_text())
    assert variants["fp32"]["params"] == metrics["student"]["params"], "the pruned student is exported"
    teacher = manifest["teacher"]
    assert teacher["params"] == metrics["teacher"]["params"] and verify_file(out, teacher)
    for v in variants.values():
        assert v["accuracy_drop"] == pytest.approx(teacher["accuracy"] - v["accuracy"])
        assert v["budgets"] == {"max_drop_vs_teacher": 0.01, "max_size_kib": 256, "max_latency_ms": 0.3}
        assert v["budget_hardware"] == "cpu_2thread" and v["device"] == {"min_cores": 2, "min_memory_mib": 2048}
    assert manifest["provenance"]["packages"]["onnxruntime"] and manifest["provenance"]["cpu"]["model"]


def test_export_profiles_every_setting_and_ships_one_variant_per_tier(exported):
    _, out, result = exported
    manifest = load_manifest(out / "manifest.json")
    shipped = [v for v in manifest["variants"] if v["ships"]]
    measured = {(row["hardware"], row["graph_optimization_level"]) for row in manifest["teacher"]["latency"]}
    expected = {
        (h, level)
        for h in ("cpu_1thread", "cpu_2thread", "cpu_all")
        for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_ALL")
    }
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        expected |= {("cuda", "ORT_ENABLE_BASIC"), ("cuda", "ORT_ENABLE_ALL")}
    else:
        assert any(note.startswith("cuda:") for note in manifest["profiling"]["skipped"])
    assert measured == expected
    passing = []
    for v in manifest["variants"]:
        assert {(row["hardware"], row["graph_optimization_level"]) for row in v["latency"]} == expected
        assert v["setting"]["hardware"] in {h for h, _ in expected} and v["operators"]
        passed = all(v["checks"].values()) and v["precision"] in v["allowed_precisions"]
        assert passed or not v["ships"], "a variant over budget never ships"
        passing += [v] if passed else []
    # Exactly one ships when any passes its budgets: the fastest of those on the budget hardware, or one that times
    # within ship_latency_tolerance (5%) of it and is at least as accurate on validation.
    assert len(shipped) == min(1, len(passing))
    if shipped:
        fastest = min(passing, key=lambda v: budget_latency(v)["p50_ms"])
        assert budget_latency(shipped[0])["p50_ms"] <= 1.05 * budget_latency(fastest)["p50_ms"]
        assert shipped[0]["val_accuracy"] >= fastest["val_accuracy"]
        assert f"midrange ships {shipped[0]['name']}" in result.stdout
    else:
        assert "midrange ships nothing" in result.stdout
    report = (out / "report.md").read_text()
    assert all(f"| {v['name']} |" in report for v in manifest["variants"])
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_runtime_selects_and_runs_the_exported_variant(exported):
    _, out, _ = exported
    manifest = load_manifest(out / "manifest.json")
    for v in manifest["variants"]:  # make the INT8 files the tier's picks, so selection itself is what is tested
        v["ships"] = v["name"] == "midrange-int8"
        v["ships_for"] = {"midrange-int8": ["x86_vnni", "arm"], "midrange-int8-w7": ["x86_no_vnni", "unknown_cpu"]}.get(
            v["name"], []
        )
    vnni_laptop = DeviceInfo(cores=2, memory_mib=4096, cpu_flags=["avx2", "avx512_vnni"])
    assert select_variant(manifest, vnni_laptop).variant["name"] == "midrange-int8"
    phone = DeviceInfo(cores=2, memory_mib=4096)  # no cpu_flags: only files exact on every CPU qualify
    selection = select_variant(manifest, phone)
    assert selection.variant["name"] == "midrange-int8-w7" and "stands in for midrange-int8" in selection.reason
    assert selection.setting["intra_op_num_threads"] in (0, 1, 2)
    with pytest.raises(NoVariantFits, match="tier needs >= 2048 MiB memory"):
        select_variant(manifest, DeviceInfo(cores=2, memory_mib=1024))
    edited = out / "manifest-int8-ships.json"  # beside the original, so the model paths still resolve
    edited.write_text(json.dumps(manifest))
    device = out / "phone.json"
    device.write_text(json.dumps({"cores": 2, "memory_mib": 4096}))
    batch = out / "batch.npy"
    np.save(batch, np.random.default_rng(0).standard_normal((3, *manifest["input"]["shape"])).astype(np.float32))
    common = ["--manifest", str(edited), "--device", str(device)]
    chosen = _runtime_cli("select", *common)
    assert json.loads(chosen.stdout)["variant"] == selection.variant["name"], chosen.stderr
    predicted = _runtime_cli("predict", *common, "--input", str(batch))
    assert len(json.loads(predicted.stdout)["predictions"]) == 3, predicted.stderr


def _runtime_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierkit.runtime", *args], capture_output=True, text=True, check=False)


def test_export_refuses_to_write_over_an_earlier_export(exported, finished_run):
    root, run, _ = finished_run
    _, out, _ = exported
    before = (out / "manifest.json").read_bytes()
    result = run_cli(root, f"run={run}", f"output_dir={out}", script="export.py")
    assert result.returncode == 2
    assert "already holds an export" in result.stdout + result.stderr
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_export_profiles_under_a_hardware_config_of_your_own(finished_run, tmp_path):
    """A hardware config in a --config-dir is composed by Hydra like the shipped ones."""
    root, run, _ = finished_run
    own = tmp_path / "myconf" / "hardware"
    own.mkdir(parents=True)
    (own / "pixel_big_core.yaml").write_text(
        "name: pixel_big_core\nexecution_providers: [CPUExecutionProvider]\nintra_op_num_threads: 1\n"
        "inter_op_num_threads: 1\ngraph_optimization_level: ORT_ENABLE_BASIC\n"
    )
    out = tmp_path / "exports"
    hardware = "profiling.hardware=[cpu_2thread,pixel_big_core]"
    args = ["--config-dir", str(tmp_path / "myconf"), f"run={run}", f"output_dir={out}", hardware, *EXPORT_FAST]
    result = run_cli(root, *args, "profiling.graph_optimization_levels=null", script="export.py")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "manifest.json").read_text())["teacher"]["latency"]
    assert {(r["hardware"], r["graph_optimization_level"]) for r in rows} >= {("pixel_big_core", "ORT_ENABLE_BASIC")}


def test_export_of_a_missing_run_fails_clearly(tmp_path):
    result = run_cli(tmp_path, "run=/no/such/run", script="export.py")
    assert result.returncode == 2
    assert "/no/such/run does not exist" in result.stdout + result.stderr
    assert not (tmp_path / "exports").exists() or not list((tmp_path / "exports").rglob("export.json"))


def test_pruning_under_two_process_ddp_keeps_ranks_identical(tmp_path):
    run = tmp_path / "outputs" / "ddp"
    # debug bundles pin one device, so ask for two again.
    result = run_cli(tmp_path, *TINY, *PRUNED, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={run}")
    assert "MEMBER: 1/2" in result.stdout + result.stderr, "two processes must take part"
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruning"]["steps_done"] == 2
    student, _ = load_student(run / "checkpoints" / "best.ckpt")
    assert sum(p.numel() for p in student.parameters()) == metrics["student"]["params"]


def test_budget_pruning_under_two_process_ddp_rolls_back_and_retries_the_same_steps_on_both_ranks(tmp_path):
    run = tmp_path / "outputs" / "ddp-budget"
    budget = ["trainer.max_epochs=4", "callbacks.pruning.mode=budget", "callbacks.pruning.max_drop=0.02"]
    budget += ["callbacks.pruning.patience=0"]
    # The student after the second step (epoch 1) is scripted 50 points under the teacher on validation.
    scripted = ["+callbacks.gap._target_=scripted_gap.TeacherAhead", "+callbacks.gap.gaps=[0.0,0.5]"]
    args = [*TINY, *PRUNED, *budget, *scripted, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={run}"]
    result = run_cli(tmp_path, *args, test_helpers=True)
    assert "MEMBER: 1/2" in result.stdout + result.stderr, "two processes must take part"
    assert result.returncode == 0, result.stderr[-3000:]
    pruning = json.loads((run / "metrics.json").read_text())["pruning"]
    # Rolled back to the first step at epoch 2, then a step halfway to the one that broke the budget is tried at
    # once; it holds at epoch 3, which leaves no room for another.
    events = [(record["event"], record["epoch"]) for record in pruning["history"]]
    assert events == [("pruned", 0), ("pruned", 1), ("rolled back", 2), ("pruned", 2)]
    assert pruning["stopped_early"].startswith("stopped at 38%, which held the budget on validation where 50% had not")
    student, _ = load_student(run / "checkpoints" / "best.ckpt")
    retried = pruning["history"][-1]["kept"]
    kept = {name: int(m.weight.shape[0]) for name, m in student.named_modules() if name in retried}
    assert kept == retried, "the best checkpoint holds the structure the retry left"


def test_a_two_task_slurm_job_shares_one_folder_one_teacher_and_one_ddp_fit(tmp_path):
    """What srun starts for --ntasks-per-node=2: the same command twice, told apart by SLURM_PROCID. The teacher
    and the quantization stage (QAT forced) run in one process; the student's fit is DDP over both tasks."""
    job = 3000 + os.getpid() % 6000  # Lightning derives the rendezvous port from the job id
    args = [*TINY, *PRUNED, "trainer=ddp_cpu", "trainer.devices=2", "quantization=default"]
    args += ["quantization.max_drop_vs_fp32=-1", "quantization.escalation.enabled=false", "quantization.qat.epochs=3"]
    args += ["quantization.qat.callback.freeze_epoch=2"]
    tasks = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=tmp_path,
            env={**os.environ, "TIERKIT_CACHE_DIR": str(tmp_path / "cache"), **fake_slurm(tmp_path, job, 2, rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    for task, output in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, output[-3000:]
    assert "MEMBER: 2/2" in outputs[1], "the second task joins the first one's DDP fit"
    assert sum("Training teacher" in output for output in outputs) == 1, "one task trains the teacher"
    assert len(list((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))) == 1
    (run,) = (tmp_path / "outputs" / "slurm").iterdir()
    assert run.name == str(job), "both tasks write into the folder named after the job"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruning"]["steps_done"] == 2
    assert metrics["quantization"]["path"] in ("ptq", "qat") and (run / "quantization" / "int8_qat.onnx").is_file()
    assert not (run / "teacher").exists(), "the teacher's working folder goes once the teacher is cached"


def test_a_built_wheel_installs_working_commands_with_their_configs(tmp_path):
    """`pip install .` (not editable): the wheel carries the configs, so tierkit-train and tierkit-export work from
    any folder. Installed with --target beside this environment's dependencies, first on PYTHONPATH."""
    source, wheels, site, work = (tmp_path / name for name in ("source", "wheels", "site", "work"))
    work.mkdir()
    # A copy of what a build reads, so building leaves nothing in the checkout.
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("tierkit-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "TIERKIT_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    origin = subprocess.run(
        [sys.executable, "-c", "import tierkit; print(tierkit.__file__)"], env=env, capture_output=True, text=True
    )
    assert origin.stdout.startswith(str(site)), origin.stdout
    trained = subprocess.run(
        [str(site / "bin" / "tierkit-train"), "debug=tiny"], cwd=work, env=env, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    quick = ["profiling.repeats=10", "profiling.warmup=2", "profiling.throughput_repeats=2", "profiling.memory=false"]
    exported = subprocess.run(
        [str(site / "bin" / "tierkit-export"), "output_dir=exports/e1", "profiling.hardware=[cpu_2thread]", *quick],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert load_manifest(work / "exports" / "e1" / "manifest.json")["variants"]
    checked = subprocess.run(
        [str(site / "bin" / "tierkit-config"), "check", "distill.alpha=2"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 2 and "distill.alpha=2 is outside [0, 1]" in checked.stderr, checked.stderr
