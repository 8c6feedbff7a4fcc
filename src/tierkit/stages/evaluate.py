"""Accuracy of a model on one split of the data, in PyTorch: a loaded teacher is checked with it before it
distils, and fine-tuning reports before and after with it."""

import lightning as L
import torch
from torch import nn


@torch.no_grad()
def split_accuracy(model: nn.Module, datamodule: L.LightningDataModule, split: str = "test") -> float:
    """Accuracy of ``model`` on the ``val`` or ``test`` split, in eval mode, leaving the model's mode as it was."""
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:  # (inputs, labels, ...): tierkit's own datasets add each sample's index
        inputs, labels = batch[0], batch[1]
        correct += int((model(inputs).argmax(1) == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / total
