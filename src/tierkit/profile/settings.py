"""The ONNX Runtime settings to profile under, read from the `hardware` config group."""

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from tierkit.conf.validate import validate_hardware_config
from tierkit.errors import TierkitError

LEVELS = tuple(ort.GraphOptimizationLevel.__members__)


@dataclass(frozen=True)
class HardwareSetting:
    """One way to run a model: a hardware config's providers and threads at one graph optimization level."""

    hardware: str
    providers: tuple[str, ...]
    intra_op_num_threads: int
    inter_op_num_threads: int
    graph_optimization_level: str

    @property
    def label(self) -> str:
        return f"{self.hardware} {self.graph_optimization_level.removeprefix('ORT_').lower()}"

    def as_row(self) -> dict:
        return {
            "hardware": self.hardware,
            "providers": list(self.providers),
            "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads,
            "graph_optimization_level": self.graph_optimization_level,
        }


def hardware_configs(names: list[str], hardware_dir: Path) -> dict[str, DictConfig]:
    """The named hardware configs. Inside a Hydra app (export.py) they are composed from the config search path,
    so a hardware config in your --config-dir works like the shipped ones; elsewhere they come from
    ``hardware_dir``."""
    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        known = sorted(hydra.config_loader().get_group_options("hardware"))
    else:
        known = sorted(p.stem for p in hardware_dir.glob("*.yaml"))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise TierkitError(
            f"unknown hardware config(s) {unknown}" if unknown else "profiling.hardware is empty",
            where="profiling.hardware",
            fix=f"list one or more of {known}, or add your own hardware/<name>.yaml to a --config-dir",
        )
    if hydra.is_initialized():
        configs = {name: compose(config_name=f"hardware/{name}").hardware for name in names}
    else:
        configs = {name: OmegaConf.load(hardware_dir / f"{name}.yaml") for name in names}
    for name, config in configs.items():
        validate_hardware_config(config, name)
    return configs


def load_settings(
    hardware_dir: Path, names: list[str], levels: list[str] | None
) -> tuple[list[HardwareSetting], list[str]]:
    """Settings for every named hardware config (at each of ``levels``, or its own level when None).

    Configs whose execution provider this onnxruntime build lacks are skipped; the second value says which and why.
    """
    configs = hardware_configs(names, hardware_dir)
    bad_levels = [level for level in levels or [] if level not in LEVELS]
    if bad_levels:
        raise TierkitError(
            f"unknown graph optimization level(s) {bad_levels}",
            where="profiling.graph_optimization_levels",
            fix=f"choose from {list(LEVELS)}, or null for each hardware config's own level",
        )
    available = ort.get_available_providers()
    settings, skipped = [], []
    for name in names:
        config = configs[name]
        providers = list(config.execution_providers or available)
        missing = [p for p in providers if p not in available]
        if missing:
            has = ", ".join(available)
            skipped.append(f"{name}: this onnxruntime build has no {', '.join(missing)} (it has {has})")
            continue
        for level in levels or [config.graph_optimization_level]:
            settings.append(
                HardwareSetting(
                    hardware=name,
                    providers=tuple(providers),
                    intra_op_num_threads=int(config.intra_op_num_threads),
                    inter_op_num_threads=int(config.inter_op_num_threads),
                    graph_optimization_level=level,
                )
            )
    if not settings:
        raise TierkitError(
            "none of the hardware configs can run here: " + "; ".join(skipped),
            where="profiling.hardware",
            fix="add cpu_1thread to profiling.hardware",
        )
    return settings, skipped
