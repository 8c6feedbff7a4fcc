"""Export's parts without training: settings, budgets and shipping, profiles, the plot, bad checkpoints."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.data import SyntheticDataModule
from tierkit.errors import TierkitError
from tierkit.export.cpu_classes import int8_cpu_facts
from tierkit.export.report import _pareto_front, plot_pareto, render_report
from tierkit.export.tiers import choose_shipping
from tierkit.export.variants import Run, export_calibration, int8_weight_bits, variant_files
from tierkit.models import SmallCNN
from tierkit.models.checkpoint import load_student
from tierkit.onnxio import export_onnx
from tierkit.onnxio.verify import check_onnx, float_compute_ops
from tierkit.profile import HardwareSetting, load_settings
from tierkit.profile.memory import peak_memory_mib
from tierkit.profile.operators import operator_profile
from tierkit.profile.variants import profile_models
from tierkit.quant import calibration_samples, quantize_int8
from tierkit.quant.ptq import samples_digest
from tierkit.run_folder import ModelSummary, OnnxScores, QuantizationReport, RunFolder, RunMetrics
from tierkit.runtime import sha256_of
from tierkit.utils.files import save_torch

from conftest import CONFIG_DIR

HARDWARE_DIR = CONFIG_DIR / "hardware"
ONE_THREAD = HardwareSetting("cpu_1thread", ("CPUExecutionProvider",), 1, 1, "ORT_ENABLE_ALL")
BUDGETS = {"max_drop_vs_teacher": 0.01, "max_size_kib": 64, "max_latency_ms": 0.5}


def _row(hardware: str, p50: float) -> dict:
    return {
        **ONE_THREAD.as_row(),
        "hardware": hardware,
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p50,
        "throughput_per_s": 1 / p50,
    }


def _variant(precision: str, accuracy: float, kib: float, p50: float, allowed=("fp32", "fp16", "int8")) -> dict:
    return {
        "name": f"lowend-{precision}",
        "tier": "lowend",
        "precision": precision,
        "accuracy": accuracy,
        "bytes": int(kib * 1024),
        "budgets": dict(BUDGETS),
        "budget_hardware": "cpu_1thread",
        "allowed_precisions": list(allowed),
        "latency": [
            _row("cpu_1thread", p50 * 3),  # a slower optimization level
            _row("cpu_1thread", p50),
            _row("cpu_all", p50 / 10),  # not the budget hardware
        ],
    }


def test_the_fastest_variant_within_every_budget_ships_even_if_it_is_fp32():
    fp32, fp16, int8 = (
        _variant("fp32", 0.985, 40, 0.05),
        _variant("fp16", 0.985, 22, 0.06),
        _variant("int8", 0.98, 15, 0.08),
    )
    choose_shipping([fp32, fp16, int8], reference_accuracy=0.986)
    assert [fp32["ships"], fp16["ships"], int8["ships"]] == [True, False, False]
    assert all(v["checks"] == {"accuracy": True, "size": True, "latency": True} for v in (fp32, fp16, int8))
    assert "fastest of 3" in fp32["why"] and "0.0500 ms" in fp32["why"], "the budget hardware's best row counts"
    assert "lowend-fp32 is faster" in int8["why"]


def test_full_range_int8_ships_only_where_it_is_exact_and_the_7_bit_file_stands_in():
    fp32 = _variant("fp32", 0.985, 40, 0.05)
    full = {**_variant("int8", 0.985, 15, 0.02), "cpu_classes": ["x86_vnni", "arm"], "weight_bits": 8}
    reduced = {**_variant("int8", 0.984, 15, 0.021), "name": "lowend-int8-w7", "weight_bits": 7}
    reduced["cpu_classes"] = ["x86_vnni", "x86_no_vnni", "arm"]
    choose_shipping([fp32, full, reduced], reference_accuracy=0.986)
    assert full["ships"] and full["ships_for"] == ["x86_vnni", "arm"]
    assert not reduced["ships"] and reduced["ships_for"] == ["x86_no_vnni", "unknown_cpu"]
    assert fp32["ships_for"] == [] and "lowend-int8 is faster" in fp32["why"]
    assert "ships for x86 without VNNI" in reduced["why"] and "8-bit INT8 weights saturate" in reduced["why"]


def _int8_pair(full_p50: float, reduced_p50: float) -> tuple[dict, dict]:
    """A full-range INT8 file more accurate on validation than its 7-bit twin, at the given p50s."""
    full = {**_variant("int8", 0.9234, 23, full_p50), "val_accuracy": 0.925, "cpu_classes": ["x86_vnni", "arm"]}
    reduced = {**_variant("int8", 0.9226, 23, reduced_p50), "name": "lowend-int8-w7", "val_accuracy": 0.9238}
    reduced["cpu_classes"] = ["x86_vnni", "x86_no_vnni", "arm"]
    return full, reduced


def test_of_variants_that_time_alike_the_more_accurate_on_validation_ships():
    full, reduced = _int8_pair(0.0606, 0.0603)
    choose_shipping([full, reduced], reference_accuracy=0.93, latency_tolerance=0.05)
    assert full["ships"] and full["ships_for"] == ["x86_vnni", "arm"], "0.5% slower is timing noise, not a loss"
    assert reduced["ships_for"] == ["x86_no_vnni", "unknown_cpu"], "the exact file still stands in without VNNI"
    assert "most accurate on validation (92.50%) of those within 5% of the fastest" in full["why"]
    assert "lowend-int8 is as fast on cpu_1thread (within 5%: 0.0606 ms vs 0.0603 ms)" in reduced["why"]
    assert "more accurate on validation (92.50% vs 92.38%)" in reduced["why"]
    reduced["val_accuracy"] = full["val_accuracy"]
    choose_shipping([full, reduced], reference_accuracy=0.93, latency_tolerance=0.05)
    assert reduced["ships"], "as accurate on validation, the faster file ships"
    assert full["why"].endswith(
        "as fast on cpu_1thread (within 5%: 0.0603 ms vs 0.0606 ms) and as accurate on validation (92.50%)"
    )


def test_with_no_latency_tolerance_or_a_clear_gap_the_fastest_ships_whatever_its_accuracy():
    for tolerance, full_p50 in ((0.0, 0.0606), (0.05, 0.0700)):
        full, reduced = _int8_pair(full_p50, 0.0603)
        choose_shipping([full, reduced], reference_accuracy=0.93, latency_tolerance=tolerance)
        assert reduced["ships"] and not full["ships"] and full["ships_for"] == []
        assert "fastest of 2" in reduced["why"] and "lowend-int8-w7 is faster" in full["why"]


def test_without_an_exact_int8_file_cpus_without_vnni_get_the_fastest_float_variant():
    fp32 = _variant("fp32", 0.985, 40, 0.05)
    full = {**_variant("int8", 0.985, 15, 0.02), "cpu_classes": ["x86_vnni", "arm"]}
    choose_shipping([fp32, full], reference_accuracy=0.986)
    assert full["ships_for"] == ["x86_vnni", "arm"] and fp32["ships_for"] == ["x86_no_vnni", "unknown_cpu"]


def test_variants_over_budget_or_not_allowed_do_not_ship_and_say_why():
    too_big = _variant("fp32", 0.985, 80, 0.05)
    too_lossy = _variant("fp16", 0.97, 20, 0.05)
    not_allowed = _variant("int8", 0.985, 15, 0.01, allowed=("fp32",))
    choose_shipping([too_big, too_lossy, not_allowed], reference_accuracy=0.986)
    assert not any(v["ships"] for v in (too_big, too_lossy, not_allowed))
    assert too_big["checks"]["size"] is False and "size 80.0 > 64 KiB" in too_big["why"]
    assert too_lossy["checks"]["accuracy"] is False and "1.60 > 1.00 points" in too_lossy["why"]
    assert "does not ship int8" in not_allowed["why"]


def test_slow_variant_fails_its_latency_budget_on_the_tier_hardware():
    slow = _variant("fp32", 0.985, 40, 0.9)
    choose_shipping([slow], reference_accuracy=0.986)
    assert slow["checks"]["latency"] is False and "on cpu_1thread" in slow["why"]


def test_settings_expand_levels_and_skip_missing_providers(monkeypatch):
    settings, skipped = load_settings(HARDWARE_DIR, ["cpu_1thread", "cpu_all"], ["ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
    assert [(s.hardware, s.graph_optimization_level) for s in settings] == [
        ("cpu_1thread", "ORT_ENABLE_BASIC"),
        ("cpu_1thread", "ORT_ENABLE_ALL"),
        ("cpu_all", "ORT_ENABLE_BASIC"),
        ("cpu_all", "ORT_ENABLE_ALL"),
    ]
    assert settings[0].intra_op_num_threads == 1 and settings[2].intra_op_num_threads == 0
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    settings, skipped = load_settings(HARDWARE_DIR, ["cpu_1thread", "cuda"], None)
    assert [s.hardware for s in settings] == ["cpu_1thread"]
    assert skipped and "cuda" in skipped[0] and "CUDAExecutionProvider" in skipped[0]


@pytest.mark.parametrize(
    ("names", "levels", "message"),
    [
        (["cpu_9thread"], None, "unknown hardware config(s) ['cpu_9thread']"),
        ([], None, "profiling.hardware is empty"),
        (["cpu_1thread"], ["ORT_ENABLE_FAST"], "unknown graph optimization level(s) ['ORT_ENABLE_FAST']"),
    ],
)
def test_bad_profiling_config_is_refused(names, levels, message):
    with pytest.raises(TierkitError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_settings(HARDWARE_DIR, names, levels)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    large = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    return {
        "small": export_onnx(small, folder / "small.onnx", (1, 8, 8)),
        "large": export_onnx(large, folder / "large.onnx", (1, 8, 8)),
    }


def test_profile_rows_cover_every_setting_with_ordered_percentiles(small_models):
    settings, _ = load_settings(HARDWARE_DIR, ["cpu_1thread", "cpu_2thread"], None)
    seen = []
    rows = profile_models(small_models, [1, 8, 8], settings, 30, 3, 16, 6, advance=seen.append)
    assert seen == ["cpu_1thread enable_all", "cpu_2thread enable_all"]
    for name in small_models:
        assert [row["hardware"] for row in rows[name]] == ["cpu_1thread", "cpu_2thread"]
        for row in rows[name]:
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
            assert row["throughput_per_s"] > 0 and row["throughput_batch"] == 16
    # 64x more MACs cannot be faster: the measurement sees the models.
    assert rows["large"][0]["p50_ms"] > rows["small"][0]["p50_ms"]


def test_operator_profile_names_the_convolution_as_the_cost_of_a_conv_model(small_models):
    ops = operator_profile(small_models["large"], ONE_THREAD, np.zeros((1, 1, 8, 8), np.float32), runs=20, top=3)
    assert len(ops) <= 3 and ops[0]["op"] in {"Conv", "FusedConv"}
    assert all(0 < op["share"] <= 1 for op in ops) and sum(op["share"] for op in ops) <= 1.0001
    assert ops == sorted(ops, key=lambda op: op["share"], reverse=True)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is measured from Linux /proc")
def test_peak_memory_grows_with_the_model(tmp_path, small_models):
    big = nn.Sequential(nn.Flatten(), nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.Linear(4096, 10))
    path = export_onnx(big, tmp_path / "big.onnx", (1, 8, 8))  # 64 MiB of float32 weights
    small = peak_memory_mib(small_models["small"], ONE_THREAD, [1, 8, 8])
    large = peak_memory_mib(path, ONE_THREAD, [1, 8, 8])
    assert 0 <= small < 16
    assert large > 60, "loading 64 MiB of weights must show in the peak"


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 94.0), (0.5, 80.0)]
    assert _pareto_front(points) == [(0.5, 80.0), (1.0, 90.0), (2.0, 95.0)]


def test_report_and_plot_from_a_manifest(tmp_path):
    variants = [_variant("fp32", 0.985, 40, 0.05), _variant("int8", 0.98, 15, 0.08)]
    choose_shipping(variants, reference_accuracy=0.986)
    for v in variants:
        v.update(params=1000, macs=20000, peak_memory_mib=3.5, operators=[{"op": "Conv", "share": 0.8}])
    teacher = {**_variant("fp32", 0.986, 1000, 0.5), "name": "teacher", "params": 9, "macs": 9, "peak_memory_mib": None}
    del teacher["tier"], teacher["budget_hardware"]
    manifest = {
        "created": "2026-11-25T00:00:00+00:00",
        "provenance": {"cpu": {"model": "test cpu", "cores": 2}, "git_commit": "abc"},
        "teacher": teacher,
        "variants": variants,
        "profiling": {"plot_hardware": "cpu_1thread", "skipped": ["cuda: no CUDAExecutionProvider"]},
    }
    report = render_report(manifest)
    assert "| lowend-fp32 | yes | 98.50% | -0.10 | 40.0 KiB |" in report
    assert "cuda: no CUDAExecutionProvider" in report and "Conv 80%" in report
    png = plot_pareto(manifest, tmp_path / "pareto.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"format": 1}, "holds no run config"),
        ({"format": 99, "config": {"model": {}}}, "checkpoint format 99; this tierkit reads format 1"),
    ],
)
def test_checkpoint_without_config_or_from_another_format_is_refused(tmp_path, entry, message):
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "tierkit": entry}, path)
    with pytest.raises(TierkitError, match=message):
        load_student(path)


def test_an_invalid_onnx_file_is_refused_with_its_path(tmp_path, small_models):
    model = onnx.load(str(small_models["small"]))
    model.graph.node[0].input[0] = "no_such_tensor"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    assert check_onnx(small_models["small"]) == small_models["small"]
    with pytest.raises(TierkitError, match=r"broken\.onnx is not a valid ONNX model"):
        check_onnx(broken)


CALIBRATION = {"samples": 32, "batch_size": 16, "method": "minmax", "seed": 0}


def _export_cfg(int8_weight_bits: list[int], per_channel: bool | None) -> DictConfig:
    """The export settings variant_files reads, calibrating as each run did."""
    return OmegaConf.create(
        {
            "checkpoint": "best",
            "max_logit_difference": 1e-3,
            "precisions": ["fp32", "int8"],
            "calibration": {"samples": None, "batch_size": None, "method": None, "seed": None},
            "int8_weight_bits": int8_weight_bits,
            "reduce_range": None,
            "per_channel": per_channel,
        }
    )


@pytest.mark.parametrize(
    ("trained", "override", "expected"), [(False, None, False), (False, True, True), (True, None, True)]
)
def test_ptq_export_quantizes_weights_as_the_run_did_unless_told_otherwise(tmp_path, trained, override, expected):
    """A run trained with quantization.per_channel=false targets a runtime without per-channel kernels."""
    shape = (1, 16, 16)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    data.setup()
    quantization = {"per_channel": trained, "calibration": CALIBRATION}
    run = Run(
        tmp_path,
        SmallCNN(shape, 4, width=0.5).eval(),
        OmegaConf.create({"data": {"input_shape": list(shape)}, "quantization": quantization}),
    )
    cfg = _export_cfg([8], per_channel=override)
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    assert facts["int8"]["per_channel"] is expected
    graph = onnx.load(str(paths["int8"])).graph
    initializers = {init.name: init for init in graph.initializer}
    weight_scales = [
        initializers[node.input[1]]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and len(initializers.get(node.input[0], onnx.TensorProto()).dims) == 4
    ]
    assert weight_scales and all(len(scale.dims) == (1 if expected else 0) for scale in weight_scales)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"int8_weight_bits": [8, 7]}, [8, 7]),
        ({"int8_weight_bits": [7]}, [7]),
        ({"int8_weight_bits": 7}, [7]),
        ({"int8_weight_bits": [8, 7], "reduce_range": True}, [7]),
        ({"int8_weight_bits": [8, 7], "reduce_range": False}, [8]),
    ],
)
def test_int8_weight_ranges_and_the_deprecated_reduce_range(settings, expected, caplog):
    assert int8_weight_bits(OmegaConf.create({"reduce_range": None, **settings})) == expected
    assert ("reduce_range is deprecated" in caplog.text) == ("reduce_range" in settings)


@pytest.mark.parametrize("bits", [[], [8, 8], [4], [8, 16], "eight"])
def test_unknown_int8_weight_ranges_are_refused(bits):
    with pytest.raises(TierkitError, match=r"int8_weight_bits must list 8, 7 or both"):
        int8_weight_bits(OmegaConf.create({"reduce_range": None, "int8_weight_bits": bits}))


def test_export_writes_both_weight_ranges_with_their_cpu_facts(tmp_path):
    """Both INT8 files of a run: the 7-bit one exact on every CPU class, the full-range one on two, and the
    full-range file's accuracy on x86 without VNNI emulated (or measured, on such a CPU)."""
    shape = (1, 16, 16)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    data.setup()
    torch.manual_seed(0)
    quantization = {"per_channel": True, "calibration": CALIBRATION}
    config = OmegaConf.create({"data": {"input_shape": list(shape)}, "quantization": quantization})
    run = Run(tmp_path, SmallCNN(shape, 4, width=0.5).eval(), config)
    cfg = _export_cfg([8, 7], per_channel=None)
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    assert set(paths) == {"fp32", "int8", "int8_w7"}
    assert [facts["int8"]["reduce_range"], facts["int8_w7"]["reduce_range"]] == [False, True]
    full = int8_cpu_facts(paths["int8"], data, 0.5)
    reduced = int8_cpu_facts(paths["int8_w7"], data, 0.5)
    assert (full["weight_bits"], reduced["weight_bits"]) == (8, 7)
    assert full["cpu_classes"] == ["x86_vnni", "arm"]
    assert reduced["cpu_classes"] == ["x86_vnni", "x86_no_vnni", "arm"]
    assert {f["how"] for f in reduced["accuracy_by_cpu"].values()} == {"onnxruntime"}
    hows = {c: f["how"] for c, f in full["accuracy_by_cpu"].items()}
    assert hows["x86_vnni"] == hows["arm"] != hows["x86_no_vnni"]  # one measured here, the other emulated


def test_export_calibrates_as_the_run_did_unless_told_otherwise():
    trained = OmegaConf.create(CALIBRATION)
    asked = OmegaConf.create({"samples": None, "batch_size": None, "method": "percentile", "seed": None})
    assert export_calibration(asked, trained) == {**CALIBRATION, "method": "percentile"}


TUNED = {"method": "percentile", "per_channel": False, "float_layers": ["gemm6"]}


def _tuned_run(tmp_path, recipe: dict = TUNED) -> tuple[Run, DictConfig, SyntheticDataModule]:
    """A run whose quantization stage shipped a tuned post-training model (its recipe is in the checkpoint)."""
    shape = (1, 16, 16)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    data.setup()
    torch.manual_seed(0)
    save_torch(tmp_path / "checkpoints" / "best.ckpt", {"tierkit": {"int8_path": "tuned", "int8_recipe": recipe}})
    quantization = {"per_channel": True, "calibration": CALIBRATION}
    config = OmegaConf.create({"data": {"input_shape": list(shape)}, "quantization": quantization})
    run = Run(tmp_path, SmallCNN(shape, 4, width=0.5).eval(), config, int8_path="tuned")
    cfg = _export_cfg([8], per_channel=None)
    return run, cfg, data


def test_export_remakes_a_tuned_int8_model_with_the_recipe_the_run_shipped(tmp_path):
    run, cfg, data = _tuned_run(tmp_path)
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    int8 = facts["int8"]
    assert int8["made_by"] == "export" and int8["int8_method"] == "tuned"
    assert int8["float_layers"] == ["gemm6"] and int8["per_channel"] is False
    assert int8["calibration"]["method"] == "percentile"
    assert float_compute_ops(paths["int8"]) == ["Gemm"], "the classifier stays float, the convolutions integer"


def test_export_remakes_16_bit_activations_the_run_shipped(tmp_path):
    recipe = {"method": "minmax", "per_channel": True, "float_layers": [], "int16_layers": ["gemm6"]}
    run, cfg, data = _tuned_run(tmp_path, recipe)
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    assert facts["int8"]["int16_layers"] == ["gemm6"] and facts["int8"]["float_layers"] == []
    model = onnx.load(str(paths["int8"]))
    types = {init.name: init.data_type for init in model.graph.initializer}
    quantized_to = {types[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized_to == {onnx.TensorProto.UINT8, onnx.TensorProto.UINT16}


def test_export_ships_the_tuned_file_training_judged(tmp_path):
    run, cfg, data = _tuned_run(tmp_path)
    folder = RunFolder(tmp_path)
    fp32 = export_onnx(run.student, folder.quantization / "fp32.onnx", (1, 16, 16))
    samples = calibration_samples(data, CALIBRATION["samples"], CALIBRATION["batch_size"], CALIBRATION["seed"])
    tuned = quantize_int8(
        fp32, folder.quantization / "int8_tuned.onnx", samples, 16, "percentile", False, False, ["gemm6"]
    )
    report = QuantizationReport(
        max_drop_vs_fp32=0.01,
        reduce_range=False,
        per_channel=True,
        path="tuned",
        source_checkpoint="checkpoints/best.ckpt",
        calibration={**CALIBRATION, "sha256": samples_digest(samples)},
        fp32=OnnxScores("fp32.onnx", fp32.stat().st_size, 0.9, 0.9, sha256=sha256_of(fp32)),
        tuned=OnnxScores("int8_tuned.onnx", tuned.stat().st_size, 0.9, 0.9, sha256=sha256_of(tuned), recipe=TUNED),
    )
    student = ModelSummary("SmallCNN", 0.9, params=1, macs=1, size_bytes=1)
    metrics = RunMetrics(tier="lowend", seed=0, epochs=1, student=student, checkpoints={}, quantization=report)
    folder.write_metrics(metrics)
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    assert facts["int8"]["made_by"] == "training" and facts["int8"]["training_file"] == "int8_tuned.onnx"
    assert paths["int8"].read_bytes() == tuned.read_bytes()


@pytest.mark.parametrize(
    ("trained_first", "asked", "float_layers", "made_by"),
    [
        (False, None, [], "training"),
        (False, True, ["conv0"], "export"),
        (True, None, ["conv0"], "training"),
        (True, False, [], "export"),
    ],
    ids=["as-trained", "export-adds-it", "trained-with-it", "export-removes-it"],
)
def test_export_leaves_the_first_layer_in_float_as_the_run_did_unless_told_otherwise(
    tmp_path, trained_first, asked, float_layers, made_by
):
    shape = (1, 16, 16)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    data.setup()
    torch.manual_seed(0)
    quantization = {"per_channel": True, "calibration": CALIBRATION, "float_first_layer": trained_first}
    config = OmegaConf.create({"data": {"input_shape": list(shape)}, "quantization": quantization})
    run = Run(tmp_path, SmallCNN(shape, 4, width=0.5).eval(), config)
    folder = RunFolder(tmp_path)
    fp32 = export_onnx(run.student, folder.quantization / "fp32.onnx", shape)
    samples = calibration_samples(data, CALIBRATION["samples"], CALIBRATION["batch_size"], CALIBRATION["seed"])
    trained_layers = ["conv0"] if trained_first else []
    ptq = quantize_int8(fp32, folder.quantization / "int8_ptq.onnx", samples, 16, float_layers=trained_layers)
    report = QuantizationReport(
        max_drop_vs_fp32=0.01,
        reduce_range=False,
        per_channel=True,
        source_checkpoint="checkpoints/best.ckpt",
        calibration={**CALIBRATION, "sha256": samples_digest(samples)},
        float_layers=trained_layers,
        fp32=OnnxScores("fp32.onnx", fp32.stat().st_size, 0.9, 0.9, sha256=sha256_of(fp32)),
        ptq=OnnxScores("int8_ptq.onnx", ptq.stat().st_size, 0.9, 0.9, sha256=sha256_of(ptq)),
    )
    student = ModelSummary("SmallCNN", 0.9, params=1, macs=1, size_bytes=1)
    folder.write_metrics(
        RunMetrics(tier="lowend", seed=0, epochs=1, student=student, checkpoints={}, quantization=report)
    )
    cfg = _export_cfg([8], per_channel=None)
    cfg.float_first_layer = asked
    paths, facts = variant_files(run, run.student, cfg, tmp_path / "out", data)
    assert facts["int8"]["float_layers"] == float_layers and facts["int8"]["made_by"] == made_by
    assert len(float_compute_ops(paths["int8"])) == len(float_layers)
    if made_by == "export":
        assert "float_layers" in facts["int8"]["remade_because"]
