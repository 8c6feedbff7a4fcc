"""Manifest schema v1: check an export's manifest.json before trusting any file it names.

A deploy target only has the manifest to go on, so every field is checked up front and a violation names
the JSON path and file instead of surfacing later as a KeyError deep inside selection.
"""

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import onnxruntime as ort

from tierkit.runtime.cpu import CPU_CLASSES, SHIPPING_TARGETS

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REEXPORT = "re-export with tierkit-export (it writes valid manifests) or correct the field by hand"


# Tensor element types a model input can have; numpy's own parser takes any string (and raises what it likes).
INPUT_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


class ManifestError(ValueError):
    """A manifest or model file that cannot be trusted: says what is wrong, where, and how to fix it."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what} (in {where}). Fix: {fix}")


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return "null" if value is None else f"{names.get(type(value), type(value).__name__)} {shown}"


def _file_problem(value: Any) -> str | None:
    """Why ``value`` is not a safe path inside the export folder, or None; a manifest must not reach outside it."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty relative path string, got {_json_type(value)}"
    if "\\" in value:
        return f"must use forward slashes, got {value!r}"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return f"must be relative to the manifest's folder, got the absolute path {value!r}"
    if ".." in PurePosixPath(value).parts:
        return f"must stay inside the manifest's folder, got {value!r} (contains '..')"
    return None


class _Checker:
    """Type and range checks that fail with the JSON path of the offending field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, what: str, fix: str = _REEXPORT) -> NoReturn:
        raise ManifestError(f"{path or 'the top level'} {what}", self.source, fix)

    def key(self, obj: dict, key: str, path: str) -> Any:
        if key not in obj:
            where = f"{path}.{key}" if path else key
            self.fail(
                where, "is missing", f"add {key!r} to {path or 'the top level'}, or re-export with tierkit-export"
            )
        return obj[key]

    def typed(self, value: Any, path: str, kind: type | tuple[type, ...], expected: str) -> Any:
        # bool is an int in Python but never a valid count or measurement here.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.fail(path, f"must be {expected}, got {_json_type(value)}")
        return value

    def obj(self, value: Any, path: str) -> dict:
        return self.typed(value, path, dict, "an object")

    def text(self, value: Any, path: str) -> str:
        return self.typed(value, path, str, "a string")

    def flag(self, value: Any, path: str) -> bool:
        return self.typed(value, path, bool, "true or false")

    def integer(self, value: Any, path: str, minimum: int) -> int:
        self.typed(value, path, int, f"an integer >= {minimum}")
        if value < minimum:
            self.fail(path, f"must be an integer >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str, minimum: float, maximum: float | None = None) -> float:
        expected = f"a number in [{minimum}, {maximum}]" if maximum is not None else f"a number >= {minimum}"
        self.typed(value, path, (int, float), expected)
        if not minimum <= value <= (maximum if maximum is not None else float("inf")):
            self.fail(path, f"must be {expected}, got {value}")
        return value

    def strings(self, value: Any, path: str, non_empty: bool = False) -> list[str]:
        self.typed(value, path, list, "an array of strings")
        if non_empty and not value:
            self.fail(path, "must be a non-empty array of strings, got []")
        for i, item in enumerate(value):
            self.text(item, f"{path}[{i}]")
        return value


def _check_setting(c: _Checker, row: Any, path: str, measured: bool) -> dict:
    c.obj(row, path)
    c.text(c.key(row, "hardware", path), f"{path}.hardware")
    c.strings(c.key(row, "providers", path), f"{path}.providers", non_empty=True)
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        c.integer(c.key(row, key, path), f"{path}.{key}", 0)
    levels = list(ort.GraphOptimizationLevel.__members__)
    level = c.text(c.key(row, "graph_optimization_level", path), f"{path}.graph_optimization_level")
    if level not in levels:
        c.fail(f"{path}.graph_optimization_level", f"must be one of {levels}, got {level!r}")
    if measured:
        for key in ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s"):
            c.number(c.key(row, key, path), f"{path}.{key}", 0)
    return row


def _check_variant(c: _Checker, variant: Any, path: str) -> None:
    c.obj(variant, path)
    for key in ("name", "tier", "why"):
        c.text(c.key(variant, key, path), f"{path}.{key}")
    if c.key(variant, "precision", path) not in PRECISIONS:
        c.fail(f"{path}.precision", f"must be one of {list(PRECISIONS)}, got {_json_type(variant['precision'])}")
    problem = _file_problem(c.key(variant, "file", path))
    if problem:
        c.fail(f"{path}.file", problem, "name the model file relative to manifest.json, e.g. 'lowend/int8.onnx'")
    sha = c.text(c.key(variant, "sha256", path), f"{path}.sha256")
    if not _SHA256.fullmatch(sha):
        c.fail(
            f"{path}.sha256",
            f"must be 64 hex characters (a SHA-256 digest), got {sha!r}",
            "re-export, or set it to `python -c \"from tierkit.runtime import sha256_of; print(sha256_of('FILE'))\"`",
        )
    c.integer(c.key(variant, "bytes", path), f"{path}.bytes", 1)
    c.number(c.key(variant, "accuracy", path), f"{path}.accuracy", 0, 1)
    if "val_accuracy" in variant:  # optional: manifests written before it lack it
        c.number(variant["val_accuracy"], f"{path}.val_accuracy", 0, 1)
    c.integer(c.key(variant, "params", path), f"{path}.params", 0)
    c.integer(c.key(variant, "macs", path), f"{path}.macs", 0)
    if c.key(variant, "peak_memory_mib", path) is not None:  # null where the export could not measure it
        c.number(variant["peak_memory_mib"], f"{path}.peak_memory_mib", 0)
    c.flag(c.key(variant, "ships", path), f"{path}.ships")
    # Optional since tierkit wrote them (older manifests lack them): CPU classes and per-class picks.
    for key, known in (("cpu_classes", CPU_CLASSES), ("ships_for", SHIPPING_TARGETS)):
        if key in variant:
            for i, name in enumerate(c.strings(variant[key], f"{path}.{key}")):
                if name not in known:
                    c.fail(f"{path}.{key}[{i}]", f"must be one of {list(known)}, got {name!r}")
    if variant.get("ships") and "ships_for" in variant and not variant["ships_for"]:
        c.fail(f"{path}.ships_for", "is empty, but the variant ships", "list the CPU classes it ships for")
    if "accuracy_by_cpu" in variant:
        by_cpu = c.obj(variant["accuracy_by_cpu"], f"{path}.accuracy_by_cpu")
        for name, facts in by_cpu.items():
            where = f"{path}.accuracy_by_cpu.{name}"
            if name not in CPU_CLASSES:
                c.fail(where, f"names no CPU class (expected one of {list(CPU_CLASSES)})")
            c.number(c.key(c.obj(facts, where), "accuracy", where), f"{where}.accuracy", 0, 1)
    budgets = c.obj(c.key(variant, "budgets", path), f"{path}.budgets")
    # Manifests written before the rename call the accuracy budget max_accuracy_drop.
    accuracy_key = "max_accuracy_drop" if "max_accuracy_drop" in budgets else "max_drop_vs_teacher"
    for key in (accuracy_key, "max_size_kib", "max_latency_ms"):
        c.number(c.key(budgets, key, f"{path}.budgets"), f"{path}.budgets.{key}", 0)
    checks = c.obj(c.key(variant, "checks", path), f"{path}.checks")
    for key in ("accuracy", "size", "latency"):
        c.flag(c.key(checks, key, f"{path}.checks"), f"{path}.checks.{key}")
    device = c.obj(c.key(variant, "device", path), f"{path}.device")
    for key in ("min_memory_mib", "min_cores"):
        c.integer(c.key(device, key, f"{path}.device"), f"{path}.device.{key}", 0)
    rows = c.typed(c.key(variant, "latency", path), f"{path}.latency", list, "a non-empty array of latency rows")
    if not rows:
        c.fail(f"{path}.latency", "must be a non-empty array of latency rows, got []")
    for i, row in enumerate(rows):
        _check_setting(c, row, f"{path}.latency[{i}]", measured=True)
    setting = _check_setting(c, c.key(variant, "setting", path), f"{path}.setting", measured=False)
    measured = [row["hardware"] for row in rows]
    if setting["hardware"] not in measured:
        c.fail(
            f"{path}.setting.hardware",
            f"is {setting['hardware']!r}, which has no row in {path}.latency",
            f"set it to a measured hardware setting: {measured}",
        )


def validate_manifest(data: dict, where: str) -> None:
    """Raise ManifestError at the first field that breaks schema v1; ``where`` names the file in the message.

    Unknown keys are allowed so that older runtimes read manifests with extra fields.
    """
    c = _Checker(where)
    c.obj(data, "")
    version = c.key(data, "schema_version", "")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        c.fail(
            "schema_version",
            f"is {_json_type(version)}, but this runtime reads schema version {SCHEMA_VERSION}",
            "re-export the model with the tierkit release that matches this runtime, or use the runtime of the "
            "tierkit release that wrote it",
        )
    created = c.text(c.key(data, "created", ""), "created")
    try:
        datetime.fromisoformat(created)
    except ValueError:
        c.fail("created", f"must be an ISO 8601 timestamp like '2026-11-25T10:00:00Z', got {created!r}")
    provenance = c.obj(c.key(data, "provenance", ""), "provenance")
    commit = c.key(provenance, "git_commit", "provenance")
    if commit is not None:
        c.text(commit, "provenance.git_commit")
    packages = c.obj(c.key(provenance, "packages", "provenance"), "provenance.packages")
    for name, version_ in packages.items():
        c.text(version_, f"provenance.packages.{name}")
    cpu = c.obj(c.key(provenance, "cpu", "provenance"), "provenance.cpu")
    c.text(c.key(cpu, "model", "provenance.cpu"), "provenance.cpu.model")
    c.strings(c.key(cpu, "flags", "provenance.cpu"), "provenance.cpu.flags")
    seed = c.key(provenance, "seed", "provenance")
    if seed is not None:
        c.typed(seed, "provenance.seed", int, "an integer or null")
    spec = c.obj(c.key(data, "input", ""), "input")
    c.text(c.key(spec, "name", "input"), "input.name")
    shape = c.typed(c.key(spec, "shape", "input"), "input.shape", list, "a non-empty array of sizes (no batch axis)")
    if not shape:
        c.fail("input.shape", "must be a non-empty array of sizes (no batch axis), got []")
    for i, size in enumerate(shape):
        c.integer(size, f"input.shape[{i}]", 1)
    dtype = c.text(c.key(spec, "dtype", "input"), "input.dtype")
    if dtype not in INPUT_DTYPES:
        c.fail("input.dtype", f"must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}")
    c.integer(c.key(data, "num_classes", ""), "num_classes", 1)
    if data.get("teacher") is not None:
        c.obj(data["teacher"], "teacher")
    variants = c.typed(c.key(data, "variants", ""), "variants", list, "a non-empty array of variants")
    if not variants:
        c.fail("variants", "must be a non-empty array of variants, got []")
    names: dict[str, int] = {}
    shipping: dict[str, int] = {}
    picks: dict[tuple[str, str], int] = {}
    for i, variant in enumerate(variants):
        path = f"variants[{i}]"
        _check_variant(c, variant, path)
        if variant["name"] in names:
            c.fail(
                f"{path}.name",
                f"repeats {variant['name']!r} of variants[{names[variant['name']]}]",
                "give every variant its own name",
            )
        names[variant["name"]] = i
        if variant["ships"] and variant["tier"] in shipping:
            c.fail(
                f"{path}.ships",
                f"is true, but variants[{shipping[variant['tier']]}] already ships tier {variant['tier']!r}",
                "set ships to true on exactly one variant per tier",
            )
        if variant["ships"]:
            shipping[variant["tier"]] = i
        for target in variant.get("ships_for", []):
            if (variant["tier"], target) in picks:
                c.fail(
                    f"{path}.ships_for",
                    f"names {target!r}, which variants[{picks[variant['tier'], target]}] already ships for in "
                    f"tier {variant['tier']!r}",
                    "give each CPU class one variant per tier",
                )
            picks[variant["tier"], target] = i


def load_manifest(path: str | Path) -> dict:
    """Read and validate a manifest.json, turning every failure into a ManifestError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(
            "manifest not found",
            str(path),
            "pass the manifest.json that tierkit-export wrote, e.g. exports/RUN/manifest.json",
        ) from None
    except OSError as exc:
        raise ManifestError(
            f"cannot read the manifest ({exc.strerror})", str(path), "check the path and its permissions"
        ) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ManifestError(
            f"manifest is not valid JSON ({exc})", str(path), "re-export it, or repair the JSON by hand"
        ) from None
    validate_manifest(data, str(path))
    return data


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed so large models do not have to fit in memory twice."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_file(manifest_dir: str | Path, variant: dict) -> Path:
    """The variant's model file, after checking it exists and matches the recorded sha256.

    Refusing a changed file prevents running a model whose accuracy and latency the manifest does not describe.
    """
    name = variant.get("name", "?")
    problem = _file_problem(variant.get("file"))
    if problem:
        raise ManifestError(f"file of variant {name!r} {problem}", str(manifest_dir), "re-export the model")
    path = Path(manifest_dir) / variant["file"]
    if not path.is_file():
        raise ManifestError(
            f"model file of variant {name!r} is missing",
            str(path),
            "copy the export folder whole (manifest.json with its model files), or re-export",
        )
    expected, actual = str(variant.get("sha256", "")).lower(), sha256_of(path)
    if actual != expected:
        raise ManifestError(
            f"model file of variant {name!r} was changed after export: sha256 is {actual}, manifest records {expected}",
            str(path),
            "restore the file from the export or re-export; never edit exported model files by hand",
        )
    return path
