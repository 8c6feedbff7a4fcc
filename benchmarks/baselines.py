"""The tools tierkit is compared against, configured the way their users configure them."""

import copy
import functools
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import torch
import torch_pruning as tp
from lightning.pytorch.callbacks import ModelPruning
from onnxruntime.quantization import quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tierkit.distill import DistillationModule
from tierkit.quant.ptq import CalibrationBatches


class PruneOnceAt:
    """For Lightning's ModelPruning(apply_pruning=...): prune at one epoch only.

    A plain float ``amount`` compounds every epoch (30% becomes 76% after four), which is not what a
    user asking for one sparsity wants.
    """

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, epoch: int) -> bool:
        return epoch == self.epoch


def ort_default_int8(fp32_path: Path, out_path: Path, samples: np.ndarray, batch_size: int = 64) -> Path:
    """ONNX Runtime's documented static INT8 recipe with its defaults: pre-process, then quantize_static
    (QDQ, signed 8-bit activations and weights, per-tensor, MinMax), calibrated on ``samples``."""
    input_name = onnx.load(str(fp32_path)).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="tierkit-ort-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(out_path), CalibrationBatches(samples, batch_size, input_name))
    return out_path


def fit_with_labels(
    model: torch.nn.Module,
    datamodule: L.LightningDataModule,
    epochs: int,
    lr: float,
    callbacks: list | None = None,
    seed: int = 1,
) -> torch.nn.Module:
    """Train every parameter of ``model`` with cross-entropy on the labels (AdamW at ``lr``) for ``epochs``.
    Seeded, so that a peer row does not depend on what the process drew before it (batch order, augmentation)."""
    L.seed_everything(seed, workers=True, verbose=False)
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    module = DistillationModule(
        model, datamodule.num_classes, optimizer=functools.partial(torch.optim.AdamW, lr=lr), alpha=0.0
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return model.eval()


def modelpruning_copy(
    model: torch.nn.Module, datamodule: L.LightningDataModule, amount: float, epochs: int, lr: float
) -> torch.nn.Module:
    """A copy of ``model`` pruned by Lightning's ModelPruning (global L1, unstructured) after the first epoch,
    then fine-tuned with its masks for the remaining epochs; the masks are made permanent at the end."""
    pruning = ModelPruning("l1_unstructured", amount=amount, apply_pruning=PruneOnceAt(0), verbose=0)
    return fit_with_labels(copy.deepcopy(model), datamodule, epochs, lr, [pruning])


def torch_pruning_copy(
    model: torch.nn.Module, datamodule: L.LightningDataModule, ratio: float, epochs: int, lr: float
) -> torch.nn.Module:
    """A copy of ``model`` with ``ratio`` of its channels removed by torch-pruning as its README shows (one shot,
    group L2 magnitude, the classifier kept whole), then fine-tuned on the labels for ``epochs``."""
    pruned = copy.deepcopy(model).eval()
    # torch-pruning traces layer dependencies through autograd: a frozen teacher would show it none.
    for parameter in pruned.parameters():
        parameter.requires_grad_(True)
    before = sum(p.numel() for p in pruned.parameters())
    classes = datamodule.num_classes
    classifier = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear) and m.out_features == classes]
    tp.pruner.BasePruner(
        pruned,
        torch.zeros(1, *datamodule.input_shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=classifier,
    ).step()
    if sum(p.numel() for p in pruned.parameters()) == before:
        raise RuntimeError(f"torch-pruning removed no channel from {type(model).__name__}")
    return fit_with_labels(pruned, datamodule, epochs, lr)


def zero_fraction(model: torch.nn.Module) -> float:
    """Share of exact zeros among the weight matrices and kernels (what mask-based pruning leaves)."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
