"""Compacted INT8 files: the same outputs and integer kernels as the quantizer's own file, in fewer bytes."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tierkit.quant.ptq
import tierkit.quant.qdq
from tierkit.models import SmallCNN
from tierkit.models.qat import prepare_qat, set_qat_stage
from tierkit.onnxio import export_onnx
from tierkit.onnxio.compact import compact_model
from tierkit.onnxio.verify import float_compute_ops
from tierkit.profile import ort_session
from tierkit.quant import quantize_int8
from tierkit.quant.qdq import export_qat_onnx

SHAPE = (1, 16, 16)


def _uncompacted(monkeypatch: pytest.MonkeyPatch, module, export, *args) -> Path:
    """What ``export`` wrote before compaction existed: the reference the compacted file must match."""
    with monkeypatch.context() as patch:
        patch.setattr(module, "compact_model", lambda model: model)
        return export(*args)


def _assert_compacted(reference: Path, compacted: Path) -> None:
    x = torch.randn(32, *SHAPE).numpy()
    expected = ort_session(reference).run(None, {"input": x})[0]
    np.testing.assert_array_equal(ort_session(compacted).run(None, {"input": x})[0], expected)
    assert float_compute_ops(compacted) == []
    onnx.checker.check_model(str(compacted), full_check=True)
    assert compacted.stat().st_size < reference.stat().st_size
    graph = onnx.load(str(compacted)).graph
    assert [value.name for value in graph.input] == ["input"] and [value.name for value in graph.output] == ["logits"]
    assert all(not node.name for node in graph.node)


def test_ptq_file_is_compacted_without_changing_outputs_or_kernels(tmp_path, monkeypatch):
    torch.manual_seed(0)
    fp32 = export_onnx(SmallCNN(SHAPE, 4, width=0.25).eval(), tmp_path / "fp32.onnx", SHAPE)
    samples = torch.randn(64, *SHAPE).numpy()
    reference = _uncompacted(monkeypatch, tierkit.quant.ptq, quantize_int8, fp32, tmp_path / "ref.onnx", samples, 16)
    compacted = quantize_int8(fp32, tmp_path / "int8.onnx", samples, batch_size=16)
    _assert_compacted(reference, compacted)
    # The names, metadata and zero points were a third of this tiny student's INT8 file.
    assert compacted.stat().st_size <= 0.3 * fp32.stat().st_size


def test_qat_file_is_compacted_without_changing_outputs_or_kernels(tmp_path, monkeypatch):
    torch.manual_seed(0)
    prepared = prepare_qat(SmallCNN(SHAPE, 4, width=0.25))
    set_qat_stage(prepared, "activations")
    prepared.train()
    prepared(torch.randn(16, *SHAPE))
    set_qat_stage(prepared, "frozen")
    prepared.eval()
    reference = _uncompacted(monkeypatch, tierkit.quant.qdq, export_qat_onnx, prepared, tmp_path / "ref.onnx", SHAPE)
    _assert_compacted(reference, export_qat_onnx(prepared, tmp_path / "int8.onnx", SHAPE))


def test_attributes_that_say_what_their_absence_means_are_dropped(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.Conv2d(4, 4, 3), torch.nn.MaxPool2d(2)
    ).eval()
    path = export_onnx(model, tmp_path / "fp32.onnx", SHAPE)
    attributes = [
        {a.name: list(a.ints) for a in node.attribute} for node in onnx.load(str(path)).graph.node if node.attribute
    ]
    # Only the first convolution's stride and padding and the pool's window differ from what absence means.
    assert attributes == [{"strides": [2, 2], "pads": [1, 1, 1, 1]}, {"kernel_shape": [2, 2], "strides": [2, 2]}]
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(ort_session(path).run(None, {"input": x.numpy()})[0], expected, atol=1e-5)


def test_compacting_twice_changes_nothing(tmp_path):
    fp32 = export_onnx(SmallCNN(SHAPE, 4, width=0.25).eval(), tmp_path / "fp32.onnx", SHAPE)
    once = onnx.load(str(quantize_int8(fp32, tmp_path / "int8.onnx", torch.randn(32, *SHAPE).numpy(), 16)))
    assert compact_model(onnx.ModelProto.FromString(once.SerializeToString())) == once
