"""Build name-keyed callback and logger dicts from config, so any entry can be dropped with ~key."""

import logging
from typing import Any

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from tierkit.errors import TierkitError

log = logging.getLogger(__name__)


def instantiate(config: DictConfig, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a TierkitError through and names the config node otherwise."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except hydra.errors.InstantiationException as exc:
        if isinstance(exc.__cause__, TierkitError):
            raise exc.__cause__ from None
        raise TierkitError(
            f"could not build {config.get('_target_', '<no _target_>')}: {exc.__cause__ or exc}",
            where=where,
            fix=f"check the arguments under {where} against the class's signature",
        ) from exc


def _instantiate_group(config: DictConfig | None, group: str, kind: type) -> list:
    objects = []
    for name, entry in (config or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise TierkitError(
                f"{group}.{name} has no _target_",
                where=f"{group}.{name}",
                fix=f"give each {group} entry a _target_ class, or remove it with ~{group}.{name}",
            )
        obj = instantiate(entry, where=f"{group}.{name}")
        if not isinstance(obj, kind):
            raise TierkitError(
                f"{group}.{name} built a {type(obj).__name__}, not a {kind.__name__}",
                where=f"{group}.{name}._target_",
                fix=f"point _target_ at a {kind.__name__} subclass",
            )
        log.debug("Instantiated %s.%s: %s", group, name, entry._target_)
        objects.append(obj)
    return objects


def instantiate_callbacks(config: DictConfig | None) -> list[Callback]:
    return _instantiate_group(config, "callbacks", Callback)


def instantiate_loggers(config: DictConfig | None) -> list[Logger]:
    return _instantiate_group(config, "logger", Logger)
