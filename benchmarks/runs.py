"""Run the training recipe in-process from Hydra overrides, as `python train.py` would."""

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from tierkit.cli.train import CONFIG_DIR, train


def train_with(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Compose conf/train.yaml with ``overrides`` and train; returns metrics.json's content."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={output_dir}", "~callbacks.progress", *overrides])
    return train(cfg)
