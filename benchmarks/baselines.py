"""Settings for the tools tierkit is compared against, in the form their configs need."""


class PruneOnceAt:
    """For Lightning's ModelPruning(apply_pruning=...): prune at one epoch only.

    A plain float ``amount`` compounds every epoch (30% becomes 76% after four), which is not what a
    user asking for one sparsity wants.
    """

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, epoch: int) -> bool:
        return epoch == self.epoch
