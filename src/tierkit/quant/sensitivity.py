"""Which layer of an INT8 model costs accuracy, for any INT8 ONNX file and its float source.

    python -m tierkit.quant.sensitivity MODEL.onnx [float=FP32.onnx] [out=FOLDER] [accuracy_effects=false]
        [data=<name> and any other train.py override, e.g. quantization.calibration.samples=256]

MODEL must be INT8 (QDQ or QOperator). Its float source is ``fp32.onnx`` next to it (as in a run's
``quantization/`` folder and in every export), or the file given as ``float=``. The float model is quantized
again as tierkit quantizes (the run config's ``quantization.calibration``, ``reduce_range`` and ``per_channel``),
layer by layer; the report compares that with MODEL's own accuracy. Writes
``<out>/<MODEL stem>-sensitivity.{json,md,png}`` (``out`` defaults to MODEL's folder).
Exit code 2 on a mistake, with one message.
"""

import logging
import sys
from pathlib import Path

import hydra
import onnx
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from tierkit.conf import CONFIG_DIR
from tierkit.errors import TierkitError
from tierkit.onnxio import onnx_accuracy
from tierkit.quant.layer_analysis import analyse_layers, quiet_session
from tierkit.quant.ptq import calibration_samples
from tierkit.quant.sensitivity_files import NOTICEABLE, headline, write_sensitivity
from tierkit.runtime.cpu import needs_reduced_range

log = logging.getLogger(__name__)

INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
OPTIONS = ("float", "out", "accuracy_effects")


def load_onnx(path: Path, role: str) -> onnx.ModelProto:
    if not path.is_file():
        raise TierkitError(f"{role} {path} does not exist", where=str(path), fix="pass the path of an .onnx file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError or OSError depending on the damage
        raise TierkitError(
            f"{role} {path} is not an ONNX model ({type(exc).__name__})",
            where=str(path),
            fix="pass an .onnx file written by tierkit, torch.onnx or another ONNX exporter",
        ) from exc


def is_int8(model: onnx.ModelProto) -> bool:
    return any(node.op_type in INT8_OPS for node in model.graph.node)


def split_arguments(arguments: list[str]) -> tuple[Path, dict[str, str], list[str]]:
    """The model path, this tool's own ``key=value`` options, and the rest as train.py overrides."""
    if not arguments or arguments[0].startswith("-") or "=" in arguments[0]:
        raise TierkitError(
            "no INT8 model given",
            where="the command line",
            fix="python -m tierkit.quant.sensitivity <run>/quantization/int8_ptq.onnx data=<the run's data>",
        )
    options, overrides = {}, []
    for argument in arguments[1:]:
        key, _, value = argument.partition("=")
        if key in OPTIONS:
            options[key] = value
        else:
            overrides.append(argument)
    return Path(arguments[0]), options, overrides


def run(arguments: list[str]) -> Path:
    """Analyse the model named in ``arguments``; returns the Markdown report's path."""
    model_path, options, overrides = split_arguments(arguments)
    if not is_int8(load_onnx(model_path, "model")):
        raise TierkitError(
            f"{model_path} is not an INT8 model: it has no QuantizeLinear, DequantizeLinear or integer operator",
            where=str(model_path),
            fix="pass an INT8 file (e.g. <run>/quantization/int8_ptq.onnx) and its float source as float=",
        )
    float_path = Path(options.get("float") or model_path.with_name("fp32.onnx"))
    if is_int8(load_onnx(float_path, "float model")):
        raise TierkitError(
            f"the float model {float_path} is itself quantized",
            where="float=",
            fix="pass the FP32 file the INT8 model was made from (fp32.onnx in a run or an export)",
        )
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base=None):
            cfg: DictConfig = compose("train", overrides=overrides)
    except HydraException as exc:
        raise TierkitError(
            f"the overrides {overrides} do not compose: {str(exc).splitlines()[0]}",
            where="the command line",
            fix="use train.py's config keys, e.g. data=mnist5k quantization.calibration.samples=256",
        ) from exc
    datamodule = hydra.utils.instantiate(cfg.data)
    settings = cfg.quantization
    calibration = settings.calibration
    samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
    reduce_range = needs_reduced_range() if settings.reduce_range is None else bool(settings.reduce_range)
    accuracy_effects = options.get("accuracy_effects", "true").lower() not in ("false", "0", "no")
    report = analyse_layers(
        float_path,
        datamodule,
        samples,
        calibration.batch_size,
        calibration.method,
        reduce_range,
        bool(settings.per_channel),
        accuracy_effects=accuracy_effects,
    )
    report.int8_file = str(model_path)
    report.int8_file_val_acc = onnx_accuracy(quiet_session(model_path), datamodule, "val")
    if abs(report.int8_file_val_acc - report.int8_val_acc) >= NOTICEABLE:
        log.warning(
            "%s scores %.2f%% on validation, the re-quantized model %.2f%%: the file was made with other settings "
            "(calibration, weight range or per-channel) or other data than this analysis",
            model_path,
            100 * report.int8_file_val_acc,
            100 * report.int8_val_acc,
        )
    out = Path(options.get("out") or model_path.parent)
    paths = write_sensitivity(report, out, stem=f"{model_path.stem}-sensitivity")
    print(headline(report))
    print(f"report: {paths['md']} (also .json, .png)")
    return paths["md"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        print(__doc__)
        return
    try:
        run(sys.argv[1:])
    except TierkitError as exc:
        log.error("%s", exc.render())
        sys.exit(2)


if __name__ == "__main__":
    main()
