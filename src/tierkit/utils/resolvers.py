"""OmegaConf resolvers used by the configs; importing this module registers them."""

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """Offline unless the user has configured W&B: an API key, a netrc login, or WANDB_MODE=online."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def sqlite_url(path: str) -> str:
    """An SQLite URL for ``path``, its folder made first: Optuna opens the study before Hydra makes the sweep folder."""
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


OmegaConf.register_new_resolver("tierkit.wandb_offline", wandb_offline, replace=True)
OmegaConf.register_new_resolver("tierkit.sqlite", sqlite_url, replace=True)
