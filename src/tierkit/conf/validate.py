"""One pass over a composed train config before any data is loaded or any teacher trained.

It checks, in order: each key of a section tierkit owns against its schema (known key, type, range, choices);
each ``_target_`` node against its class's constructor (importable, every key an argument, tierkit's ranges);
and the relations between keys (QAT schedules, pruning before QAT, budgets above margins). Every problem found
is reported in one message, naming where the value came from (the command line or a group's YAML file).
"""

import collections.abc
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tierkit.conf.schema import MODEL_OWN_KEYS, ExportSchema, HardwareSchema, Rule, TrainSchema, target_rule
from tierkit.errors import TierkitError

UNSET = object()


def _hydra_config():
    """The running Hydra job's config, or None outside a Hydra run (a plain ``compose``)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:
        return None


def command_line_keys() -> list[str]:
    """The config paths the command line sets, in its order (a group override such as ``model@model.student=mlp``
    counts as its package, ``model.student``); none outside a Hydra run."""
    hydra_config = _hydra_config()
    if hydra_config is None:
        return []
    keys = [o.lstrip("+~").split("=")[0] for o in hydra_config.overrides.task]
    return [key.split("@", 1)[1] if "@" in key else key for key in keys]


def source_of(path: str) -> str:
    """Where ``path``'s value was set: the command line, the YAML file of the group option chosen for its first
    section, or conf/train.yaml (outside a Hydra run: its config)."""
    hydra_config = _hydra_config()
    if hydra_config is None:
        return f"the {path.split('.')[0]} config"
    if any(path == key or path.startswith(f"{key}.") for key in command_line_keys()):
        return "the command line"
    section = path.split(".")[0]
    choice = hydra_config.runtime.choices.get(section)
    if choice:
        return f"{section}/{choice}.yaml"
    return f"{hydra_config.job.config_name}.yaml"


def import_target(target: Any, where: str) -> Any:
    """The class or function a ``_target_`` names."""
    try:
        return get_object(str(target))
    except Exception as exc:
        raise TierkitError(
            f"cannot import {target!r} ({type(exc).__name__}: {exc})",
            where=f"{where}._target_",
            fix="give the full import path of your class (package.module.Class) and make sure Python can import "
            "it: install your package, or run from the folder that holds it",
        ) from exc


def constructor_parameters(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The constructor's named parameters, and whether it also takes any keyword (``**kwargs``)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}, True
    named = {name: p for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _value(node: DictConfig, key: str) -> Any:
    """The resolved value of ``node[key]``; UNSET when it is ``???`` or cannot be resolved outside a run."""
    if OmegaConf.is_missing(node, key):
        return UNSET
    try:
        value = node[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    except OmegaConfBaseException:
        return UNSET


def _check_rule(path: str, value: Any, rule: Rule, owned: bool) -> str | None:
    """Why ``value`` breaks ``rule`` (None: it does not); an owned key's type has already said whether null fits."""
    if value is None:
        return None if rule.nullable or owned else f"{path} is null"
    if rule.kind is not None:
        fits = isinstance(value, rule.kind) and not isinstance(value, bool)
        if rule.kind is float:
            fits = isinstance(value, int | float) and not isinstance(value, bool)
        if not fits:
            return f"{path}={value} is not {'an' if rule.kind is int else 'a'} {rule.kind.__name__}"
    if rule.range is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{path}={value} is not a number"
        if not rule.range.holds(value):
            return f"{path}={value} {rule.range.refusal()}"
    if rule.nonempty and value == []:
        return f"{path} is empty"
    if rule.choices is not None:
        unknown = [v for v in (value if isinstance(value, list) else [value]) if v not in rule.choices]
        if unknown:
            return f"unknown {path} {unknown[0]!r}"
    return None


def bounds(rule: Rule) -> str:
    """The range or choices a rule allows, in words ('' if only its type)."""
    parts = []
    if rule.range is not None:
        parts.append(f"in {rule.range}" if "," in str(rule.range) else str(rule.range))
    if rule.choices is not None:
        parts.append(f"one of {', '.join(map(str, rule.choices))}")
    return " ".join(parts)


def allowed(rule: Rule) -> str:
    """The values a rule allows, in words: 'an int >= 1', 'a value in [0, 1]', ..."""
    kind = f"a{'n' if rule.kind is int else ''} {rule.kind.__name__}" if rule.kind else "a value"
    return f"{kind} {bounds(rule)}".rstrip()


def _rule_problem(
    path: str, value: Any, rule: Rule, owned: bool = False, source: str | None = None
) -> TierkitError | None:
    why = _check_rule(path, value, rule, owned)
    if why is None:
        return None
    return TierkitError(
        f"{why}, set by {source or source_of(path)}", where=path, fix=f"give {path} {allowed(rule)} ({rule.help})"
    )


def _owned_problems(node: DictConfig, schema: type, prefix: str, source: str | None = None) -> Iterator[TierkitError]:
    """Unknown keys, wrong types and values out of range in a section tierkit owns (``source``: the file it came
    from, when not the run's own config)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    typed = OmegaConf.structured(schema)
    hints = typing.get_type_hints(schema)
    for key in node:
        path = f"{prefix}{key}"
        if key not in fields:
            yield TierkitError(
                f"{path} is not a tierkit setting, set by {source or source_of(path)}",
                where=path,
                fix=f"remove it (~{path}); {prefix.rstrip('.') or 'the config'} takes: {', '.join(fields)}",
            )
            continue
        field, value = fields[key], _value(node, key)
        if field.metadata.get("target") or value is UNSET:
            continue
        if dataclasses.is_dataclass(hints[key]):
            if isinstance(node[key], DictConfig):
                yield from _owned_problems(node[key], hints[key], f"{path}.", source)
            elif value is not None:
                yield TierkitError(f"{path}={value} is not a section", where=path, fix=f"set {path}.<key>")
            continue
        try:
            if hints[key] is not Any:
                typed[key] = value
        except OmegaConfBaseException:
            expected = getattr(hints[key], "__name__", str(hints[key]).replace("typing.", ""))
            yield TierkitError(
                f"{path}={value} is not of type {expected}, set by {source or source_of(path)}",
                where=path,
                fix=f"give {path} a value of type {expected}: {field.metadata['rule'].help}",
            )
            continue
        problem = _rule_problem(path, value, field.metadata["rule"], owned=True, source=source)
        if problem:
            yield problem


def names_target(node: DictConfig) -> bool:
    """Whether ``node`` has a ``_target_`` key, even a ``???`` one (for which ``in`` says False)."""
    return any(key == "_target_" for key in node)


def target_nodes(node: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node that names a class by ``_target_``, outermost first."""
    if isinstance(node, DictConfig):
        if names_target(node):
            yield prefix.rstrip("."), node
        for key in node:
            if isinstance(node._get_node(key), DictConfig):
                yield from target_nodes(node[key], f"{prefix}{key}.")


SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)


def _members(annotation: Any) -> tuple[Any, ...]:
    """A Union's (or ``X | Y``'s) members; any other annotation alone."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _fits(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` can be what ``annotation`` asks for: True, False, or None where the annotation says more
    than this pass checks (a forward reference, a callable, a class's own generic)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str | typing.ForwardRef):
        return None
    if len(_members(annotation)) > 1:
        verdicts = [_fits(value, member) for member in _members(annotation)]
        return True if True in verdicts else (None if None in verdicts else False)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return any(value == option and type(value) is type(option) for option in args)
    if origin in SEQUENCES:
        if not isinstance(value, list):
            return isinstance(value, str) and origin in (collections.abc.Sequence, collections.abc.Iterable)
        element = args[0] if args and (origin is not tuple or args[-1] is Ellipsis or len(args) == 1) else Any
        return not any(_fits(item, element) is False for item in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is not None or not isinstance(annotation, type):
        return None
    if annotation is type(None):
        return value is None
    if isinstance(value, annotation):
        return True
    if isinstance(value, str) and issubclass(annotation, os.PathLike):
        return True  # a path given as text
    return isinstance(value, int) and not isinstance(value, bool) and annotation is float


def _fits_annotation(value: Any, annotation: Any) -> bool:
    """False only when ``value`` certainly cannot be what the annotation asks for (null and nested configs are left
    to the class)."""
    return value is None or isinstance(value, dict) or _fits(value, annotation) is not False


def _expected(annotation: Any) -> str:
    """What an annotation asks for, in words: "of type str or Path", "one of 'a', 'b'", "a list of int"."""
    members = [member for member in _members(annotation) if member is not type(None)]
    classes = [m.__name__ for m in members if isinstance(m, type) and not typing.get_args(m)]
    options = [repr(o) for m in members if typing.get_origin(m) is typing.Literal for o in typing.get_args(m)]
    lists = [
        f"a list of {_expected(typing.get_args(m)[0]).removeprefix('of type ')}"
        for m in members
        if typing.get_origin(m) in SEQUENCES and typing.get_args(m)
    ]
    parts = (["of type " + " or ".join(classes)] if classes else []) + (
        ["one of " + ", ".join(options)] if options else []
    )
    return " or ".join(parts + lists) or str(annotation)


def _target_problems(path: str, node: DictConfig) -> Iterator[TierkitError]:
    """A ``_target_`` node's class must import, and take every key the config gives it."""
    if OmegaConf.is_missing(node, "_target_"):
        yield TierkitError(
            f"{path}._target_ is not set", where=f"{path}._target_", fix=f"add {path}._target_=package.module.Class"
        )
        return
    try:
        target = import_target(node._target_, path)
    except TierkitError as exc:
        yield exc
        return
    parameters, takes_any = constructor_parameters(target)
    own = MODEL_OWN_KEYS if path.startswith("model.") else {}
    for key in node:
        key_path = f"{path}.{key}"
        if str(key).startswith("_") or key in own:
            continue
        if not takes_any and key not in parameters:
            name = getattr(target, "__name__", str(node._target_))
            yield TierkitError(
                f"{name} takes no argument {key!r}, set by {source_of(key_path)}",
                where=key_path,
                fix=f"remove it (~{key_path}); {name} takes: {', '.join(parameters) or 'nothing'}",
            )
            continue
        rule, value = target_rule(key_path), _value(node, key)
        problem = rule and value is not UNSET and _rule_problem(key_path, value, rule)
        if problem:
            yield problem
        elif value is not UNSET and key in parameters and not _fits_annotation(value, parameters[key].annotation):
            name = getattr(target, "__name__", str(node._target_))
            expected = _expected(parameters[key].annotation)
            yield TierkitError(
                f"{key_path}={value} is not {expected}, set by {source_of(key_path)}",
                where=key_path,
                fix=f"give {key_path} a value that is {expected}, as {name}'s {key} argument takes",
            )


def _relation_problems(cfg: DictConfig) -> Iterator[TierkitError]:
    """Keys that are each fine alone but do not fit together."""
    callbacks = cfg.get("callbacks") or {}
    pruning, qat = callbacks.get("pruning"), callbacks.get("qat")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if qat:
        yield from _freeze_after_activations(qat, "callbacks.qat")
        if isinstance(max_epochs, int) and qat.activations_epoch >= max_epochs:
            yield TierkitError(
                f"callbacks.qat quantizes activations from epoch {qat.activations_epoch}, but the run ends after "
                f"trainer.max_epochs={max_epochs}",
                where="callbacks.qat.activations_epoch / trainer.max_epochs",
                fix=f"raise trainer.max_epochs above {qat.activations_epoch}, or move the QAT schedule earlier "
                "(callbacks.qat.start_epoch, activations_epoch, freeze_epoch)",
            )
        if pruning and pruning.end_epoch >= qat.start_epoch:
            yield TierkitError(
                f"pruning runs until epoch {pruning.end_epoch} but QAT starts at epoch {qat.start_epoch}",
                where="callbacks.pruning.end_epoch / callbacks.qat.start_epoch",
                fix="pruning must end before fake quantization starts: lower callbacks.pruning.end_epoch "
                "or raise callbacks.qat.start_epoch",
            )
    if pruning:
        if pruning.get("start_epoch", 0) > pruning.get("end_epoch", 0):
            yield TierkitError(
                f"callbacks.pruning starts at epoch {pruning.start_epoch}, after its end_epoch {pruning.end_epoch}",
                where="callbacks.pruning.start_epoch / end_epoch",
                fix="use 0 <= start_epoch <= end_epoch",
            )
        margin, max_drop = pruning.get("margin", 0), pruning.get("max_drop")
        if pruning.get("mode") == "budget" and (max_drop is None or not max_drop - margin > 0):
            yield TierkitError(
                f"budget pruning needs an accuracy budget above its margin; got max_drop={max_drop}, margin={margin}",
                where="callbacks.pruning.max_drop (by default tier.budgets.max_drop_vs_teacher)",
                fix="give the largest validation drop against the teacher as a positive fraction, e.g. 0.01",
            )
    quantization = cfg.get("quantization")
    if quantization and quantization.get("enabled"):
        yield from qat_stage_problems(quantization)
    if OmegaConf.select(cfg, "student.init") == "from_teacher":
        yield from _unused_by_derived_student()


# What a student derived from the teacher never reads: it is the teacher, and tier.size_vs_teacher sets how far
# pruning goes (the callback's target is replaced by the ratio that reaches that share).
SCRATCH_ONLY = ("model.student", "tier.student_width", "tier.pruning_target", "callbacks.pruning.target")


def _unused_by_derived_student() -> Iterator[TierkitError]:
    """A command line that sizes or shapes model.student while the student is derived from the teacher would
    silently change nothing."""
    for key in command_line_keys():
        if any(key == unused or key.startswith(f"{unused}.") for unused in SCRATCH_ONLY):
            yield TierkitError(
                f"{key} is set on the command line, but the student is derived from the teacher "
                "(student=from_teacher, the default), which never reads it",
                where=key,
                fix="add student=scratch to train model.student at the tier's width, or size the derived student "
                "with tier.size_vs_teacher",
            )


def qat_stage_problems(quantization: DictConfig) -> Iterator[TierkitError]:
    """The QAT stage must observe activations for at least one epoch, or its INT8 model has no ranges."""
    qat = quantization.qat
    if not qat.enabled:
        return
    if qat.callback.activations_epoch >= qat.epochs:
        yield TierkitError(
            f"QAT runs {qat.epochs} epoch(s) but activations are only quantized from epoch "
            f"{qat.callback.activations_epoch}",
            where="quantization.qat.epochs / quantization.qat.callback.activations_epoch",
            fix="raise quantization.qat.epochs above activations_epoch (the default schedule needs 4)",
        )
    yield from _freeze_after_activations(qat.callback, "quantization.qat.callback")


def check_qat_stage(quantization: DictConfig) -> None:
    """Raise the first problem of the QAT stage's schedule (the stage checks again: a resumed run may bring it)."""
    for problem in qat_stage_problems(quantization):
        raise problem


def _freeze_after_activations(schedule: DictConfig, where: str) -> Iterator[TierkitError]:
    """Activation ranges are observed from ``activations_epoch``; freezing them then or earlier leaves none."""
    if schedule.activations_epoch >= schedule.freeze_epoch:
        yield TierkitError(
            f"QAT freezes activation ranges at epoch {schedule.freeze_epoch}, not after they are first observed "
            f"(epoch {schedule.activations_epoch})",
            where=f"{where}.freeze_epoch",
            fix=f"set freeze_epoch to at least {schedule.activations_epoch + 1}",
        )


def config_problems(cfg: DictConfig) -> list[TierkitError]:
    """Everything wrong with ``cfg``, in the order the pass checks it."""
    problems = list(_owned_problems(cfg, TrainSchema, ""))
    # A student derived from the teacher never builds model.student, so its class need not even import.
    unused = ("model.student",) if OmegaConf.select(cfg, "student.init") == "from_teacher" else ()
    for path, node in target_nodes(cfg):
        if not path.startswith(unused):
            problems += _target_problems(path, node)
    if not problems:  # relations read values the first two checks have vouched for
        problems += _relation_problems(cfg)
    return problems


def raise_problems(problems: list[TierkitError]) -> None:
    """Raise one TierkitError for all ``problems``: the first in full, the others by what they say."""
    if not problems:
        return
    first, rest = problems[0], problems[1:]
    if not rest:
        raise first
    also = "; ".join(problem.what for problem in rest)
    raise TierkitError(f"{first.what} (and {len(rest)} more: {also})", where=first.where, fix=first.fix)


def validate_train_config(cfg: DictConfig) -> None:
    """Raise one TierkitError for everything wrong with a train config."""
    raise_problems(config_problems(cfg))


def validate_export_config(cfg: DictConfig) -> None:
    """Raise one TierkitError for everything wrong with an export config."""
    raise_problems(list(_owned_problems(cfg, ExportSchema, "")))


def validate_hardware_config(cfg: DictConfig, name: str) -> None:
    """Raise one TierkitError for everything wrong with hardware config ``name``."""
    raise_problems(list(_owned_problems(cfg, HardwareSchema, f"hardware.{name}.", source=f"hardware/{name}.yaml")))
