"""A test-only Lightning callback that scripts how far the teacher is ahead of the student on validation."""

import lightning as L
import torch


class TeacherAhead(L.Callback):
    """Sets the validation teacher accuracy to the student's plus a gap chosen per epoch (a mapping, or a list
    indexed by epoch), so that budget pruning sees the drop a test chooses."""

    def __init__(self, gaps):
        self.gaps = dict(gaps) if hasattr(gaps, "items") else dict(enumerate(gaps))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            gap = self.gaps.get(trainer.current_epoch, 0.0)
            trainer.callback_metrics["val/teacher_acc"] = trainer.callback_metrics["val/acc"] + gap


class FallingAccuracy(L.Callback):
    """Scores every epoch below the one before on validation, so the best checkpoint is the first epoch's; its state
    counts the epochs it saw, so a test can tell the fit's final state from the best checkpoint's."""

    def __init__(self):
        self.epochs_seen = 0

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            trainer.callback_metrics["val/acc"] = torch.tensor(1 - trainer.current_epoch / 10)

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs_seen += 1

    def state_dict(self):
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state_dict):
        self.epochs_seen = state_dict["epochs_seen"]
