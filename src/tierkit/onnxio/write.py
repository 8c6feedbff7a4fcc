"""Single-file ONNX export with a dynamic batch axis, written atomically."""

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from tierkit.onnxio.compact import compact_model
from tierkit.utils.files import atomic_write


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    translations: dict[Any, Callable] | None = None,
    post_process: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU) to one ``.onnx`` file with inputs ``input`` and outputs ``logits``.

    Weights are embedded (no ``.onnx.data`` side file) so the file size is the model's real size, and the graph is
    compacted (short tensor names, no exporter metadata) so that size is the weights, not bookkeeping.
    ``translations`` maps custom torch ops to ONNX functions; ``post_process`` rewrites the model before saving.
    """
    probe = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    example = (torch.zeros(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: Path) -> None:
        # The exporter prints its progress steps to stdout; a run's own progress display is enough.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                probe,
                example,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                custom_translation_table=translations,
                dynamo=True,
                verbose=False,
            )
        exported = compact_model(program.model_proto)
        if post_process is not None:
            exported = post_process(exported)
        onnx.save(exported, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)

    return atomic_write(Path(path).with_suffix(".onnx"), write)
