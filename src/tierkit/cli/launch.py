"""A Hydra callback that refuses a multirun which cannot work, before any job starts.

Two mistakes are caught at launch, with one message and exit status 2: a SLURM launcher on a machine without
SLURM, and a sweep over a key the config does not have (which an Optuna search or a submitit job would otherwise
only find inside each job).
"""

import logging
import shutil
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tierkit.errors import TierkitError

log = logging.getLogger(__name__)

SLURM_COMMANDS = ("sbatch", "srun")


def check_launcher(launcher: DictConfig) -> None:
    """A SLURM launcher needs sbatch and srun on PATH: a login node of the cluster."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        raise TierkitError(
            f"the launcher submits the jobs to SLURM, but this machine has no SLURM ({', '.join(missing)} not on PATH)",
            where="hydra/launcher",
            fix="launch from a login node of your SLURM cluster, or run the jobs here: hydra/launcher=local "
            "(all at once) or no hydra/launcher (one after another)",
        )


def swept_keys(config: DictConfig) -> list[str]:
    """The config keys a multirun sweeps: on the command line (``seed=1,2``) and in ``hydra.sweeper.params``."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = [o.key_or_group for o in overrides if o.is_sweep_override() and not (o.is_add() or o.is_force_add())]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return swept + [key for key in params if not key.startswith("+")]


def has_key(tree: Any, key: str) -> bool:
    """Whether the dotted ``key`` is in ``tree`` (a plain container), whatever its value, ``???`` included."""
    for part in key.split("."):
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False
    return True


def check_swept_keys(config: DictConfig) -> None:
    """Every swept key must be in the config or be a config group (adding a key takes ``+key=...``)."""
    loader = GlobalHydra.instance().config_loader()
    tree = OmegaConf.to_container(config, resolve=False)
    unknown = [key for key in swept_keys(config) if not has_key(tree, key) and not loader.get_group_options(key)]
    if unknown:
        raise TierkitError(
            f"the sweep varies {', '.join(unknown)}, which the config does not have",
            where=", ".join(unknown),
            fix="check the spelling (python train.py --cfg job prints every key), or add a new key with "
            f"+{unknown[0]}=...",
        )


class LaunchChecks(Callback):
    """Registered in conf/hydra/default.yaml; Hydra calls it once per multirun, in the launching process."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config.hydra.launcher)
            check_swept_keys(config)
        except TierkitError as exc:
            log.error("%s", exc.render())
            sys.exit(2)
