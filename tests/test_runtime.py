import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tierkit.runtime import (
    SCHEMA_VERSION,
    DeviceInfo,
    ManifestError,
    NoVariantFits,
    detect_device,
    load_manifest,
    open_session,
    predict,
    select_variant,
    sha256_of,
    validate_manifest,
)
from tierkit.runtime.cpu import CPU_CLASSES, SHIPPING_TARGETS, X86_NO_VNNI

SHAPE = [1, 4, 4]
CLASSES = 3
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
SETTING_KEYS = ("hardware", "providers", "intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level")


def _weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, CLASSES)).astype(np.float32), rng.normal(size=CLASSES).astype(np.float32)


def _write_model(path: Path, seed: int) -> None:
    """A Flatten+Gemm classifier over a [batch, 1, 4, 4] input, the way the exporter names its input and output."""
    weight, bias = _weights(seed)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _row(hardware: str, provider: str, threads: int, p50: float) -> dict:
    providers = [provider] if provider == CPU else [provider, CPU]
    return {
        "hardware": hardware,
        "providers": providers,
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5,
        "throughput_per_s": 1000 / p50,
    }


# name, tier, precision, accuracy, ships, min_memory_mib, min_cores, peak_memory_mib, model seed
VARIANTS = [
    ("highend-fp32", "highend", "fp32", 0.98, True, 4096, 4, 300.0, 1),
    ("highend-fp16", "highend", "fp16", 0.97, False, 4096, 4, 200.0, 2),
    ("midrange-fp16", "midrange", "fp16", 0.96, True, 2048, 2, 120.0, 3),
    ("lowend-int8", "lowend", "int8", 0.93, True, 512, 1, 40.0, 4),
]
LATENCY = {  # highend-fp32 also has a CUDA row, measured where a GPU was present
    "highend-fp32": [_row("cpu_4threads", CPU, 4, 2.0), _row("cuda", CUDA, 1, 0.5)],
    "highend-fp16": [_row("cpu_4threads", CPU, 4, 1.9)],
    "midrange-fp16": [_row("cpu_1thread", CPU, 1, 2.5), _row("cpu_4threads", CPU, 4, 1.5)],
    "lowend-int8": [_row("cpu_1thread", CPU, 1, 1.0)],
}


@pytest.fixture
def export(tmp_path) -> Path:
    return write_export(tmp_path)


def write_export(tmp_path: Path) -> Path:
    """An export folder with four real ONNX files and a schema v1 manifest.json; returns the manifest's path."""
    variants = []
    for name, tier, precision, accuracy, ships, memory, cores, peak, seed in VARIANTS:
        file = f"{tier}/{precision}.onnx"
        _write_model(tmp_path / "export" / file, seed)
        path = tmp_path / "export" / file
        rows = LATENCY[name]
        best = min(rows, key=lambda row: row["p50_ms"])
        variants.append(
            {
                "name": name,
                "tier": tier,
                "precision": precision,
                "file": file,
                "sha256": sha256_of(path),
                "bytes": path.stat().st_size,
                "accuracy": accuracy,
                "params": 16 * CLASSES + CLASSES,
                "macs": 16 * CLASSES,
                "peak_memory_mib": peak,
                "ships": ships,
                "ships_for": list(SHIPPING_TARGETS) if ships else [],
                # The lowend INT8 file has 7-bit weights: exact on every CPU class.
                "cpu_classes": list(CPU_CLASSES),
                **({"weight_bits": 7, "reduce_range": True} if precision == "int8" else {}),
                "why": "meets its tier's budgets" if ships else "highend-fp32 is more accurate",
                "budgets": {"max_drop_vs_teacher": 0.05, "max_size_kib": 64.0, "max_latency_ms": 5.0},
                "checks": {"accuracy": True, "size": True, "latency": True},
                "device": {"min_memory_mib": memory, "min_cores": cores},
                "latency": rows,
                "setting": {key: value for key, value in best.items() if key in SETTING_KEYS},
            }
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": "2026-11-25T10:00:00Z",
        "provenance": {
            "git_commit": None,
            "packages": {"onnxruntime": "1.32.0"},
            "cpu": {"model": "test", "flags": ["avx2"]},
            "seed": 0,
        },
        "input": {"name": "input", "shape": SHAPE, "dtype": "float32"},
        "num_classes": CLASSES,
        "teacher": None,
        "variants": variants,
        "future_field": "ignored by schema v1 readers",
    }
    path = tmp_path / "export" / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def _device(memory_mib: int, cores: int, *providers: str) -> DeviceInfo:
    return DeviceInfo.from_dict({"cores": cores, "memory_mib": memory_mib, "providers": [*providers, CPU]})


def _runtime(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tierkit.runtime", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_good_manifest_validates(export):
    manifest = load_manifest(export)
    assert [variant["name"] for variant in manifest["variants"]] == [name for name, *_ in VARIANTS]


def _del_sha(m):
    del m["variants"][1]["sha256"]


def _str_bytes(m):
    m["variants"][0]["bytes"] = "4096"


def _bad_sha(m):
    m["variants"][2]["sha256"] = "abc123"


def _escape(m):
    m["variants"][0]["file"] = "../../etc/passwd"


def _absolute(m):
    m["variants"][3]["file"] = "/models/lowend.onnx"


def _version(m):
    m["schema_version"] = 2


def _two_ship(m):
    m["variants"][1]["ships"] = True
    m["variants"][1]["ships_for"] = ["arm"]


def _val_percent(m):
    m["variants"][2]["val_accuracy"] = 92.5


def _cuda_setting(m):
    m["variants"][3]["setting"]["hardware"] = "cuda"


@pytest.mark.parametrize(
    ("corrupt", "path", "hint"),
    [
        (_del_sha, "variants[1].sha256", "is missing"),
        (_str_bytes, "variants[0].bytes", "must be an integer >= 1, got string '4096'"),
        (_bad_sha, "variants[2].sha256", "64 hex characters"),
        (_escape, "variants[0].file", "'..'"),
        (_absolute, "variants[3].file", "absolute"),
        (_version, "schema_version", "re-export"),
        (_two_ship, "variants[1].ships", "exactly one variant per tier"),
        (_cuda_setting, "variants[3].setting.hardware", "no row in variants[3].latency"),
        (_val_percent, "variants[2].val_accuracy", "must be a number"),
    ],
    ids=[
        "missing-key",
        "wrong-type",
        "sha256-format",
        "dotdot",
        "absolute",
        "schema-version",
        "two-ship",
        "setting",
        "val-accuracy",
    ],
)
def test_schema_violation_names_path_file_and_fix(export, corrupt, path, hint):
    manifest = json.loads(export.read_text())
    corrupt(manifest)
    with pytest.raises(ManifestError) as caught:
        validate_manifest(manifest, str(export))
    message = str(caught.value)
    assert message.startswith(f"{path} ") and f"(in {export})" in message and hint in message and "Fix:" in message
    export.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=path.replace("[", r"\[").replace("]", r"\]")):
        load_manifest(export)


def test_unreadable_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"schema_version": 1,')
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "broken.json")


@pytest.mark.parametrize(
    ("device", "variant", "hardware"),
    [
        (_device(1024, 2), "lowend-int8", "cpu_1thread"),
        (_device(4096, 2), "midrange-fp16", "cpu_1thread"),  # the 4-thread row needs more cores than it has
        (_device(16384, 8), "highend-fp32", "cpu_4threads"),
        (_device(16384, 8, CUDA), "highend-fp32", "cuda"),
    ],
    ids=["low-memory", "two-cores", "big-cpu", "cuda"],
)
def test_selection_on_described_devices(export, device, variant, hardware):
    selection = select_variant(load_manifest(export), device)
    assert (selection.variant["name"], selection.setting["hardware"]) == (variant, hardware)
    assert f"tier {selection.variant['tier']!r}" in selection.reason and "most demanding" in selection.reason
    assert ("highend-fp16", "does not ship (highend-fp32 is more accurate)") in selection.rejected


def test_cuda_row_is_preferred_even_when_a_cpu_row_is_faster(export):
    manifest = load_manifest(export)
    manifest["variants"][0]["latency"][1]["p50_ms"] = 3.0  # cuda row now slower than cpu_4threads (2.0 ms)
    selection = select_variant(manifest, _device(16384, 8, CUDA))
    assert selection.setting["hardware"] == "cuda"
    assert "accelerator row preferred" in selection.reason


@pytest.mark.parametrize(("limit", "variant"), [(1.6, "midrange-fp16"), (1.2, "lowend-int8")])
def test_latency_limit_picks_the_most_demanding_tier_that_fits(export, limit, variant):
    selection = select_variant(load_manifest(export), _device(16384, 8), max_latency_ms=limit)
    assert selection.variant["name"] == variant
    assert selection.setting["p50_ms"] <= limit
    assert f"max_latency_ms={limit:g}" in selection.reason


def test_memory_limit_and_ties_within_a_device_class(export):
    manifest = load_manifest(export)
    assert select_variant(manifest, _device(16384, 8), max_memory_mib=100).variant["name"] == "lowend-int8"
    # A tier that scores higher on the test split does not outrank the tier made for the device.
    manifest["variants"][3]["accuracy"] = 0.99
    assert select_variant(manifest, _device(16384, 8)).variant["name"] == "highend-fp32"
    # Two variants for the same device class: the more accurate wins, and on a tie the faster.
    manifest["variants"][2]["device"] = dict(manifest["variants"][0]["device"])
    manifest["variants"][2]["accuracy"] = manifest["variants"][0]["accuracy"]
    selection = select_variant(manifest, _device(16384, 8))
    assert selection.variant["name"] == "midrange-fp16"  # same accuracy, 1.5 ms beats 2.0 ms
    assert "tied with highend-fp32: lowest p50 wins" in selection.reason


def test_nothing_fits_lists_every_reason(export):
    with pytest.raises(NoVariantFits) as caught:
        select_variant(load_manifest(export), _device(256, 1), max_latency_ms=0.1)
    rejected = dict(caught.value.rejected)
    assert set(rejected) == {name for name, *_ in VARIANTS}
    assert "tier needs >= 512 MiB memory, device has 256 MiB" in rejected["lowend-int8"]
    assert "p50 1 ms > max_latency_ms 0.1" in rejected["lowend-int8"]
    assert "needs CUDAExecutionProvider" in rejected["highend-fp32"]
    assert all(name in str(caught.value) for name in rejected)


def test_predict_returns_logits_and_refuses_wrong_shapes(export):
    selection = select_variant(load_manifest(export), _device(1024, 2))
    session = open_session(export, selection)
    batch = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    weight, bias = _weights(4)
    np.testing.assert_allclose(predict(session, batch), batch.reshape(5, -1) @ weight + bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\).*add a batch axis"):
        predict(session, batch[0])
    with pytest.raises(ValueError, match=r"shape \(5, 1, 4, 5\).*takes \(N, 1, 4, 4\)"):
        predict(session, np.zeros((5, 1, 4, 5), np.float32))
    with pytest.raises(ValueError, match="astype"):
        predict(session, batch.astype(np.float64))


def test_tampered_or_missing_file_is_refused(export):
    manifest = load_manifest(export)
    selection = select_variant(manifest, _device(1024, 2))
    model = export.parent / selection.variant["file"]
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="changed after export"):
        open_session(export, selection)
    model.unlink()
    with pytest.raises(ManifestError, match="is missing"):
        open_session(export, selection)


def test_model_that_does_not_match_its_manifest_is_refused(export):
    manifest = json.loads(export.read_text())
    manifest["input"]["shape"] = [1, 28, 28]
    export.write_text(json.dumps(manifest))
    selection = select_variant(load_manifest(export), _device(1024, 2))
    with pytest.raises(ManifestError, match=r"the manifest says 'input' \[batch, 1, 28, 28\]"):
        open_session(export, selection)


@pytest.mark.slow
def test_cli_select_and_predict(export, tmp_path):
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"cores": 2, "memory_mib": 1024}))
    done = _runtime("select", "--manifest", str(export), "--device", str(device), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)
    assert chosen["variant"] == "lowend-int8" and chosen["tier"] == "lowend" and chosen["precision"] == "int8"
    assert chosen["file"] == "lowend/int8.onnx" and chosen["setting"]["hardware"] == "cpu_1thread"
    assert chosen["device"]["memory_mib"] == 1024 and chosen["reason"]

    batch = tmp_path / "batch.npy"
    np.save(batch, np.random.default_rng(1).normal(size=(4, *SHAPE)).astype(np.float32))
    args = ["predict", "--manifest", str(export), "--device", str(device), "--input", str(batch)]
    done = _runtime(*args, "--probabilities", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["variant"] == "lowend-int8" and len(result["predictions"]) == 4
    assert all(0 <= label < CLASSES for label in result["predictions"])
    assert np.allclose(np.sum(result["probabilities"], axis=1), 1)

    model = export.parent / "lowend" / "int8.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    done = _runtime(*args, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "changed after export" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_reports_no_fit_and_bad_device_as_errors(export, tmp_path):
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"cores": 1, "memory_mib": 128}))
    done = _runtime("select", "--manifest", str(export), "--device", str(device), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: no shipping variant fits")
    device.write_text(json.dumps({"cores": 1, "memory_mb": 128}))
    done = _runtime("select", "--manifest", str(export), "--device", str(device), cwd=tmp_path)
    assert done.returncode == 2 and "unknown keys ['memory_mb']" in done.stderr


def test_device_description_round_trips_and_is_checked():
    device = DeviceInfo(cores=4, memory_mib=2048, cpu_model="arm", cpu_flags=["neon"], providers=[CPU])
    assert DeviceInfo.from_dict(device.to_dict()) == device
    with pytest.raises(ValueError, match="cores must be an integer >= 1"):
        DeviceInfo.from_dict({"cores": 0, "memory_mib": 2048})
    with pytest.raises(ValueError, match=r"missing keys \['memory_mib'\]"):
        DeviceInfo.from_dict({"cores": 2})


def test_detect_device_is_sane():
    device = detect_device()
    assert device.cores >= 1 and device.memory_mib > 0 and device.cpu_model
    assert CPU in device.providers
    assert DeviceInfo.from_dict(json.loads(json.dumps(device.to_dict()))) == device


@pytest.mark.slow
def test_runtime_imports_no_torch():
    """The runtime must install on devices with only onnxruntime and numpy."""
    code = (
        "import sys, tierkit.runtime, tierkit.runtime.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jsonschema', 'onnx') "
        "or m.startswith('tierkit.') and not m.startswith('tierkit.runtime')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


AVX2_ONLY = ["sse4_2", "avx", "avx2", "fma"]
VNNI = [*AVX2_ONLY, "avx512f", "avx512_vnni"]


def _with_full_range_int8(export: Path) -> Path:
    """The fixture's lowend tier as export writes it now: a faster full-range INT8 file ships on x86 with VNNI
    and ARM, and the 7-bit file stands in on x86 without VNNI and on devices that do not say their CPU."""
    manifest = json.loads(export.read_text())
    reduced = next(v for v in manifest["variants"] if v["name"] == "lowend-int8")
    full = {**reduced, "name": "lowend-int8-full", "file": "lowend/int8_full.onnx", "weight_bits": 8}
    _write_model(export.parent / full["file"], 5)
    full.update(
        sha256=sha256_of(export.parent / full["file"]),
        cpu_classes=["x86_vnni", "arm"],
        ships_for=["x86_vnni", "arm"],
        reduce_range=False,
        latency=[{**reduced["latency"][0], "p50_ms": 0.5}],
    )
    reduced.update(ships=False, ships_for=["x86_no_vnni", "unknown_cpu"], why="lowend-int8-full is faster")
    manifest["variants"].append(full)
    export.write_text(json.dumps(manifest))
    return export


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (AVX2_ONLY, "lowend-int8"),
        (None, "lowend-int8"),
        (VNNI, "lowend-int8-full"),
        (["fp", "asimd"], "lowend-int8-full"),
    ],
    ids=["avx2-only", "no-flags", "vnni", "arm"],
)
def test_a_cpu_without_vnni_never_gets_full_range_int8(export, flags, expected):
    manifest = load_manifest(_with_full_range_int8(export))
    device = {"cores": 1, "memory_mib": 1024, **({"cpu_flags": flags} if flags is not None else {})}
    selection = select_variant(manifest, DeviceInfo.from_dict(device))
    assert selection.variant["name"] == expected
    if expected == "lowend-int8":
        assert "stands in for lowend-int8-full" in selection.reason
        rejected = dict(selection.rejected)["lowend-int8-full"]
        assert "8-bit INT8 weights saturate on x86 without VNNI" in rejected


def test_a_manifest_without_cpu_classes_keeps_full_range_int8_off_cpus_without_vnni(export):
    """Manifests from before CPU classes were recorded: an INT8 file counts as 7-bit only with reduce_range."""
    manifest = json.loads(export.read_text())
    for variant in manifest["variants"]:
        for key in ("ships_for", "cpu_classes", "weight_bits"):
            variant.pop(key, None)
    avx2_phone = DeviceInfo.from_dict({"cores": 1, "memory_mib": 1024, "cpu_flags": AVX2_ONLY})
    assert select_variant(manifest, avx2_phone).variant["name"] == "lowend-int8"
    lowend = next(v for v in manifest["variants"] if v["name"] == "lowend-int8")
    lowend["reduce_range"] = False
    with pytest.raises(NoVariantFits, match="lowend-int8: ships, but not for x86 without VNNI"):
        select_variant(manifest, avx2_phone)
    vnni_phone = DeviceInfo.from_dict({"cores": 1, "memory_mib": 1024, "cpu_flags": VNNI})
    assert select_variant(manifest, vnni_phone).variant["name"] == "lowend-int8"


def test_each_cpu_class_has_one_pick_per_tier(export):
    manifest = json.loads(_with_full_range_int8(export).read_text())
    manifest["variants"][-1]["ships_for"].append(X86_NO_VNNI)
    with pytest.raises(ManifestError, match=r"ships_for names 'x86_no_vnni', which variants\[3\] already ships for"):
        validate_manifest(manifest, str(export))
    manifest["variants"][-1]["ships_for"] = ["x86_vnni", "risc-v"]
    with pytest.raises(ManifestError, match=r"ships_for\[1\] must be one of"):
        validate_manifest(manifest, str(export))


def test_a_manifest_from_before_the_budget_rename_still_validates(export):
    manifest = json.loads(export.read_text())
    for variant in manifest["variants"]:
        variant["budgets"]["max_accuracy_drop"] = variant["budgets"].pop("max_drop_vs_teacher")
    validate_manifest(manifest, str(export))
    del manifest["variants"][0]["budgets"]["max_accuracy_drop"]
    with pytest.raises(ManifestError, match=r"variants\[0\]\.budgets\.max_drop_vs_teacher is missing"):
        validate_manifest(manifest, str(export))
