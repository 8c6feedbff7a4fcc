from functools import partial

import numpy as np
import onnx
import pytest
import torch

from tierkit.data import SyntheticDataModule
from tierkit.errors import TierkitError
from tierkit.models import MLP, MobileNetV2, SmallCNN
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.onnxio.verify import float_compute_ops
from tierkit.profile import ort_session
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.quant.ptq import first_layer
from tierkit.runtime.cpu import needs_reduced_range

SHAPE = (1, 16, 16)


def _data(num_samples=128):
    return SyntheticDataModule(input_shape=list(SHAPE), num_classes=4, mean=[0.5], std=[0.3], num_samples=num_samples)


@pytest.mark.parametrize("build", [partial(SmallCNN, width=0.5), partial(MLP, width=0.25)], ids=["cnn", "mlp"])
def test_int8_runs_on_integer_kernels_and_tracks_fp32(tmp_path, build):
    data = _data()
    fp32 = export_onnx(build(SHAPE, 4).eval(), tmp_path / "fp32.onnx", SHAPE)
    assert float_compute_ops(fp32), "the FP32 graph has float Conv/Gemm to begin with"
    # As the quantization stage does: on x86 without VNNI, full-range weights saturate ONNX Runtime's u8 x s8 kernels.
    samples = calibration_samples(data, 64, 16)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", samples, batch_size=16, reduce_range=needs_reduced_range())
    assert float_compute_ops(int8) == []
    # Biases are stored float: ONNX Runtime quantizes them to INT32 itself when it loads the file.
    assert not [i for i in onnx.load(str(int8)).graph.initializer if i.data_type == onnx.TensorProto.INT32]
    x = data.splits["test"].images[:16].numpy()
    reference = ort_session(fp32).run(None, {"input": x})[0]
    quantized = ort_session(int8).run(None, {"input": x})[0]
    assert (reference.argmax(1) == quantized.argmax(1)).mean() >= 0.9
    assert int8.stat().st_size < fp32.stat().st_size


def test_per_tensor_int8_has_one_weight_scale_per_layer_and_integer_kernels(tmp_path):
    data = _data()
    fp32 = export_onnx(MobileNetV2(SHAPE, 4, width=0.25).eval(), tmp_path / "fp32.onnx", SHAPE)
    samples = calibration_samples(data, 64, 16)
    per_tensor = quantize_int8(fp32, tmp_path / "int8.onnx", samples, batch_size=16, per_channel=False)
    graph = onnx.load(str(per_tensor)).graph
    initializers = {init.name: init for init in graph.initializer}
    weights = {init.name for init in graph.initializer if len(init.dims) > 1}
    scales = [initializers[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert scales and all(not scale.dims for scale in scales)
    assert float_compute_ops(per_tensor) == []
    per_channel = quantize_int8(fp32, tmp_path / "int8_pc.onnx", samples, batch_size=16)
    assert per_tensor.stat().st_size < per_channel.stat().st_size


@pytest.mark.parametrize("build", [partial(SmallCNN, width=0.5), partial(MLP, hidden=(16,))], ids=["cnn", "mlp"])
def test_the_first_layer_left_in_float_is_the_one_reading_the_input(tmp_path, build):
    data = _data()
    fp32 = export_onnx(build(SHAPE, 4).eval(), tmp_path / "fp32.onnx", SHAPE)
    (layer,) = first_layer(fp32)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_samples(data, 64, 16), 16, float_layers=[layer])
    graph = onnx.load(str(int8)).graph
    readers = [node.op_type for node in graph.node if graph.input[0].name in node.input]
    assert "QuantizeLinear" not in readers, "the input reaches the float layer unrounded"
    assert len(float_compute_ops(int8)) == 1


def test_fp16_keeps_float32_io_and_halves_weights(tmp_path):
    data = _data()
    model = SmallCNN(SHAPE, 4, width=1.0).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", SHAPE)
    fp16 = convert_fp16(fp32, tmp_path / "fp16.onnx")
    session = ort_session(fp16)
    assert session.get_inputs()[0].type == "tensor(float)"
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    assert abs(onnx_accuracy(session, data) - onnx_accuracy(ort_session(fp32), data)) <= 0.05


@pytest.mark.parametrize(("samples", "batch"), [(0, 16), (8, 16)])
def test_calibration_smaller_than_a_batch_is_refused(samples, batch):
    with pytest.raises(TierkitError, match="at least one batch"):
        calibration_samples(_data(), samples, batch)


def test_calibration_never_uses_test_images():
    data = _data()
    samples = calibration_samples(data, 64, 16)
    test = {row.tobytes() for row in data.splits["test"].images.numpy()}
    assert not test & {row.tobytes() for row in samples}


def test_unknown_calibration_method_is_refused(tmp_path):
    fp32 = export_onnx(MLP(SHAPE, 4, width=0.25).eval(), tmp_path / "fp32.onnx", SHAPE)
    with pytest.raises(TierkitError, match="calibration method"):
        quantize_int8(fp32, tmp_path / "int8.onnx", np.zeros((16, *SHAPE), np.float32), method="kl")
    assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, False),
        ({"sse4_2", "avx2"}, True),
        ({"avx_vnni", "avx2"}, False),
        (set(), False),
    ],
)
def test_reduced_range_only_for_x86_without_vnni(flags, expected):
    assert needs_reduced_range(flags) is expected


def test_int8_export_is_deterministic_for_a_seed(tmp_path):
    data = _data()
    fp32 = export_onnx(SmallCNN(SHAPE, 4, width=0.5).eval(), tmp_path / "fp32.onnx", SHAPE)
    paths = [
        quantize_int8(fp32, tmp_path / f"int8_{i}.onnx", calibration_samples(data, 64, 16, seed=3), batch_size=16)
        for i in range(2)
    ]
    x = torch.randn(4, *SHAPE).numpy()
    a, b = (ort_session(p).run(None, {"input": x})[0] for p in paths)
    np.testing.assert_array_equal(a, b)
