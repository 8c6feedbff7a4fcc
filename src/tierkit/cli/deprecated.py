"""Config keys renamed in this release, still read with a warning until the next one, and the sections older
checkpoints lack."""

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tierkit.conf import CONFIG_DIR

log = logging.getLogger(__name__)

# (old key, new key, what the new name says)
RENAMED = (
    ("tier.budgets.max_accuracy_drop", "tier.budgets.max_drop_vs_teacher", "the shipped model against the teacher"),
    ("quantization.max_accuracy_drop", "quantization.max_drop_vs_fp32", "INT8 against the FP32 student"),
)


def apply_renamed_keys(cfg: DictConfig) -> None:
    """Move a value set under an old key to its new key, saying so; the old key is left null.

    A checkpoint from before the rename carries only the old key, so a missing new key is filled from it too.
    """
    with open_dict(cfg):
        for old, new, meaning in RENAMED:
            section, _, old_name = old.rpartition(".")
            node = OmegaConf.select(cfg, section)
            if node is None or node.get(old_name) is None:
                continue
            new_name = new.rpartition(".")[2]
            log.warning("%s is deprecated and will be removed: it is %s now (%s)", old, new, meaning)
            node[new_name] = node[old_name]
            node[old_name] = None


def checkpoint_student(saved: Any) -> DictConfig:
    """A checkpoint's student section, with the keys added since it was written taken from its kind's option in
    conf/student/. A checkpoint from before the student group was trained from scratch, the only kind there was."""
    saved = saved if saved is not None else {"init": "scratch"}
    option = OmegaConf.load(CONFIG_DIR / "student" / f"{saved['init']}.yaml").student
    return OmegaConf.merge(option, saved)
