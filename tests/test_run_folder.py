"""The run folder's one owner: metrics.json's typed schema, and which of training's files export may ship."""

import json
from pathlib import Path

import pytest

from tierkit.errors import TierkitError
from tierkit.export.variants import TrainedFiles
from tierkit.run_folder import (
    SCHEMA_VERSION,
    ModelSummary,
    OnnxScores,
    QuantizationReport,
    RunFolder,
    RunMetrics,
)
from tierkit.runtime import sha256_of

CALIBRATION = {"samples": 64, "batch_size": 32, "method": "minmax", "seed": 0, "sha256": "ab" * 32}


def _metrics(folder: RunFolder) -> RunMetrics:
    ptq_file = folder.quantization / "int8_ptq.onnx"
    ptq_file.parent.mkdir(parents=True, exist_ok=True)
    ptq_file.write_bytes(b"an onnx file")
    report = QuantizationReport(
        max_drop_vs_fp32=0.01,
        reduce_range=False,
        per_channel=True,
        path="ptq",
        budget_met=True,
        reason="within budget",
        source_checkpoint="checkpoints/best.ckpt",
        calibration=dict(CALIBRATION),
        fp32=OnnxScores(file="fp32.onnx", bytes=10, val_acc=0.9, test_acc=0.89),
        ptq=OnnxScores(
            file=ptq_file.name, bytes=12, val_acc=0.895, test_acc=0.885, drop=0.005, sha256=sha256_of(ptq_file)
        ),
    )
    student = ModelSummary(architecture="cnn", test_acc=0.9, params=10, macs=20, size_bytes=40, agreement=None)
    return RunMetrics(
        tier="lowend", seed=1, epochs=None, student=student, checkpoints={"best": "b", "last": "l"}, quantization=report
    )


def test_metrics_round_trip_through_json(tmp_path):
    folder = RunFolder(tmp_path)
    metrics = _metrics(folder)
    folder.write_metrics(metrics)
    data = json.loads(folder.metrics_file.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["epochs"] is None
    assert "teacher" not in data and "agreement" not in data["student"], "sections a run lacks are left out"
    assert "fp16" not in data["quantization"] and "sha256" not in data["quantization"]["fp32"]
    assert folder.read_metrics() == metrics
    assert metrics.quantization.shipped() is metrics.quantization.ptq


def test_metrics_from_before_the_schema_version_still_read(tmp_path):
    folder = RunFolder(tmp_path)
    data = _metrics(folder).to_dict()
    del data["schema_version"]
    folder.metrics_file.write_text(json.dumps(data))
    assert folder.read_metrics().quantization.path == "ptq"


def test_a_newer_schema_or_broken_json_is_refused_with_a_clear_message(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_metrics() is None, "an unfinished run has no metrics"
    folder.metrics_file.write_text(json.dumps({**_metrics(folder).to_dict(), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(TierkitError, match=f"schema version {SCHEMA_VERSION + 1}.*reads versions up to"):
        folder.read_metrics()
    folder.metrics_file.write_text("{not json")
    with pytest.raises(TierkitError, match="is not valid JSON"):
        folder.read_metrics()
    data = _metrics(folder).to_dict()
    data["student"]["favourite_colour"] = "blue"
    folder.metrics_file.write_text(json.dumps(data))
    with pytest.raises(TierkitError, match=r"does not match metrics schema 2.*favourite_colour"):
        folder.read_metrics()


def test_run_folder_paths_and_resumable_checkpoints(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.checkpoint("best") == tmp_path / "checkpoints" / "best.ckpt"
    assert folder.checkpoint("last", qat=True) == tmp_path / "checkpoints" / "qat" / "last.ckpt"
    assert folder.resumable_checkpoints() == []
    folder.checkpoint("last").parent.mkdir(parents=True)
    folder.checkpoint("last").touch()
    assert folder.resumable_checkpoints() == [folder.checkpoint("last")]


def _settings(**changes):
    return {"reduce_range": False, "per_channel": True, "calibration": dict(CALIBRATION), **changes}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (None, ""),
        ({"settings": _settings(reduce_range=True)}, "differ from training's: reduce_range"),
        ({"settings": _settings(calibration={**CALIBRATION, "samples": 32})}, "differ from training's: calibration"),
        ({"settings": _settings(per_channel=False)}, "differ from training's: per_channel"),
        ({"loaded": "last"}, "export loads last.ckpt"),
        ({"tamper": True}, "missing or changed since training measured it"),
        ({"key": "qat"}, "training recorded no qat file"),
    ],
)
def test_export_ships_training_files_only_when_it_would_make_the_same_file(tmp_path, change, why):
    folder = RunFolder(tmp_path)
    change = change or {}
    trained = TrainedFiles(folder, _metrics(folder).quantization)
    if change.get("tamper"):
        (folder.quantization / "int8_ptq.onnx").write_bytes(b"another file")
    found, reason = trained.find(
        change.get("key", "ptq"), folder.checkpoint(change.get("loaded", "best")), change.get("settings", _settings())
    )
    assert (found == folder.quantization / "int8_ptq.onnx") == (not why)
    assert why in reason and bool(reason) == bool(why)
    assert TrainedFiles(folder, None).find("fp32", Path("x"))[0] is None
