"""OmegaConf resolvers used by the configs; importing this module registers them."""

import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from tierkit.utils.files import dated_folder
from tierkit.utils.slurm import run_folder_name


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


def _sweep_job() -> tuple[Path, int] | None:
    """The sweep folder and job number of a multirun job; None for a single run (or outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra.sweep.dir), int(hydra.job.num)


def wandb_group(name: str) -> str:
    """``name`` for a single run; ``name-<date>_<time>`` of the sweep folder for every job of one multirun."""
    job = _sweep_job()
    return name if job is None else f"{name}-{job[0].parent.name}_{job[0].name}"


def wandb_run_name(name: str) -> str:
    """``name`` for a single run; ``name-job<n>`` for job n of a multirun, so the jobs of a sweep are told apart."""
    job = _sweep_job()
    return name if job is None else f"{name}-job{job[1]}"


def sqlite_url(path: str) -> str:
    """An SQLite URL for ``path``, its folder made first: Optuna opens the study before Hydra makes the sweep folder."""
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


OmegaConf.register_new_resolver("tierkit.wandb_offline", wandb_offline, replace=True)
OmegaConf.register_new_resolver("tierkit.wandb_group", wandb_group, replace=True)
OmegaConf.register_new_resolver("tierkit.wandb_run_name", wandb_run_name, replace=True)
OmegaConf.register_new_resolver("tierkit.sqlite", sqlite_url, replace=True)
# Cached: every reading within one process names the same folder, as Hydra's ${now:} does.
OmegaConf.register_new_resolver("tierkit.run_folder", run_folder_name, replace=True, use_cache=True)
# Hydra copies this cache into every job's config, submitit's pickled ones included, so all jobs share the folder.
OmegaConf.register_new_resolver("tierkit.sweep_folder", dated_folder, replace=True, use_cache=True)
