"""ONNX Runtime's u8×s8 kernels emulated per CPU class: saturating pairs on x86 without VNNI, exact elsewhere.

tests/data/non_vnni_kernels.npz holds what ONNX Runtime 1.32 computed for tests/int8_cases.py on an x86 CPU
without VNNI (an emulated Haswell: `qemu-x86_64 -cpu Haswell .venv/bin/python tests/int8_cases.py OUT.npz`), so
the saturating emulation is checked against a real non-VNNI kernel on any machine.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tierkit.models import MLP, SmallCNN, SmallCNN1d
from tierkit.models.qat import prepare_qat, set_qat_stage
from tierkit.onnxio import export_onnx
from tierkit.profile import ort_session
from tierkit.quant import quantize_int8
from tierkit.quant.kernel_emulation import (
    EmulatedSession,
    integer_matmul,
    risky_pairs,
    saturating_dot,
    weight_bits,
)
from tierkit.quant.qdq import export_qat_onnx
from tierkit.runtime import detect_device
from tierkit.runtime.cpu import ARM, X86_NO_VNNI, X86_VNNI, cpu_class, exact_cpu_classes, needs_reduced_range

from int8_cases import CONV_CASES, GEMM_CASES, OUTPUT_SCALE, all_cases, run_in_onnxruntime

RECORDED = Path(__file__).parent / "data" / "non_vnni_kernels.npz"
CASES = [*CONV_CASES, *GEMM_CASES]
SHAPE = (1, 16, 16)


def test_a_saturating_pair_on_exact_numbers():
    """Four inputs at 255 against one weight row: VPMADDUBSW adds (x0·w0 + x1·w1) and (x2·w2 + x3·w3) in int16."""
    x = np.array([[255, 255, 255, 255]], np.uint8)
    weights = np.array(
        [
            [127, 127, -128, 1],  # 64770 clips to 32767; -32385 fits: 382 instead of 32385
            [127, 0, 127, 0],  # no pair leaves int16: exact, 64770
            [-128, -128, -128, -1],  # -65280 and -32895 both clip to -32768: -65536 instead of -98175
            [64, 64, -64, -64],  # the reduced range's extremes: ±32640 fit, exact
        ],
        np.int8,
    )
    assert saturating_dot(x, weights).tolist() == [[382, 64770, -65536, 0]]
    assert (x.astype(np.int64) @ weights.T.astype(np.int64)).tolist() == [[32385, 64770, -98175, 0]]
    assert integer_matmul(x, weights, saturate=True).tolist() == [[382, 64770, -65536, 0]]
    assert risky_pairs(weights)[0].tolist() == [0, 2, 2]


def test_seven_bit_weights_never_saturate():
    rng = np.random.default_rng(0)
    weights = rng.integers(-64, 64, (32, 96)).astype(np.int8)
    weights[:, :2] = [[63, 63]] * 16 + [[-64, -64]] * 16  # the extreme pair of either sign
    x = np.full((4, 96), 255, np.uint8)
    x[1:] = rng.integers(0, 256, (3, 96))
    assert risky_pairs(weights)[0].size == 0
    np.testing.assert_array_equal(saturating_dot(x, weights), x.astype(np.int64) @ weights.T.astype(np.int64))


def _case_file(tmp_path: Path, name: str) -> tuple[Path, np.ndarray]:
    model, x, _ = all_cases()[name]
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model)
    return path, x


def _assert_same_outputs(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Equal up to a requantization rounding step on a rare entry (the fused kernel rounds once, the graph twice)."""
    step = OUTPUT_SCALE if name.startswith(("conv", "grouped", "depthwise")) else OUTPUT_SCALE / 4
    step = step if not name.startswith("matmul") else 1e-3
    difference = np.abs(actual - expected)
    assert difference.max() <= 1.01 * step, f"{name}: off by {difference.max()}"
    assert (difference > 1e-3).mean() <= 0.01, f"{name}: {(difference > 1e-3).sum()} entries differ"


@pytest.mark.parametrize("name", CASES)
def test_emulation_matches_onnxruntime_recorded_on_a_cpu_without_vnni(tmp_path, name):
    recorded = np.load(RECORDED)
    path, x = _case_file(tmp_path, name)
    np.testing.assert_array_equal(x, recorded[f"{name}/x"])  # the cases were rebuilt as they were recorded
    expected = recorded[f"{name}/y"]
    _assert_same_outputs(EmulatedSession(path, X86_NO_VNNI).run(None, {"x": x})[0], expected, name)
    exact = EmulatedSession(path, X86_VNNI).run(None, {"x": x})[0]
    if name == "depthwise_c8":  # one channel in, one out per group: ONNX Runtime's 32-bit depthwise kernel
        _assert_same_outputs(exact, expected, name)
    else:  # the recording really saturated, so this test can tell the two kernels apart
        assert (np.abs(exact - expected) > 1e-3).mean() > 0.05


@pytest.mark.parametrize("name", CASES)
def test_emulation_of_this_cpu_matches_onnxruntime_here(tmp_path, name):
    here = cpu_class()
    if here is None:
        pytest.skip("this CPU is neither x86 nor ARM")
    path, x = _case_file(tmp_path, name)
    _assert_same_outputs(
        EmulatedSession(path, here).run(None, {"x": x})[0], run_in_onnxruntime(path.read_bytes(), x), name
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_recorded_outputs_are_what_an_emulated_haswell_computes_today(tmp_path):
    """Re-records the fixture on a Haswell (AVX2, no VNNI) under qemu and compares it with the committed one."""
    out = tmp_path / "haswell.npz"
    subprocess.run(
        ["qemu-x86_64", "-cpu", "Haswell", sys.executable, str(Path(__file__).parent / "int8_cases.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    live, recorded = np.load(out), np.load(RECORDED)
    for name in CASES:
        np.testing.assert_array_equal(live[f"{name}/y"], recorded[f"{name}/y"])


def _calibrated_qat(model, reduce_range: bool):
    prepared = prepare_qat(model, reduce_range=reduce_range)
    set_qat_stage(prepared, "activations")
    prepared.train()
    for _ in range(3):
        prepared(torch.randn(8, *SHAPE))
    set_qat_stage(prepared, "frozen")
    return prepared.eval()


@pytest.mark.parametrize("build", [lambda: MLP(SHAPE, 4), lambda: SmallCNN(SHAPE, 4, width=0.5)], ids=["mlp", "cnn"])
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8bit", "7bit"])
def test_tierkit_int8_files_emulated_per_cpu_class(tmp_path, build, reduce_range):
    torch.manual_seed(0)
    model = build()
    qat = export_qat_onnx(_calibrated_qat(model, reduce_range), tmp_path / "qat.onnx", SHAPE)
    fp32 = export_onnx(model.eval(), tmp_path / "fp32.onnx", SHAPE)
    samples = torch.rand(64, *SHAPE).numpy()
    ptq = quantize_int8(fp32, tmp_path / "ptq.onnx", samples, reduce_range=reduce_range)
    x = 3 * torch.rand(32, *SHAPE).numpy()  # inputs past the calibrated range push activations to 255
    for path in (qat, ptq):
        bits = weight_bits(path)
        assert bits == (7 if reduce_range else 8)
        here = ort_session(path).run(None, {"input": x})[0]
        emulated = {c: EmulatedSession(path, c).run(None, {"input": x})[0] for c in (X86_VNNI, X86_NO_VNNI, ARM)}
        if cpu_class() is not None:
            np.testing.assert_allclose(emulated[cpu_class()], here, atol=0.05 * np.abs(here).max())
        exact_everywhere = X86_NO_VNNI in exact_cpu_classes(bits)
        assert exact_everywhere == reduce_range
        if reduce_range:
            np.testing.assert_array_equal(emulated[X86_NO_VNNI], emulated[X86_VNNI])
        np.testing.assert_array_equal(emulated[ARM], emulated[X86_VNNI])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, X86_VNNI),
        ({"sse4_2", "avx2"}, X86_NO_VNNI),
        ({"avx2", "avx512f", "avx512bw"}, X86_NO_VNNI),
        ({"avx_vnni", "avx2"}, X86_VNNI),
        ({"fp", "asimd", "asimddp"}, ARM),
        (set(), None),
    ],
)
def test_cpu_class_from_flags(flags, expected):
    assert cpu_class(flags) == expected


def test_cpu_flags_can_be_given_for_a_cpu_that_proc_cpuinfo_does_not_describe(monkeypatch):
    """Under qemu-user, /proc/cpuinfo shows the host: TIERKIT_CPU_FLAGS names the emulated CPU's flags instead."""
    monkeypatch.setenv("TIERKIT_CPU_FLAGS", "sse4_2 avx avx2")
    assert cpu_class() == X86_NO_VNNI and needs_reduced_range()
    assert detect_device().cpu_flags == ["avx", "avx2", "sse4_2"]


@pytest.mark.parametrize("reduce_range", [False, True], ids=["8bit", "7bit"])
def test_one_dimensional_convolutions_and_pools_are_emulated_as_onnxruntime_computes_them(tmp_path, reduce_range):
    shape = (1, 40)
    torch.manual_seed(0)
    fp32 = export_onnx(SmallCNN1d(shape, 10, width=0.5).eval(), tmp_path / "fp32.onnx", shape)
    ptq = quantize_int8(fp32, tmp_path / "ptq.onnx", torch.randn(64, *shape).numpy(), reduce_range=reduce_range)
    x = 3 * torch.randn(32, *shape).numpy()
    here = ort_session(ptq).run(None, {"input": x})[0]
    if cpu_class() is not None:
        emulated = EmulatedSession(ptq, cpu_class()).run(None, {"input": x})[0]
        np.testing.assert_allclose(emulated, here, atol=0.05 * np.abs(here).max())
    if reduce_range:
        same = [EmulatedSession(ptq, c).run(None, {"input": x})[0] for c in (X86_VNNI, X86_NO_VNNI)]
        np.testing.assert_array_equal(*same)
