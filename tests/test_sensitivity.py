"""Per-layer INT8 sensitivity and the post-training escalation steps it drives (calibration, mixed precision)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tierkit.data import SyntheticDataModule
from tierkit.data.base import ArrayDataModule, Arrays
from tierkit.errors import TierkitError
from tierkit.models import SmallCNN
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.onnxio.verify import float_compute_ops
from tierkit.quant import calibration_samples, quantize_int8
from tierkit.quant.escalation import Recipe, escalate_ptq
from tierkit.quant.layer_analysis import analyse_layers, quiet_session
from tierkit.quant.ptq import label_layers
from tierkit.quant.sensitivity_files import headline, write_sensitivity
from tierkit.runtime.cpu import needs_reduced_range

FEATURES, CLASSES = 16, 4


def outlier_model() -> nn.Module:
    """A small MLP whose first layer holds one huge weight pair that cancels on the data below: one weight scale
    for the whole layer rounds its other weights to zero; per-channel scales, or float, keep them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    with torch.no_grad():
        model[1].weight[31].zero_()
        model[1].weight[31, :2] = torch.tensor([500.0, -500.0])
        model[1].bias[31] = 0.0
        model[3].weight[:, 31] = 0.0
    return model.eval()


class LabelledBy(ArrayDataModule):
    """Random features (the first two equal) labelled by the model itself, so the float model is always right."""

    def __init__(self, model: nn.Module, num_samples: int = 1000):
        super().__init__(input_shape=[1, FEATURES], num_classes=CLASSES, mean=None, std=None, batch_size=64)
        self.model, self.num_samples = model, num_samples

    def load(self) -> dict[str, Arrays]:
        images = torch.randn(self.num_samples, 1, FEATURES, generator=torch.Generator().manual_seed(1))
        images[:, 0, 1] = images[:, 0, 0]
        with torch.no_grad():
            labels = self.model(images).argmax(1)
        return {"all": Arrays(images, labels)}


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    model = outlier_model()
    data = LabelledBy(model)
    data.setup()
    folder = tmp_path_factory.mktemp("outlier")
    fp32 = export_onnx(model, folder / "fp32.onnx", (1, FEATURES))
    return model, data, fp32, calibration_samples(data, 128, 32)


def val_acc(path, data) -> float:
    return onnx_accuracy(quiet_session(path), data, "val")


def test_layers_are_named_by_position_and_kind(tmp_path):
    model = onnx.load(str(export_onnx(SmallCNN((1, 16, 16), 4, width=0.25), tmp_path / "cnn.onnx", (1, 16, 16))))
    assert label_layers(model) == ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "gemm6"]
    assert all(node.name for node in model.graph.node)


def test_analysis_ranks_the_layer_whose_weights_one_scale_cannot_hold_first(outlier):
    model, data, fp32, samples = outlier
    report = analyse_layers(fp32, data, samples, 32, per_channel=False, module=model, show_progress=False)
    first, second = report.ranked()
    assert first.layer == "gemm0" and first.module == "1" and second.module == "3"
    assert report.float_val_acc == 1.0 and report.int8_val_acc < 0.6
    assert first.gain_left_float > 0.3 and first.drop_alone > 0.3
    # The output SQNR shows the damage; the weight SQNR of the whole tensor is dominated by the outlier pair.
    assert first.output_sqnr_db < 10 < first.weight_sqnr_db
    assert second.drop_alone < 0.05


def test_a_model_without_weighted_layers_is_refused(tmp_path):
    data = SyntheticDataModule(input_shape=[1, 4, 4], num_classes=4, mean=None, std=None, num_samples=64)
    fp32 = export_onnx(nn.Sequential(nn.Flatten(), nn.ReLU()), tmp_path / "fp32.onnx", (1, 4, 4))
    with pytest.raises(TierkitError, match="no Conv, Gemm or MatMul"):
        analyse_layers(fp32, data, calibration_samples(data, 32, 16), 16, show_progress=False)


def test_report_files_rank_layers_and_say_what_matters(tmp_path, outlier):
    model, data, fp32, samples = outlier
    report = analyse_layers(fp32, data, samples, 32, per_channel=False, module=model, show_progress=False)
    paths = write_sensitivity(report, tmp_path)
    written = json.loads(paths["json"].read_text())
    assert written["ranking"] == ["gemm0", "gemm1"]
    assert "| 1 | gemm0 | 1 | Gemm | 32x16 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert headline(report).endswith("most sensitive: gemm0")


def test_calibration_step_finds_per_channel_scales(tmp_path, outlier):
    _, data, fp32, samples = outlier
    # As the quantization stage does: 7-bit weights where this CPU's u8 x s8 kernels would saturate 8-bit ones, so
    # the step is judged on what the kernels compute exactly, on CPUs with VNNI and without.
    reduced = needs_reduced_range()
    start = Recipe("minmax", per_channel=False)
    ptq = quantize_int8(fp32, tmp_path / "ptq.onnx", samples, 32, reduce_range=reduced, per_channel=False)
    start_acc = val_acc(ptq, data)
    result = escalate_ptq(
        fp32, tmp_path / "tuned.onnx", samples, data, start, start_acc, 1.0, 0.02, reduced, 32, ["gemm0"], ["minmax"], 3
    )
    assert result.met and result.best.recipe == Recipe("minmax", per_channel=True)
    assert [step["step"] for step in result.steps] == ["calibration"]
    assert result.best.path == tmp_path / "tuned.onnx" and val_acc(result.best.path, data) >= 0.98


def test_mixed_precision_leaves_the_sensitive_layer_in_float_and_the_rest_integer(tmp_path, outlier):
    _, data, fp32, samples = outlier
    start = Recipe("minmax", per_channel=False)
    start_acc = val_acc(quantize_int8(fp32, tmp_path / "ptq.onnx", samples, 32, per_channel=False), data)
    ranking = ["gemm0", "gemm1"]
    result = escalate_ptq(
        fp32, tmp_path / "mixed.onnx", samples, data, start, start_acc, 1.0, 0.02, False, 32, ranking, [], 3
    )
    assert result.met and result.best.recipe.float_layers == ["gemm0"]
    assert [step["step"] for step in result.steps] == ["mixed precision"]
    assert float_compute_ops(result.best.path) == ["Gemm"]  # gemm1 still runs on an integer kernel


def test_escalation_keeps_the_configured_float_layer_and_neither_retries_nor_counts_it(tmp_path, outlier):
    _, data, fp32, samples = outlier
    # As with quantization.float_first_layer: the configured recipe already leaves a layer in float.
    start = Recipe("minmax", per_channel=False, float_layers=["gemm1"])
    start_acc = val_acc(quantize_int8(fp32, tmp_path / "ptq.onnx", samples, 32, per_channel=False), data)
    calibrated = escalate_ptq(
        fp32, tmp_path / "a.onnx", samples, data, start, start_acc, 1.0, 0.02, False, 32, [], ["minmax"], 1
    )
    assert calibrated.best.recipe == Recipe("minmax", per_channel=True, float_layers=["gemm1"])
    mixed = escalate_ptq(
        fp32, tmp_path / "b.onnx", samples, data, start, start_acc, 1.0, 0.02, False, 32, ["gemm1", "gemm0"], [], 1
    )
    assert mixed.best.recipe.float_layers == ["gemm1", "gemm0"]
    assert [step["step"] for step in mixed.steps] == ["mixed precision"]


def test_escalation_that_finds_nothing_better_keeps_no_file(tmp_path, outlier):
    _, data, fp32, samples = outlier
    start = Recipe("minmax", per_channel=False)
    start_acc = val_acc(quantize_int8(fp32, tmp_path / "ptq.onnx", samples, 32, per_channel=False), data)
    result = escalate_ptq(
        fp32, tmp_path / "none.onnx", samples, data, start, start_acc, 1.0, 0.02, False, 32, ["gemm1"], [], 1
    )
    assert result.best is None and not result.met and not (tmp_path / "none.onnx").exists()
    assert len(result.steps) == 1 and not result.steps[0]["meets_budget"]


def test_unknown_float_layer_names_the_layers_there_are(tmp_path, outlier):
    _, _, fp32, samples = outlier
    with pytest.raises(TierkitError, match="gemm0, gemm1"):
        quantize_int8(fp32, tmp_path / "int8.onnx", samples, 32, float_layers=["conv9"])
    assert not (tmp_path / "int8.onnx").exists()


def test_unknown_escalation_method_is_refused(tmp_path, outlier):
    _, data, fp32, samples = outlier
    with pytest.raises(TierkitError, match=r"quantization\.escalation\.calibration_methods"):
        escalate_ptq(
            fp32, tmp_path / "x.onnx", samples, data, Recipe("minmax", True), 0.5, 1.0, 0.02, False, 32, [], ["kl"], 1
        )


class GatedMLP(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` with one loud hidden unit: the gate product is heavy-tailed, so one uint8 scale
    rounds the quiet units, and the unit's inputs come from the two layers feeding the gate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1, self.w3, self.w2 = nn.Linear(FEATURES, 64), nn.Linear(FEATURES, 64), nn.Linear(64, CLASSES)
        with torch.no_grad():
            self.w1.weight[0] *= 40
            self.w3.weight[0] *= 40

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    model = GatedMLP().eval()
    data = LabelledBy(model, num_samples=2000)
    data.setup()
    fp32 = export_onnx(model, tmp_path_factory.mktemp("gated") / "fp32.onnx", (1, FEATURES))
    return data, fp32, calibration_samples(data, 256, 64)


def _escalate_gate(tmp_path, gated, precisions):
    data, fp32, samples = gated
    start_acc = val_acc(quantize_int8(fp32, tmp_path / "ptq.onnx", samples, 64), data)
    result = escalate_ptq(
        fp32,
        tmp_path / "mixed.onnx",
        samples,
        data,
        Recipe("minmax", True),
        start_acc,
        1.0,
        0.05,
        False,
        64,
        ["gemm2"],
        [],
        1,
        precisions,
    )
    return start_acc, result


def test_16_bit_activations_keep_int8_weights_and_widen_what_feeds_the_layer(tmp_path, gated):
    start_acc, result = _escalate_gate(tmp_path, gated, ("int16", "float"))
    assert start_acc < 0.9, "the case: uint8 activations lose the gate's quiet units"
    assert result.met and result.best.recipe.int16_layers == ["gemm2"] and result.best.recipe.float_layers == []
    model = onnx.load(str(result.best.path))
    weights = {init.name: init.data_type for init in model.graph.initializer}
    dequantized = [node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert sum(weights.get(name) == onnx.TensorProto.INT8 for name in dequantized) == 3, "every weight stays INT8"
    wide = {node.input[2] for node in model.graph.node if node.op_type == "QuantizeLinear" and len(node.input) > 2}
    zero_point_types = {weights[name] for name in wide if name in weights}
    assert zero_point_types == {onnx.TensorProto.UINT8, onnx.TensorProto.UINT16}
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 21


def test_float_alone_cannot_win_back_what_16_bit_activations_do(tmp_path, gated):
    """Leaving the gate's consumer in float keeps its uint8-rounded inputs: 16-bit activations widen them too."""
    _, widened = _escalate_gate(tmp_path / "int16", gated, ("int16",))
    _, floated = _escalate_gate(tmp_path / "float", gated, ("float",))
    assert widened.met and not floated.met
    assert widened.best.val_acc > floated.best.val_acc


def test_unknown_mixed_precision_is_refused(tmp_path, outlier):
    _, data, fp32, samples = outlier
    with pytest.raises(TierkitError, match=r"quantization\.escalation\.precisions"):
        escalate_ptq(
            fp32,
            tmp_path / "x.onnx",
            samples,
            data,
            Recipe("minmax", True),
            0.5,
            1.0,
            0.02,
            False,
            32,
            [],
            [],
            1,
            ("int4",),
        )


def _cli(*arguments: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tierkit.quant.sensitivity", *map(str, arguments)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_reports_on_an_int8_file_next_to_its_float_source(tmp_path):
    shape = (1, 16, 16)
    fp32 = export_onnx(SmallCNN(shape, 4, width=0.25), tmp_path / "fp32.onnx", shape)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=256)
    int8 = quantize_int8(fp32, tmp_path / "int8_ptq.onnx", calibration_samples(data, 64, 32), 32)
    result = _cli(int8, "data=synthetic", "quantization.calibration.samples=64", "accuracy_effects=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "int8_ptq-sensitivity.json").read_text())
    assert len(report["layers"]) == 7 and report["int8_file_val_acc"] is not None
    assert all(layer["drop_alone"] is None and layer["output_sqnr_db"] > 10 for layer in report["layers"])
    assert (tmp_path / "int8_ptq-sensitivity.png").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "fp32.onnx", "is not an INT8 model"),
        (lambda folder: folder / "missing.onnx", "does not exist"),
        (lambda folder: (folder / "bad.onnx").write_bytes(b"not onnx") and folder / "bad.onnx", "is not an ONNX model"),
    ],
    ids=["float-file", "missing", "not-onnx"],
)
def test_cli_refuses_what_it_cannot_analyse(tmp_path, make, message):
    export_onnx(SmallCNN((1, 16, 16), 4, width=0.25), tmp_path / "fp32.onnx", (1, 16, 16))
    result = _cli(make(tmp_path), "data=synthetic", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*-sensitivity.*"))


def test_cli_needs_the_float_source_of_an_int8_file(tmp_path):
    shape = (1, 16, 16)
    fp32 = export_onnx(SmallCNN(shape, 4, width=0.25), tmp_path / "source.onnx", shape)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", np.random.rand(32, *shape).astype(np.float32), 32)
    result = _cli(int8, "data=synthetic", cwd=tmp_path)
    assert result.returncode == 2 and "fp32.onnx does not exist" in result.stderr
