"""Build any nn.Module from a model config, passing tierkit's facts (input shape, classes, a tier's width
multiplier) only to constructors that take them, and naming the argument and its source when a call cannot work.

A model config is the class's own keyword arguments plus optional ``*_arg`` keys that say how tierkit's facts
are spelled in its constructor (``num_classes_arg: n_classes``). Keys the model config sets are never replaced.
"""

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.conf.schema import MODEL_OWN_KEYS
from tierkit.conf.validate import constructor_parameters, import_target, source_of
from tierkit.errors import TierkitError
from tierkit.utils.instantiate import instantiate

log = logging.getLogger(__name__)

# How tierkit's facts are named in a constructor unless the model config says otherwise; None: never passed
# unless named (a "width" may be a channel count, so a width multiplier goes only where the config says).
WIDTH_ARG = "width_multiplier_arg"
FACT_ARGS = {key: key.removesuffix("_arg") for key in MODEL_OWN_KEYS if key != WIDTH_ARG}
META_KEYS = set(MODEL_OWN_KEYS)


def model_arguments(
    config: DictConfig,
    input_shape: Sequence[int],
    num_classes: int,
    where: str,
    width_multiplier: float | None = None,
    width_from: str = "the tier",
) -> dict[str, Any]:
    """The keyword arguments tierkit adds to ``config``'s own for this constructor; checks the call is complete."""
    target = import_target(config.get("_target_"), where)
    parameters, takes_any = constructor_parameters(target)
    own = {key for key in config if not str(key).startswith("_") and key not in META_KEYS}
    facts = {
        "input_shape_arg": list(input_shape),
        "in_channels_arg": int(input_shape[0]),
        "num_classes_arg": num_classes,
    }
    added = {}
    for meta, default in FACT_ARGS.items():
        name = config.get(meta, default)
        if name is None or name in own:
            continue
        if name in parameters or (meta in config and takes_any):
            added[name] = facts[meta]
        elif meta in config:
            raise TierkitError(
                f"{where}.{meta} names {name!r}, but {target.__name__} takes no argument of that name",
                where=f"{where}.{meta}",
                fix=f"name one of {target.__name__}'s arguments ({', '.join(parameters) or 'none'}), or remove it",
            )
    if width_multiplier is not None:
        name = config.get(WIDTH_ARG)
        if name is None:
            if where == "model.student":  # a rebuild from a checkpoint has nothing new to say
                log.info(
                    "%s's student width multiplier %s is not applied: model.student names no width_multiplier_arg "
                    "(size students by pruning, or set model.student.width_multiplier_arg to the argument that "
                    "scales channels)",
                    width_from,
                    width_multiplier,
                )
        elif name in own:
            log.info(
                "%s sets its own %s=%s; %s's width multiplier %s is not applied",
                where,
                name,
                config[name],
                width_from,
                width_multiplier,
            )
        else:
            added[name] = width_multiplier
    if not takes_any:
        unexpected = sorted(key for key in own if key not in parameters)
        if unexpected:
            key = unexpected[0]
            raise TierkitError(
                f"{target.__name__} takes no argument {key!r}, set by {source_of(f'{where}.{key}')}",
                where=f"{where}.{key}",
                fix=f"remove it (~{where}.{key}); {target.__name__} takes: {', '.join(parameters) or 'nothing'}",
            )
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in own and name not in added
    ]
    if missing:
        raise TierkitError(
            f"{target.__name__} needs argument {missing[0]!r}, which no config sets",
            where=f"{where}.{missing[0]}",
            fix=f"set it in your model config or on the command line (+{where}.{missing[0]}=...), or map one of "
            f"tierkit's facts to it ({where}.num_classes_arg={missing[0]}, input_shape_arg, in_channels_arg)",
        )
    return added


def build_model(
    config: DictConfig,
    input_shape: Sequence[int],
    num_classes: int,
    where: str,
    width_multiplier: float | None = None,
    width_from: str = "the tier",
) -> nn.Module:
    """The nn.Module ``config`` describes, built for this data (and, for a student, the tier's width)."""
    added = model_arguments(config, input_shape, num_classes, where, width_multiplier, width_from)
    own = OmegaConf.create({k: v for k, v in config.items() if k not in META_KEYS})
    model = instantiate(own, where=where, **added)
    if not isinstance(model, nn.Module):
        raise TierkitError(
            f"{config.get('_target_')} built a {type(model).__name__}, not a torch.nn.Module",
            where=where,
            fix="point _target_ at an nn.Module class",
        )
    return model


def derives_from_teacher(config: DictConfig) -> bool:
    """Whether the run's student is the teacher pruned to the tier's size (``student=from_teacher``)."""
    return OmegaConf.select(config, "student.init") == "from_teacher"


def build_student(config: DictConfig, where: str = "model.student") -> nn.Module:
    """A run's student, from its whole config: the model, the data's shape and classes, and the tier's width
    (a student derived from the teacher has the teacher's architecture, sized by pruning instead)."""
    tier = config.get("tier") or {}
    return build_model(
        config.model.student,
        config.data.input_shape,
        config.data.num_classes,
        where=where,
        width_multiplier=None if derives_from_teacher(config) else tier.get("student_width"),
        width_from=f"tier {tier.get('name', '?')}",
    )


def model_name(config: DictConfig) -> str:
    """The class name a model config builds, for tables and logs."""
    return str(config.get("_target_", "?")).rsplit(".", 1)[-1]
