"""Quantization-aware training: quantizer placement, integer kernels in ONNX Runtime, stages, escalation, reload."""

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from tierkit.conf.validate import check_qat_stage, validate_train_config
from tierkit.errors import TierkitError
from tierkit.models import MLP, CifarResNet, MobileNetV2, SeparableCNN, SmallCNN
from tierkit.models.checkpoint import load_student
from tierkit.models.qat import (
    STAGES,
    batch_norm_factor,
    freeze_batch_norm,
    is_prepared,
    prepare_qat,
    qat_settings,
    qat_stage,
    set_qat_stage,
)
from tierkit.onnxio import export_onnx
from tierkit.onnxio.verify import float_compute_ops
from tierkit.profile import ort_session
from tierkit.quant.callback import QuantizationAwareTraining, require_observed_ranges
from tierkit.quant.qdq import export_qat_onnx, fold_batch_norm
from tierkit.runtime.cpu import needs_reduced_range

from conftest import FAST, compose_train, run_cli

SHAPE = (1, 16, 16)


def _calibrated(
    model: nn.Module,
    batches: int = 3,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    float_first_layer: bool = False,
) -> nn.Module:
    """Prepared and run through the activation stage, then frozen: an exportable QAT model.

    Weights take the range this CPU computes exactly (7 bits on x86 without VNNI, as the QAT stage picks), so
    ONNX Runtime here and PyTorch do the same integer arithmetic; tests/test_kernel_emulation.py covers the rest.
    """
    reduce_range = needs_reduced_range() if reduce_range is None else reduce_range
    prepared = prepare_qat(
        model, per_channel=per_channel, reduce_range=reduce_range, float_first_layer=float_first_layer
    )
    set_qat_stage(prepared, "activations")
    prepared.train()
    for _ in range(batches):
        prepared(torch.randn(8, *SHAPE))
    set_qat_stage(prepared, "frozen")
    return prepared.eval()


def _weight_scale_dims(graph: onnx.GraphProto) -> list[list[int]]:
    """The dims of each stored weight's DequantizeLinear scale: [channels] per channel, [] per tensor."""
    initializers = {init.name: init for init in graph.initializer}
    return [
        list(initializers[node.input[1]].dims)
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
        and len(initializers[node.input[0]].dims) > 1
    ]


@pytest.mark.parametrize(
    "build",
    [
        lambda: SmallCNN(SHAPE, 4, width=0.5),
        lambda: CifarResNet(SHAPE, 4, depth=8),
        lambda: MobileNetV2(SHAPE, 4, width=0.25),
        lambda: MLP(SHAPE, 4),
        lambda: SeparableCNN(SHAPE, 4, width=0.375),
    ],
    ids=["cnn", "resnet", "mobilenetv2", "mlp", "separable"],
)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_qat_export_is_qdq_with_int8_weights_and_runs_on_integer_kernels(tmp_path, build, per_channel):
    # Built here, seeded: weights drawn at collection time would depend on which tests were collected first.
    torch.manual_seed(0)
    model = build()
    prepared = _calibrated(model, per_channel=per_channel)
    path = export_qat_onnx(prepared, tmp_path / "int8.onnx", SHAPE)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8_weights) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert {len(dims) for dims in _weight_scale_dims(graph)} == {1 if per_channel else 0}
    assert float_compute_ops(path) == []
    fp32 = export_onnx(model.eval(), tmp_path / "fp32.onnx", SHAPE)
    # INT8 weights; per-channel float scales and biases keep tiny depthwise models above a quarter.
    assert path.stat().st_size <= 0.5 * fp32.stat().st_size
    x = torch.randn(16, *SHAPE)
    with torch.no_grad():
        expected = prepared(x).numpy()
    actual = ort_session(path).run(None, {"input": x.numpy()})[0]
    # Same integer arithmetic, up to rounding ties: at most a couple of output quantization steps apart.
    logits_quantizer = prepared.get_submodule(next(n for n in prepared.graph.nodes if n.op == "output").args[0].target)
    step = float(logits_quantizer.qparams()[0])
    assert np.abs(actual - expected).max() <= 2.01 * step
    top_two = np.sort(expected, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 4 * step
    assert (actual.argmax(1) == expected.argmax(1))[clear].all()


@pytest.mark.parametrize(
    "build",
    [lambda: SmallCNN(SHAPE, 4, width=0.5), lambda: MobileNetV2(SHAPE, 4, width=0.25), lambda: MLP(SHAPE, 4)],
    ids=["cnn", "mobilenetv2", "mlp"],
)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_qat_can_leave_the_first_layer_float_as_post_training_int8_does(tmp_path, build, per_channel):
    torch.manual_seed(0)
    model = build()
    prepared = _calibrated(model, per_channel=per_channel, float_first_layer=True)
    assert qat_settings(prepared)["float_first_layer"] is True
    rebuilt = prepare_qat(build(), **qat_settings(prepared))
    assert qat_settings(rebuilt) == qat_settings(prepared)
    assert rebuilt.state_dict().keys() == prepared.state_dict().keys(), "a checkpoint reloads into the same model"

    path = export_qat_onnx(prepared, tmp_path / "int8.onnx", SHAPE)
    graph = onnx.load(str(path)).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    compute = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert compute[0].input[1] in floats and all(node.input[1] not in floats for node in compute[1:])
    assert len(float_compute_ops(path)) == 1, "the first layer, and only it, runs in float"
    assert not [node for node in graph.node if node.op_type == "QuantizeLinear" and "input" in node.input]
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8_weights) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) - 1
    x = torch.randn(16, *SHAPE)
    with torch.no_grad():
        expected = prepared(x).numpy()
    actual = ort_session(path).run(None, {"input": x.numpy()})[0]
    logits_quantizer = prepared.get_submodule(next(n for n in prepared.graph.nodes if n.op == "output").args[0].target)
    assert np.abs(actual - expected).max() <= 2.01 * float(logits_quantizer.qparams()[0])


def test_the_qat_stage_configured_with_float_first_layer_prepares_the_student_so(tmp_path):
    cfg = compose_train(tmp_path, "quantization.float_first_layer=true", "quantization.reduce_range=false")
    callback = instantiate(cfg.quantization.qat.callback)
    module = SimpleNamespace(student=SmallCNN(SHAPE, 4, width=0.5), log=lambda *args, **kwargs: None)
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=True, strategy=None, checkpoint_callbacks=[])
    callback.on_train_epoch_start(trainer, module)
    assert qat_stage(module.student) == "weights"
    assert qat_settings(module.student)["float_first_layer"] is True


def test_per_tensor_qat_rounds_each_weight_on_the_grid_export_gives_its_folded_weight():
    """Export folds batch norm into the weight and then takes one scale for the whole tensor: training must round
    on that grid, not on the unfolded weight's, or the shipped model differs from the trained one."""
    torch.manual_seed(0)
    model = MobileNetV2(SHAPE, 4, width=0.25)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.weight.data.uniform_(0.1, 3.0)  # factors far apart, as after training
    prepared = _calibrated(model, per_channel=False, reduce_range=False)
    folded = fold_batch_norm(prepared)
    checked = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or len(node.args) != 2:
            continue
        conv, norm = prepared.get_submodule(node.target), prepared.get_submodule(next(iter(node.users)).target)
        factor = batch_norm_factor(norm).detach().reshape(-1, 1, 1, 1)
        trained = (conv.weight_quant(conv.weight, batch_norm_factor(norm)) * factor).detach()
        weight = folded.get_submodule(node.target).weight.detach()
        shipped = torch.fake_quantize_per_tensor_affine(weight, float(weight.abs().max() / 127), 0, -128, 127)
        torch.testing.assert_close(trained, shipped, rtol=0, atol=1e-4 * float(weight.abs().max() / 127))
        checked += 1
    assert checked == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_stages_switch_quantizers_and_prepare_keeps_parameters():
    model = SmallCNN(SHAPE, 4, width=0.5)
    parameters = {id(p) for p in model.parameters()}
    prepared = prepare_qat(model)
    assert {id(p) for p in prepared.parameters()} == parameters
    assert prepare_qat(prepared) is prepared
    for stage in STAGES:
        set_qat_stage(prepared, stage)
        assert qat_stage(prepared) == stage
    x = torch.randn(4, *SHAPE)
    set_qat_stage(prepared, "float")
    with torch.no_grad():
        assert torch.equal(prepared.eval()(x), model.eval()(x))


def test_prepare_puts_the_quantizers_where_the_model_is():
    """The QAT callback prepares a student that Lightning already moved to the GPU; "meta" stands in for it."""
    prepared = prepare_qat(SmallCNN(SHAPE, 4, width=0.5).to("meta"))
    assert {tensor.device.type for tensor in [*prepared.parameters(), *prepared.buffers()]} == {"meta"}


def test_frozen_stage_stops_observers_and_batch_norm_statistics():
    prepared = _calibrated(SmallCNN(SHAPE, 4, width=0.5))
    prepared.train()
    freeze_batch_norm(prepared)
    state = {k: v.clone() for k, v in prepared.state_dict().items() if isinstance(v, torch.Tensor)}
    prepared(torch.randn(8, *SHAPE) * 5)
    after = prepared.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_layers_it_cannot_quantize_stay_float_and_are_reported(tmp_path):
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(16, 8, 3)
            self.head = nn.Linear(8 * 14, 4)

        def forward(self, x):
            return self.head(torch.sigmoid(self.conv(x.flatten(1, 2))).flatten(1))

    path = export_qat_onnx(_calibrated(WithConv1d()), tmp_path / "int8.onnx", SHAPE)
    assert float_compute_ops(path) == ["FusedConv"]


def test_untraceable_model_gets_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(256, 4)

        def forward(self, x):
            return self.head(x.flatten(1)) if x.sum() > 0 else -self.head(x.flatten(1))

    with pytest.raises(TierkitError, match=r"cannot be traced by torch\.fx"):
        prepare_qat(Branchy())


def test_export_refuses_activation_quantizers_that_never_saw_data(tmp_path):
    prepared = prepare_qat(SmallCNN(SHAPE, 4, width=0.5))
    set_qat_stage(prepared, "weights")
    with pytest.raises(TierkitError, match="never saw data"):
        export_qat_onnx(prepared, tmp_path / "int8.onnx", SHAPE)


# The quantization stage on the digits data (360 test images): PTQ first, then QAT when the budget is missed.
QUANT = [
    *[o for o in FAST if o != "quantization=off"],
    "data=digits",
    "model.teacher.base_channels=16",
    "trainer.max_epochs=4",
    "teacher.max_epochs=4",
    "~callbacks.pruning",
    "quantization.qat.epochs=3",
    "quantization.qat.callback.freeze_epoch=2",
    "quantization.calibration.samples=128",
]
# A budget no INT8 model meets, with the cheaper post-training steps off: the run escalates straight to QAT.
FORCE_QAT = ["quantization.max_drop_vs_fp32=-1", "quantization.escalation.enabled=false"]


@pytest.fixture(scope="module")
def escalated_run(tmp_path_factory):
    """A budget no INT8 model can meet (a negative drop) forces escalation to QAT."""
    root = tmp_path_factory.mktemp("qat")
    run = root / "outputs" / "escalated"
    result = run_cli(root, *QUANT, *FORCE_QAT, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run, json.loads((run / "metrics.json").read_text())["quantization"], result


@pytest.mark.slow
def test_escalation_runs_qat_when_ptq_misses_the_budget(escalated_run):
    _, run, report, result = escalated_run
    assert "qat" in report and report["qat"]["float_compute_ops"] == []
    assert report["budget_met"] is False and "BUDGET MISSED" in report["reason"]
    more_accurate = "qat" if report["qat"]["val_acc"] >= report["ptq"]["val_acc"] else "ptq"
    assert report["path"] == more_accurate, "the INT8 model more accurate on validation ships"
    assert (run / "checkpoints" / "qat" / "best.ckpt").is_file()
    recorded = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["tierkit"]["int8_path"]
    assert recorded == report["path"], "the FP32 checkpoint records which INT8 model ships"
    assert "INT8 path" in result.stdout
    assert {"fp32.onnx", "fp16.onnx", "int8_ptq.onnx", "int8_qat.onnx"} <= {
        p.name for p in (run / "quantization").iterdir()
    }


@pytest.mark.slow
def test_qat_accuracy_in_pytorch_and_onnx_runtime_agree(escalated_run):
    _, _, report, _ = escalated_run
    assert abs(report["qat"]["pytorch_test_acc"] - report["qat"]["test_acc"]) <= 0.003


@pytest.mark.slow
def test_stages_switched_at_the_configured_epochs(escalated_run):
    _, run, _, _ = escalated_run
    checkpoint = torch.load(run / "checkpoints" / "qat" / "last.ckpt", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if "QuantizationAwareTraining" in k)
    assert state["history"] == [
        {"epoch": 0, "stage": "weights"},
        {"epoch": 1, "stage": "activations"},
        {"epoch": 2, "stage": "frozen"},
    ]


@pytest.mark.slow
def test_qat_checkpoint_reloads_prepared_for_export(escalated_run, tmp_path):
    _, run, _, _ = escalated_run
    student, config = load_student(run / "checkpoints" / "qat" / "last.ckpt")
    assert is_prepared(student) and qat_stage(student) == "frozen"
    path = export_qat_onnx(student, tmp_path / "int8.onnx", config.data.input_shape)
    assert float_compute_ops(path) == []


@pytest.mark.slow
def test_resume_mid_qat_continues_the_qat_stage(escalated_run):
    root, run, _, _ = escalated_run
    resumed = root / "outputs" / "resumed"
    result = run_cli(
        root,
        *QUANT,
        *FORCE_QAT,
        "quantization.qat.epochs=4",
        f"ckpt_path={run / 'checkpoints' / 'qat' / 'last.ckpt'}",
        f"hydra.run.dir={resumed}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(resumed / "checkpoints" / "qat" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 3
    assert not (resumed / "checkpoints" / "best.ckpt").exists(), "the FP32 stage must not run again"


@pytest.mark.slow
def test_export_ships_the_qat_model_as_int8(escalated_run, tmp_path):
    root, run, report, _ = escalated_run
    out = tmp_path / "exports"
    quick = ["profiling.hardware=[cpu_2thread]", "profiling.repeats=10", "profiling.operator_runs=5"]
    result = run_cli(root, f"run={run}", f"output_dir={out}", "precisions=[int8]", *quick, script="export.py")
    assert result.returncode == 0, result.stderr[-3000:]
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    # Where QAT shipped: its model in the weight range it trained in, the other range from post-training
    # quantization. Where PTQ shipped: both ranges from post-training quantization.
    methods = {v["weight_bits"]: v["int8_method"] for v in variants}
    trained = 7 if needs_reduced_range() else 8
    assert methods == {trained: report["path"], 15 - trained: "ptq"}
    assert all(v["float_compute_ops"] == [] for v in variants)
    shipped = next(v for v in variants if v["weight_bits"] == trained)
    assert shipped["made_by"] == "training" and shipped["sha256"] == report[report["path"]]["sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "budget"), [("ptq", ["quantization.max_drop_vs_fp32=1.0"]), ("qat", FORCE_QAT)], ids=["ptq", "qat"]
)
def test_the_first_layer_left_in_float_is_what_training_judges_and_export_ships(tmp_path, path, budget):
    run = tmp_path / "outputs" / "float-first"
    result = run_cli(tmp_path, *QUANT, *budget, "quantization.float_first_layer=true", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "metrics.json").read_text())["quantization"]
    assert report["float_layers"] == ["conv0"] and report["path"] == path
    assert len(report[path]["float_compute_ops"]) == 1, "only the first convolution runs in float"
    bits = 7 if needs_reduced_range() else 8
    out = tmp_path / "exports"
    quick = ["profiling.hardware=[cpu_2thread]", "profiling.repeats=10", "profiling.operator_runs=5"]
    exported = run_cli(
        tmp_path,
        f"run={run}",
        f"output_dir={out}",
        "precisions=[int8]",
        f"int8_weight_bits=[{bits}]",
        *quick,
        script="export.py",
    )
    assert exported.returncode == 0, (exported.stdout + exported.stderr)[-3000:]
    (variant,) = json.loads((out / "manifest.json").read_text())["variants"]
    assert variant["made_by"] == "training" and variant["sha256"] == report[path]["sha256"]
    assert (
        variant["int8_method"] == path
        and variant["float_layers"] == ["conv0"]
        and len(variant["float_compute_ops"]) == 1
    )


@pytest.mark.slow
def test_generous_budget_ships_ptq_without_qat(tmp_path):
    run = tmp_path / "outputs" / "generous"
    result = run_cli(tmp_path, *QUANT, "quantization.max_drop_vs_fp32=1.0", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "metrics.json").read_text())["quantization"]
    assert report["path"] == "ptq" and report["budget_met"] is True and "qat" not in report
    assert report["ptq"]["float_compute_ops"] == []
    assert not (run / "checkpoints" / "qat").exists()


@pytest.mark.slow
def test_ptq_only_reports_a_missed_budget_instead_of_shipping_silently(tmp_path):
    run = tmp_path / "outputs" / "ptq"
    result = run_cli(tmp_path, *QUANT, "quantization=ptq", "quantization.max_drop_vs_fp32=-1", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "metrics.json").read_text())["quantization"]
    assert report["budget_met"] is False and "QAT is disabled" in report["reason"]
    assert "BUDGET MISSED" in result.stdout


@pytest.mark.slow
def test_pruning_that_overlaps_qat_is_refused_before_training(tmp_path):
    result = run_cli(tmp_path, *FAST, "callbacks=qat", "callbacks.qat.start_epoch=5", "callbacks.pruning.end_epoch=8")
    assert result.returncode == 2
    assert "pruning must end before fake quantization starts" in result.stdout + result.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints"))


def test_qat_schedule_longer_than_the_stage_is_refused(tmp_path):
    cfg = compose_train(tmp_path, *QUANT, "quantization.qat.epochs=1")
    with pytest.raises(TierkitError, match="activations are only quantized from epoch"):
        check_qat_stage(cfg.quantization)
    with pytest.raises(TierkitError, match="activations are only quantized from epoch"):
        validate_train_config(cfg)


def test_qat_schedule_that_freezes_ranges_before_observing_them_is_refused(tmp_path):
    cfg = compose_train(tmp_path, *QUANT, "quantization.qat.callback.activations_epoch=2")
    with pytest.raises(TierkitError, match="freezes activation ranges at epoch 2"):
        check_qat_stage(cfg.quantization)
    late_freeze = compose_train(tmp_path, *FAST, "callbacks=qat", "callbacks.qat.freeze_epoch=11")
    with pytest.raises(TierkitError, match="freeze_epoch to at least 12"):
        validate_train_config(late_freeze)
    short = compose_train(tmp_path, *FAST, "callbacks=qat", "trainer.max_epochs=5")
    with pytest.raises(TierkitError, match=r"the run ends after trainer\.max_epochs=5"):
        validate_train_config(short)
    validate_train_config(compose_train(tmp_path, *FAST, "callbacks=qat", "trainer.max_epochs=25"))
    with pytest.raises(TierkitError, match="equals freeze_epoch"):
        QuantizationAwareTraining(start_epoch=1, activations_epoch=2, freeze_epoch=2)


def test_freezing_activation_ranges_that_never_saw_a_batch_fails_at_once():
    """(0, 0, 0) keeps an already frozen student frozen (fine-tuning); on a fresh one it must not train on."""
    model = prepare_qat(SmallCNN(SHAPE, 4, width=0.5))
    set_qat_stage(model, "frozen")
    with pytest.raises(TierkitError, match=r"froze \d+ activation quantizer\(s\) that never observed a batch"):
        require_observed_ranges(model)
    require_observed_ranges(_calibrated(SmallCNN(SHAPE, 4, width=0.5)))


@pytest.mark.slow
def test_qat_inside_the_main_fit_exports_its_int8_model(tmp_path):
    run = tmp_path / "outputs" / "infit"
    result = run_cli(
        tmp_path,
        *QUANT,
        "callbacks=qat",
        "callbacks.qat.start_epoch=1",
        "callbacks.qat.activations_epoch=2",
        "callbacks.qat.freeze_epoch=3",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "metrics.json").read_text())["quantization"]
    assert report["path"] == "qat" and (run / "quantization" / "int8_qat.onnx").is_file()
    student, _ = load_student(run / "checkpoints" / "best.ckpt")
    assert qat_stage(student) == "frozen"


@pytest.mark.slow
def test_quantization_stage_after_a_ddp_fit_runs_on_rank_zero_alone(tmp_path):
    run = tmp_path / "outputs" / "ddp"
    overrides = ["trainer=ddp_cpu", "trainer.max_epochs=2", *FORCE_QAT]
    result = run_cli(tmp_path, *QUANT, *overrides, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "metrics.json").read_text())["quantization"]
    assert report["qat"]["float_compute_ops"] == []
