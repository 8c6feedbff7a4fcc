"""`tierkit-config`: what every key of the train (or export) config means, and whether a command line's config
is valid.

    tierkit-config describe [PREFIX] [OVERRIDE ...]   every key under PREFIX (tier, callbacks.pruning, ...)
    tierkit-config check [OVERRIDE ...]               the validation train.py runs first, without training
    tierkit-config --export describe profiling        the same for export.py's config

Overrides are train.py's (``tier=lowend data.batch_size=64``); ``--config-dir`` adds your own config folder.
"""

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

import tierkit.utils.resolvers  # noqa: F401  (registers the config resolvers)
from tierkit.cli import import_from_working_folder
from tierkit.cli.deprecated import apply_renamed_keys
from tierkit.conf import CONFIG_DIR
from tierkit.conf.describe import describe, render
from tierkit.conf.schema import ExportSchema, TrainSchema
from tierkit.conf.validate import validate_export_config, validate_train_config
from tierkit.errors import TierkitError


def composed(overrides: list[str], config_dir: Path | None, name: str = "train") -> DictConfig:
    """conf/<name>.yaml with ``overrides``, as train.py or export.py would compose it (the run folder left
    unresolved)."""
    extra = [f"hydra.searchpath=[file://{config_dir.resolve()}]"] if config_dir else []
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so messages can say which file or override set a value
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = "<run folder>"
    if name == "train":
        apply_renamed_keys(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierkit-config", description=__doc__.split("\n")[0])
    parser.add_argument("--config-dir", type=Path, help="your own config folder, searched before tierkit's")
    parser.add_argument("--export", action="store_true", help="export.py's config instead of train.py's")
    commands = parser.add_subparsers(dest="command", required=True)
    shown = commands.add_parser("describe", help="list keys with type, value, allowed values and meaning")
    shown.add_argument("prefix", nargs="?", default="", help="a section such as tier or callbacks.pruning")
    shown.add_argument("overrides", nargs="*", help="train.py overrides")
    checked = commands.add_parser("check", help="validate a command line's config without running it")
    checked.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args(argv)
    import_from_working_folder()
    prefix = getattr(args, "prefix", "")
    overrides = list(args.overrides)
    if "=" in prefix:  # `describe tier=lowend`: an override, no prefix
        overrides, prefix = [prefix, *overrides], ""
    try:
        cfg = composed(overrides, args.config_dir, "export" if args.export else "train")
        if args.command == "describe":
            entries = describe(cfg, ExportSchema if args.export else TrainSchema)
            if prefix and not any(e.path == prefix or e.path.startswith(f"{prefix}.") for e in entries):
                raise TierkitError(f"no key {prefix!r} in the config", where="PREFIX", fix="try tier, data or trainer")
            print(render(entries, prefix))
        else:
            (validate_export_config if args.export else validate_train_config)(cfg)
            print("config is valid")
    except TierkitError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except HydraException as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    finally:
        HydraConfig.instance().cfg = None  # set for this command only (a caller may compose configs of its own)
    return 0


if __name__ == "__main__":
    sys.exit(main())
