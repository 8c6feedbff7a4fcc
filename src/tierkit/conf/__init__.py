"""tierkit's Hydra configs (conf/ at the repository root links here): they install with the package."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
