"""Knowledge-distillation loss (Hinton et al. 2015) with every term returned by name for logging."""

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T
    changes. With no teacher (or ``alpha == 0``) this is plain cross-entropy.
    """
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return {"loss": ce, "ce": ce}
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}
