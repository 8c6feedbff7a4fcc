"""The whole pipeline in-process: train(cfg) through the quantization stage, then export(cfg) and the runtime's pick.

The fast tier's end-to-end check: the entry points as users type them run as subprocesses in test_cli.py (slow).
"""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from tierkit.cli.train import train
from tierkit.runtime import DeviceInfo, load_manifest, select_variant, verify_file
from tierkit.stages.export import export

from conftest import CONFIG_DIR, FAST, QUICK_PROFILE, compose_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    overrides = [*FAST, "debug=tiny", "quantization=ptq", "quantization.calibration.samples=64"]
    # Budgets any variant meets, so that what is tested is shipping and selection, not this tiny model's accuracy.
    loose = [
        "tier.budgets.max_drop_vs_teacher=1.0",
        "tier.budgets.max_size_kib=100000",
        "tier.budgets.max_latency_ms=100",
    ]
    cfg = compose_train(root, *overrides, *loose, "quantization.calibration.batch_size=32")
    return root, train(cfg)


def test_train_returns_what_it_writes_to_metrics_json(trained):
    root, metrics = trained
    run = root / "run"
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["quantization"]["path"] == "ptq" and metrics["quantization"]["ptq"]["float_compute_ops"] == []
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "quantization" / "int8_ptq.onnx").is_file()
    assert metrics["student"]["params"] < metrics["teacher"]["params"]


@pytest.fixture(scope="module")
def exported(trained):
    root, _ = trained
    out = root / "exports" / "e1"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"run={root / 'run'}", f"output_dir={out}", *QUICK_PROFILE])
    return out, export(cfg)


def test_export_ships_a_variant_the_runtime_can_pick(exported):
    out, manifest = exported
    assert load_manifest(out / "manifest.json") == json.loads(json.dumps(manifest))
    names = {v["name"] for v in manifest["variants"]}
    assert names == {"midrange-fp32", "midrange-fp16", "midrange-int8", "midrange-int8-w7"}
    assert all(all(v["checks"].values()) for v in manifest["variants"])
    (winner,) = [v for v in manifest["variants"] if v["ships"]]
    targets = sorted(target for v in manifest["variants"] for target in v["ships_for"])
    assert targets == ["arm", "unknown_cpu", "x86_no_vnni", "x86_vnni"], "one pick per CPU class"
    for flags in (["avx2"], ["avx2", "avx512_vnni"]):  # x86 without and with VNNI
        selection = select_variant(manifest, DeviceInfo(cores=2, memory_mib=4096, cpu_flags=flags))
        assert verify_file(out, selection.variant)
        if "avx512_vnni" in flags:
            assert selection.variant["name"] == winner["name"]
        else:
            assert selection.variant.get("weight_bits") != 8, "full-range INT8 never runs without VNNI"


def test_export_ships_the_files_training_judged(trained, exported):
    """INT8 is made once: where export would make the same file (same checkpoint, weight range and calibration),
    it ships training's file byte for byte; the other weight range it makes itself and says why."""
    (root, metrics), (_, manifest) = trained, exported
    variants = {v["name"].removeprefix("midrange-"): v for v in manifest["variants"]}
    report = metrics["quantization"]
    trained_key = "int8-w7" if report["reduce_range"] else "int8"
    other_key = "int8" if report["reduce_range"] else "int8-w7"
    for key, judged in (("fp32", "fp32"), ("fp16", "fp16"), (trained_key, "ptq")):
        assert variants[key]["made_by"] == "training", key
        assert variants[key]["sha256"] == report[judged]["sha256"], f"{key} is the file training measured"
    assert variants[other_key]["made_by"] == "export"
    assert "reduce_range" in variants[other_key]["remade_because"]
    assert torch.load(root / "run" / "checkpoints" / "best.ckpt", weights_only=True)["tierkit"]["int8_path"] == "ptq"


def test_testing_the_best_checkpoint_leaves_every_callback_in_the_state_the_fit_ended_with(tmp_path):
    from scripted_gap import FallingAccuracy

    from tierkit.stages.fit import fit_student
    from tierkit.utils.instantiate import instantiate

    cfg = compose_train(
        tmp_path,
        *FAST,
        "debug=tiny",
        "trainer.max_epochs=3",
        "distill.alpha=0",
        "~callbacks.pruning",
        "+callbacks.falling._target_=scripted_gap.FallingAccuracy",
    )
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    trainer, _, checkpoints, _ = fit_student(cfg, datamodule, None, [], ckpt_path=None)
    assert torch.load(checkpoints.best, weights_only=False)["epoch"] == 0  # the best checkpoint is the first epoch's
    falling = next(c for c in trainer.callbacks if isinstance(c, FallingAccuracy))
    assert falling.epochs_seen == 3
