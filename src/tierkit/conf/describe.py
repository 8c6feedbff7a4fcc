"""Every key of a composed config with its type, value, allowed values and meaning, taken from the schema.

Keys of sections tierkit owns are described by conf/schema.py's dataclasses; keys of ``_target_`` sections by
their class's constructor (and tierkit's rules for the ones it relies on). A key neither covers has no entry,
which the test suite refuses for every YAML file shipped.
"""

import dataclasses
import inspect
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tierkit.conf.schema import MODEL_OWN_KEYS, Rule, TrainSchema, target_rule
from tierkit.conf.validate import bounds, constructor_parameters, import_target, names_target
from tierkit.errors import TierkitError

HYDRA_KEYS = {
    "_target_": "the class or function built from this section",
    "_partial_": "build a function waiting for the rest of its arguments (optimizers get the parameters later)",
    "_recursive_": "whether nested _target_ sections are built first",
    "_convert_": "how nested configs reach the constructor",
    "_args_": "positional arguments",
}


@dataclass(frozen=True)
class Entry:
    """One key: where it is, what it holds and what it may hold; ``help`` None means no schema covers it."""

    path: str
    type: str
    value: str
    allowed: str
    help: str | None


def _shown(node: DictConfig, key: str) -> str:
    """The value as the config holds it: resolved where it can be, else the interpolation itself."""
    if OmegaConf.is_missing(node, key):
        return "???"
    try:
        value = node[key]
    except Exception:
        return str(node._get_node(key)._value())
    if isinstance(value, DictConfig):
        return "{...}"
    return str(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _rule_entry(path: str, type_name: str, value: str, rule: Rule) -> Entry:
    return Entry(path, rule.kind.__name__ if rule.kind else type_name, value, bounds(rule), rule.help)


def _owned(node: DictConfig, schema: type, prefix: str) -> Iterator[Entry]:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        path = f"{prefix}{key}"
        if key not in fields:
            yield Entry(path, "?", _shown(node, key), "", None)
            continue
        field, child = fields[key], node._get_node(key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(child, DictConfig):
            yield from _owned(node[key], hints[key], f"{path}.")
        elif field.metadata.get("target") or (hints[key] is Any and isinstance(child, DictConfig)):
            yield from _open(node[key], f"{path}.")
        else:
            yield _rule_entry(path, _type_name(hints[key]), _shown(node, key), field.metadata["rule"])


def _open(node: DictConfig, prefix: str, argument_of: str | None = None) -> Iterator[Entry]:
    """A section of ``_target_`` nodes (or one itself): keys described by the constructors they reach."""
    if not names_target(node):
        for key in node:
            child = node._get_node(key)
            path = f"{prefix}{key}"
            if isinstance(child, DictConfig):
                yield from _open(node[key], f"{path}.", argument_of)
            elif argument_of:
                yield Entry(path, "any", _shown(node, key), "", f"part of {argument_of}")
            elif child._is_none():
                yield Entry(path, "none", "None", "", "an entry switched off")
            else:
                yield Entry(path, "?", _shown(node, key), "", None)
        return
    section = prefix.rstrip(".")
    try:
        target = None if OmegaConf.is_missing(node, "_target_") else import_target(node._target_, section)
    except TierkitError:
        target = None
    parameters, takes_any = constructor_parameters(target) if target is not None else ({}, False)
    name = getattr(target, "__name__", "its class")
    own = MODEL_OWN_KEYS if section.startswith("model.") else {}
    for key in node:
        path, child = f"{prefix}{key}", node._get_node(key)
        if key in HYDRA_KEYS:
            yield Entry(path, "hydra", _shown(node, key), "", HYDRA_KEYS[key])
        elif key in own:
            yield Entry(path, "str", _shown(node, key), "", own[key])
        elif key in parameters or takes_any:
            if isinstance(child, DictConfig) and names_target(child):
                yield from _open(node[key], f"{path}.")
                continue
            if isinstance(child, DictConfig):
                yield from _open(node[key], f"{path}.", argument_of=f"{name}'s {key} argument")
                continue
            parameter = parameters.get(key)
            annotation = parameter.annotation if parameter else inspect.Parameter.empty
            rule = target_rule(path) or Rule(f"argument of {name}")
            yield _rule_entry(path, _type_name(annotation), _shown(node, key), rule)
        else:
            yield Entry(path, "?", _shown(node, key), "", None)


def describe(cfg: DictConfig, schema: type = TrainSchema) -> list[Entry]:
    """An entry for every key of a composed config (train.yaml's by default; ExportSchema for export.yaml's)."""
    return list(_owned(cfg, schema, ""))


def render(entries: list[Entry], prefix: str = "") -> str:
    """A plain-text table of the entries under ``prefix``."""
    rows = [("key", "type", "value", "allowed", "meaning")]
    rows += [
        (e.path, e.type, e.value, e.allowed, e.help or "NO SCHEMA")
        for e in entries
        if e.path == prefix or e.path.startswith(f"{prefix}.") or not prefix
    ]
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in enumerate((44, 18, 28, 36, 200))]

    def line(row: tuple[str, ...]) -> str:
        pairs = zip(row, widths, strict=True)
        return "  ".join((c if len(c) <= w else c[: w - 1] + "…").ljust(w) for c, w in pairs).rstrip()

    return "\n".join([line(rows[0]), line(tuple("-" * w for w in widths)), *map(line, rows[1:])])
