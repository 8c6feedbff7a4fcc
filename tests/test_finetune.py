"""stage=finetune and data shifts: the compression survives, the shift is reproducible, mistakes are caught early."""

import json

import pytest
import torch

from tierkit.data.shift import DeviceShift
from tierkit.errors import TierkitError
from tierkit.models.checkpoint import load_student
from tierkit.models.qat import is_prepared, qat_settings, qat_stage
from tierkit.models.structure import describe_structure
from tierkit.utils.instantiate import instantiate

from conftest import FAST, compose_train, run_cli

TINY = [*FAST, "debug=tiny"]
PRUNED = [
    "trainer.max_epochs=2",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=1",
    "callbacks.pruning.steps=2",
    "callbacks.pruning.target=0.5",
    "callbacks.pruning.round_to=null",
]
CAMERA = {"rotation_deg": 15, "downscale": 2, "blur_sigma": 0.8, "noise_std": 0.05, "seed": 3}


def test_a_shift_is_seeded_and_draws_each_split_apart():
    images = torch.rand(6, 1, 16, 16)
    shift = DeviceShift(**CAMERA)
    assert torch.equal(shift.apply(images, 0), shift.apply(images, 0))
    assert not torch.equal(shift.apply(images, 0), shift.apply(images, 1))
    assert not torch.equal(shift.apply(images, 0), DeviceShift(**{**CAMERA, "seed": 4}).apply(images, 0))
    shifted = shift.apply(images, 0)
    assert shifted.shape == images.shape and shifted.min() >= 0 and shifted.max() <= 1
    assert torch.equal(DeviceShift().apply(images), images), "no shift leaves images as they are"


def test_each_shift_component_changes_the_images_as_described():
    flat = torch.full((2, 1, 8, 8), 0.5)
    assert torch.allclose(DeviceShift(brightness=0.1).apply(flat), flat + 0.1)
    assert torch.allclose(DeviceShift(contrast=0.5).apply(flat), flat), "contrast keeps a flat image"
    checker = (torch.arange(64).view(1, 1, 8, 8) % 2).float().repeat(2, 1, 1, 1)
    assert DeviceShift(blur_sigma=1.0).apply(checker)[..., 2:-2].std() < checker.std() / 10  # edges replicate
    assert DeviceShift(downscale=2).apply(checker).unique().tolist() == [0.5]
    assert DeviceShift(noise_std=0.1).apply(flat).std() > 0.05


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"blurr_sigma": 1.0}, "unknown shift setting"),
        ({"downscale": 0}, "downscale=0 must be an integer >= 1"),
        ({"contrast": 0}, "contrast=0 must be > 0"),
        ({"rotation_deg": 400}, "rotation_deg=400 must be in"),
    ],
)
def test_bad_shift_settings_are_refused(config, message):
    with pytest.raises(TierkitError, match=message):
        DeviceShift.from_config(config)


def test_shift_config_reaches_every_split(tmp_path):
    plain = instantiate(compose_train(tmp_path, *FAST).data, where="data")
    shifted = instantiate(compose_train(tmp_path, *FAST, "shift=camera").data, where="data")
    plain.setup()
    shifted.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(plain.splits[split].labels, shifted.splits[split].labels)
        assert not torch.equal(plain.splits[split].images, shifted.splits[split].images)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    run = root / "outputs" / "source"
    result = run_cli(root, *TINY, *PRUNED, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run


@pytest.fixture(scope="module")
def tuned_run(pruned_run):
    root, source = pruned_run
    run = root / "outputs" / "tuned"
    result = run_cli(
        root,
        *TINY,
        "stage=finetune",
        f"from_run={source}",
        "shift=camera",
        "finetune.epochs=2",
        "finetune.alpha=0.5",
        "quantization.enabled=true",
        "quantization.qat.enabled=false",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, source, run, result


@pytest.mark.slow
def test_finetune_keeps_the_pruned_structure_and_reports_before_and_after(tuned_run):
    _, source, run, result = tuned_run
    metrics = json.loads((run / "metrics.json").read_text())
    report = metrics["finetune"]
    assert metrics["stage"] == "finetune" and report["source_run"] == str(source)
    assert report["structure_unchanged"] is True
    assert report["shift"]["rotation_deg"] == 15
    for when in ("before", "after"):
        assert set(report[when]) == {"target_test_acc", "original_test_acc"}
    assert report["regained_points"] == pytest.approx(
        100 * (report["after"]["target_test_acc"] - report["before"]["target_test_acc"]), abs=0.01
    )
    original, _ = load_student(source / "checkpoints" / "best.ckpt")
    tuned, config = load_student(run / "checkpoints" / "best.ckpt")
    assert describe_structure(tuned) == describe_structure(original)
    assert config.data.shift.downscale == 2, "the checkpoint records the target data it was tuned on"
    assert not torch.equal(next(tuned.parameters()), next(original.parameters())), "the weights did train"
    assert "target device (shifted)" in result.stdout
    assert metrics["quantization"]["path"] == "ptq", "the tuned student goes through the quantization stage"
    # The tier's budgets judge the tuned student, against the teacher scored on the same shifted test images.
    verdict = metrics["verdict"]
    assert verdict["reason"].startswith(("PASS", "MISS")) and "accuracy" in verdict["checks"]
    assert f"tier {metrics['tier']} budgets" in result.stdout
    scored = {label: metrics["quantization"][label]["test_acc"] for label in ("fp32", "fp16")}
    if verdict["candidate"] in scored:
        drop = metrics["teacher"]["test_acc"] - scored[verdict["candidate"]]
        assert verdict["checks"]["accuracy"]["value"] == pytest.approx(drop)


@pytest.mark.slow
def test_a_finetuned_run_exports_like_any_other(tuned_run, tmp_path):
    root, _, run, _ = tuned_run
    out = tmp_path / "export"
    fast = ["profiling.hardware=[cpu_2thread]", "profiling.repeats=10", "profiling.operator_runs=5"]
    result = run_cli(root, f"run={run}", f"output_dir={out}", *fast, script="export.py")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = next(v for v in manifest["variants"] if v["precision"] == "int8")
    assert int8["float_compute_ops"] == []
    assert int8["params"] == json.loads((run / "metrics.json").read_text())["student"]["params"]


@pytest.mark.slow
def test_a_qat_student_keeps_its_frozen_quantization(tmp_path):
    source = tmp_path / "outputs" / "qat"
    qat = ["callbacks=qat", "~callbacks.pruning", "callbacks.qat.start_epoch=0", "callbacks.qat.activations_epoch=0"]
    result = run_cli(tmp_path, *TINY, *qat, "callbacks.qat.freeze_epoch=1", f"hydra.run.dir={source}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "outputs" / "tuned"
    result = run_cli(
        tmp_path, *TINY, "stage=finetune", f"from_run={source}", "finetune.epochs=1", f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, _ = load_student(source / "checkpoints" / "best.ckpt")
    after, _ = load_student(run / "checkpoints" / "best.ckpt")
    assert is_prepared(after) and qat_stage(after) == "frozen"
    assert qat_settings(after) == qat_settings(before)
    observed = [name for name in before.state_dict() if name.endswith(("min_val", "max_val"))]
    assert observed and all(torch.equal(before.state_dict()[n], after.state_dict()[n]) for n in observed)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stage=finetune"], "stage=finetune needs the run to start from"),
        (["stage=finetune", "from_run=/no/such/run"], "run folder /no/such/run does not exist"),
        (["stage=distil"], "unknown stage 'distil'"),
        (["from_run=/some/run"], "from_run is set, but stage=train trains from scratch"),
    ],
)
def test_finetune_mistakes_fail_before_training(tmp_path, args, message):
    result = run_cli(tmp_path, *TINY, *args)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints/*.ckpt"))


def test_a_student_smaller_than_its_teacher_counts_as_compressed_without_pruning(tmp_path):
    from tierkit.models.build import build_student
    from tierkit.stages.finetune import check_compressed

    # model=separable student=scratch ~callbacks.pruning: lowend's Fashion-MNIST recipe, compressed by size alone.
    small = compose_train(tmp_path, "data=synthetic", "model=separable", "student=scratch", "~callbacks.pruning")
    check_compressed(build_student(small), small, tmp_path / "best.ckpt")
    # The derived student, unpruned, is the teacher itself: nothing to keep, refused with its size.
    derived = compose_train(tmp_path, "data=synthetic", "student=from_teacher", "~callbacks.pruning")
    with pytest.raises(TierkitError, match=r"as large as its teacher \([\d,]+ parameters\)"):
        check_compressed(build_student(derived), derived, tmp_path / "best.ckpt")


def test_the_tuned_student_is_quantized_with_the_source_runs_int8_layout(tmp_path):
    from tierkit.stages.finetune import finetune_config

    source = compose_train(
        tmp_path, *FAST, "quantization=default", "quantization.float_first_layer=true", "quantization.per_channel=false"
    )
    today = compose_train(tmp_path, *FAST, "quantization=default", "quantization.calibration.method=entropy")
    tuned = finetune_config(today, source).quantization
    # The layers the source kept in float and its weight scales shape the INT8 graph: they come from the source.
    assert tuned.float_first_layer is True and tuned.per_channel is False
    assert tuned.calibration.method == "entropy", "calibration still follows today's command line"


@pytest.mark.slow
def test_uncompressed_source_or_mismatched_data_is_refused(pruned_run, tmp_path):
    root, source = pruned_run
    plain = tmp_path / "outputs" / "plain"
    # A student at the teacher's full width, never pruned: nothing compressed (a narrower one is, by its width).
    full = ["tier.student_width=1.0", "~callbacks.pruning"]
    assert run_cli(tmp_path, *TINY, *full, f"hydra.run.dir={plain}").returncode == 0
    result = run_cli(tmp_path, *TINY, "stage=finetune", f"from_run={plain}")
    assert result.returncode == 2 and "as large as its teacher" in result.stdout + result.stderr
    result = run_cli(root, *TINY, "stage=finetune", f"from_run={source}", "data.num_classes=5")
    assert result.returncode == 2 and "student was trained on [1, 16, 16] with 4" in result.stdout + result.stderr
