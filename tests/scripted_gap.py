"""A test-only Lightning callback that scripts how far the teacher is ahead of the student on validation."""

import lightning as L


class TeacherAhead(L.Callback):
    """Sets the validation teacher accuracy to the student's plus a gap chosen per epoch (a mapping, or a list
    indexed by epoch), so that budget pruning sees the drop a test chooses."""

    def __init__(self, gaps):
        self.gaps = dict(gaps) if hasattr(gaps, "items") else dict(enumerate(gaps))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            gap = self.gaps.get(trainer.current_epoch, 0.0)
            trainer.callback_metrics["val/teacher_acc"] = trainer.callback_metrics["val/acc"] + gap
