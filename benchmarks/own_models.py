"""Models a user brings that the zoo does not have, for the benchmarks that need one."""

from torch import nn
from torch.nn import functional as F


class SwiGLU(nn.Module):
    """The gated feed-forward block of recent transformers: ``W2(silu(W1 x) * W3 x)``."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(features, hidden), nn.Linear(features, hidden)
        self.w2 = nn.Linear(hidden, features)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SwiGLUMLP(nn.Module):
    """An input projection, residual SwiGLU blocks without normalisation, and a linear head.

    Its gate products are heavy-tailed (a few channels a hundred times the median), which one uint8 scale per tensor
    rounds coarsely: the case where post-training INT8 loses accuracy and mixed precision wins it back.
    """

    def __init__(self, in_features: int = 40, num_classes: int = 10, dim: int = 128, hidden: int = 256, depth: int = 2):
        super().__init__()
        self.inp = nn.Sequential(nn.Flatten(), nn.Linear(in_features, dim))
        self.blocks = nn.ModuleList([SwiGLU(dim, hidden) for _ in range(depth)])
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.classifier(h)
