"""Run the training recipe for benchmarks: in-process from Hydra overrides, or as the entry point a user types."""

import subprocess
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from tierkit.cli.train import CONFIG_DIR, train


def train_with(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Compose conf/train.yaml with ``overrides`` and train; returns metrics.json's content."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={output_dir}", "~callbacks.progress", *overrides])
    return train(cfg)


def run_command(command: list[str]) -> None:
    """Run an entry point from the repository root as a user would, echoing the command first."""
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=Path(__file__).resolve().parents[1], check=True)
