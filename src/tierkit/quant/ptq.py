"""FP16 conversion and ONNX Runtime static INT8 quantization with calibration.

INT8 uses the layout ONNX Runtime fuses into integer kernels on x86 (QLinearConv, QGemm):
QDQ format, per-channel signed weights, unsigned activations.
"""

import hashlib
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import torch
from onnxconverter_common import float16
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tierkit.data.base import ArrayDataModule
from tierkit.errors import TierkitError
from tierkit.onnxio.compact import compact_model
from tierkit.utils.files import atomic_write

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def calibration_samples(
    datamodule: L.LightningDataModule, num_samples: int, batch_size: int, seed: int = 0
) -> np.ndarray:
    """A seeded random subset of the training split (never the test split) for calibration.

    tierkit's own data modules draw it by index; another LightningDataModule gives the first ``num_samples`` of
    its training loader, shuffled under ``seed``.
    """
    datamodule.setup()
    if isinstance(datamodule, ArrayDataModule):
        train = datamodule.splits["train"]
        _require_a_batch(num_samples, batch_size, len(train))
        index = np.random.default_rng(seed).choice(len(train), size=min(num_samples, len(train)), replace=False)
        return train.images[np.sort(index)].numpy()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        taken, available = [], 0
        for batch in datamodule.train_dataloader():
            taken.append(batch[0])
            available += len(batch[0])
            if available >= num_samples:
                break
    _require_a_batch(num_samples, batch_size, available)
    return torch.cat(taken)[:num_samples].numpy()


def _require_a_batch(num_samples: int, batch_size: int, available: int) -> None:
    if num_samples < batch_size or available < batch_size:
        raise TierkitError(
            f"calibration needs at least one batch of {batch_size} samples; asked for {num_samples}, "
            f"the training split has {available}",
            where="calibration.samples",
            fix="raise calibration.samples (e.g. 512) or lower calibration.batch_size",
        )


class CalibrationBatches(CalibrationDataReader):
    """Feeds ``samples`` to ONNX Runtime's calibrator in batches of about ``batch_size``."""

    def __init__(self, samples: np.ndarray, batch_size: int, input_name: str):
        self.batches = iter(np.array_split(samples, max(1, len(samples) // batch_size)))
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def samples_digest(samples: np.ndarray) -> str:
    """Digest of the calibration inputs, so two INT8 files can be told apart by the data they calibrated on."""
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    samples: np.ndarray,
    batch_size: int = 64,
    method: str = "minmax",
    reduce_range: bool = False,
    per_channel: bool = True,
) -> Path:
    """Static INT8 (QDQ, per-channel weights, uint8 activations) calibrated on ``samples``.

    ``per_channel=False`` gives each weight tensor one scale: a few bytes smaller, but layers whose channels differ
    in range (depthwise convolutions) lose precision.

    The quantizer's output is compacted (short names, no metadata, no all-zero weight zero points): for a small student
    that overhead is a third of the file. Biases stay float, as in tierkit's QAT export: ONNX Runtime's
    WeightBiasQuantization turns them into INT32 at load, with the scale (input scale x weight scale) the quantizer
    would have stored and the same values up to one rounding unit, so a stored INT32 copy would only add those
    per-channel scales and a DequantizeLinear per layer.
    """
    if method not in CALIBRATION_METHODS:
        raise TierkitError(
            f"unknown calibration method {method!r}",
            where="calibration.method",
            fix=f"use one of {', '.join(CALIBRATION_METHODS)}",
        )
    input_name = onnx.load(str(fp32_path)).graph.input[0].name

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="tierkit-ptq-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(tmp),
                CalibrationBatches(samples, batch_size, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options={"CalibTensorRangeSymmetric": False, "QuantizeBias": False},
            )
        onnx.save(compact_model(onnx.load(str(tmp))), str(tmp))
        onnx.checker.check_model(str(tmp))

    return atomic_write(out_path, write)


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Half-precision weights and compute, float32 inputs and outputs kept for callers."""
    model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    return atomic_write(out_path, lambda tmp: onnx.save(model, str(tmp)))
