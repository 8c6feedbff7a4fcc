"""Test-only Lightning callback: a known point at which a test can kill a training run."""

import time
from pathlib import Path

import lightning as L


class PauseAtEpochStart(L.Callback):
    """As training epoch n starts (epoch n-1's checkpoints written), drop a marker ``<stage>-epoch<n>`` and wait."""

    def __init__(self, folder: str, seconds: float):
        self.folder, self.seconds = Path(folder), seconds

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = "qat" if any(type(c).__name__ == "QuantizationAwareTraining" for c in trainer.callbacks) else "fp32"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{stage}-epoch{trainer.current_epoch}").touch()
        time.sleep(self.seconds)
