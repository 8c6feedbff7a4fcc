"""Single-file ONNX export with a dynamic batch axis, written atomically."""

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from tierkit.utils.files import atomic_write


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Export ``model`` (eval mode, CPU) to one ``.onnx`` file with inputs ``input`` and outputs ``logits``.

    Weights are embedded (no ``.onnx.data`` side file) so the file size is the model's real size.
    """
    probe = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                probe,
                example,
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)

    return atomic_write(Path(path).with_suffix(".onnx"), write)
