"""Test-only Lightning callbacks: known points at which a test can kill or signal a training run."""

import time
from pathlib import Path

import lightning as L


class PauseAtEpochStart(L.Callback):
    """As training epoch n starts (epoch n-1's checkpoints written), drop a marker ``<stage>-epoch<n>`` and wait."""

    def __init__(self, folder: str, seconds: float):
        self.folder, self.seconds = Path(folder), seconds

    def pause(self, trainer: L.Trainer, point: str) -> None:
        stage = "qat" if any(type(c).__name__ == "QuantizationAwareTraining" for c in trainer.callbacks) else "fp32"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{stage}-epoch{trainer.current_epoch}{point}").touch()
        time.sleep(self.seconds)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pause(trainer, "")


class PauseAfterBatch(PauseAtEpochStart):
    """After training batch k of every epoch (its optimizer step taken), drop ``<stage>-epoch<n>-batch<k>`` and
    wait: the middle of an epoch, where a signal usually lands."""

    def __init__(self, folder: str, seconds: float, batch: int):
        super().__init__(folder, seconds)
        self.batch = batch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """No pause at the epoch's start."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            self.pause(trainer, f"-batch{batch_idx}")
