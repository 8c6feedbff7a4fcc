"""A Hydra callback that refuses a multirun which cannot work, before any job starts.

Three mistakes are caught at launch, with one message and exit status 2: a SLURM launcher on a machine without
SLURM, a sweep over a key the config does not have, and a sweep over a config group with a value that is not one of
the group's options (``tier=ultra,lowend``). An Optuna search or a submitit job would otherwise only find them
inside each job.
"""

import logging
import shutil
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override, QuotedString, Sweep
from hydra.errors import HydraException
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


def swept_overrides(config: DictConfig) -> list[Override]:
    """Every override a multirun sweeps: ``key=a,b`` (and the like) on the command line, and every entry of
    ``hydra.sweeper.params`` (the basic sweeper's and Optuna's), parsed as ``key=value`` the way the sweeper does."""
    parser = OverridesParser.create()
    overrides = [o for o in parser.parse_overrides(list(config.hydra.overrides.task)) if o.is_sweep_override()]
    for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items():
        try:
            overrides += parser.parse_overrides([f"{key}={value}"])
        except HydraException:  # the sweeper reports an entry it cannot parse, in its own words
            continue
    return overrides


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


def _option_name(element: Any) -> str | None:
    """The group option a swept element names (``lowend``, ``sub/name``), or None for ``null`` (no option) and for
    an interpolation, which only the job can resolve."""
    if element is None:
        return None
    name = element.text if isinstance(element, QuotedString) else Override._get_value_element_as_str(element)
    return None if "${" in name else name


def _is_option(loader: Any, group: str, name: str) -> bool:
    """Whether ``name`` is an option of ``group``; ``sub/name`` is an option in the group's subfolder ``sub``."""
    folder, _, leaf = name.rpartition("/")
    return leaf in loader.get_group_options(f"{group}/{folder}" if folder else group)


def misspelled_options(loader: Any, override: Override) -> list[str]:
    """The values a sweep over a config group gives it that are not among the group's options."""
    options = loader.get_group_options(override.key_or_group)
    value = override.value()
    if isinstance(value, Glob):  # glob(...) picks among the options: wrong only when it picks none
        return [] if value.filter(options) else [override.get_value_string()]
    if isinstance(value, IntervalSweep):  # a group takes an option, never a number from an interval
        return [override.get_value_string()]
    elements = override.sweep_iterator() if isinstance(value, Sweep) else [value]
    names = [name for name in map(_option_name, elements) if name is not None]
    return [name for name in dict.fromkeys(names) if not _is_option(loader, override.key_or_group, name)]


def check_swept_group_options(config: DictConfig) -> None:
    """Every value a sweep gives a config group must be one of its options (``null``, no option, is one too)."""
    loader = GlobalHydra.instance().config_loader()
    for override in swept_overrides(config):
        group = override.key_or_group
        if override.is_hydra_override() or override.is_delete() or not loader.get_group_options(group):
            continue
        wrong = misspelled_options(loader, override)
        if wrong:
            options = ", ".join(loader.get_group_options(group))
            raise TierkitError(
                f"the sweep gives the config group {group} the value{'s' if len(wrong) > 1 else ''} "
                f"{', '.join(wrong)}, which {'are not among' if len(wrong) > 1 else 'is not one of'} its options "
                f"({options})",
                where=group,
                fix=f"pick the values of {group} from its options: {options}",
            )


class LaunchChecks(Callback):
    """Registered in conf/hydra/default.yaml; Hydra calls it once per multirun, in the launching process."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config.hydra.launcher)
            check_swept_keys(config)
            check_swept_group_options(config)
        except TierkitError as exc:
            log.error("%s", exc.render())
            sys.exit(2)
