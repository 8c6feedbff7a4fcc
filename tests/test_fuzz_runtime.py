"""The on-device runtime fuzzed with hypothesis: manifests with fields missing, mistyped or pointing outside their
folder, and input batches of any dtype, rank, shape and content. Each either works or is refused with the
runtime's own error (ManifestError, NoVariantFits, ValueError); nothing else escapes, and no model file runs
whose sha256 differs from its manifest's.

Bounded for CI (a few hundred examples per interface, the same ones every run, under a minute);
HYPOTHESIS_PROFILE=long draws ten times as many at random. Cases the fuzzing found are kept below as explicit
examples.
"""

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_runtime import CLASSES, SHAPE, write_export

from tierkit.runtime import (
    DeviceInfo,
    ManifestError,
    NoVariantFits,
    open_session,
    predict,
    select_variant,
    sha256_of,
    validate_manifest,
)

DEVICE = DeviceInfo.from_dict({"cores": 8, "memory_mib": 16384, "providers": ["CPUExecutionProvider"]})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    path = write_export(tmp_path_factory.mktemp("fuzz"))
    return path, json.loads(path.read_text())


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path and list index path in a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*prefix, index))
    return found


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../outside.onnx", "/etc/passwd", "", "highend/../../x.onnx", "CPUExecutionProvider"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def mutated(manifest: dict, path: tuple, action: str, value: Any) -> dict:
    data = copy.deepcopy(manifest)
    *parents, last = path
    holder = data
    for key in parents:
        holder = holder[key]
    if action == "delete":
        del holder[last]
    else:
        holder[last] = value
    return data


@st.composite
def broken_manifests(draw, manifest: dict) -> dict:
    paths = paths_of(manifest)
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["delete", "replace"]))
    return mutated(manifest, path, action, draw(JSON_VALUES))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_broken_manifest_is_refused_or_still_safe_to_run(exported, tmp_path_factory, data):
    path, manifest = exported
    broken = data.draw(broken_manifests(manifest))
    try:
        validate_manifest(broken, "fuzzed manifest.json")
    except ManifestError:
        event("refused by the schema")
        return
    copy_path = path.parent / "fuzzed.json"
    copy_path.write_text(json.dumps(broken))
    try:
        selection = select_variant(broken, DEVICE)
        session = open_session(copy_path, selection)
    except (ManifestError, NoVariantFits) as refused:
        event(f"valid, then refused: {type(refused).__name__}")
        return
    event("valid, and the selected model ran")
    model = path.parent / selection.variant["file"]
    assert model.resolve().is_relative_to(path.parent.resolve()), "a model outside the export folder was opened"
    assert sha256_of(model) == selection.variant["sha256"], "a model that does not match its manifest was opened"
    logits = predict(session, np.zeros((2, *SHAPE), np.float32))
    assert logits.shape == (2, CLASSES)


# Found by the fuzzing above: numpy's dtype parser raised SyntaxError and ValueError on these input dtypes.
@pytest.mark.parametrize("dtype", ["0:", "01", "float31", ""])
def test_a_manifest_input_dtype_numpy_cannot_parse_is_refused(exported, dtype):
    _, manifest = exported
    with pytest.raises(ManifestError, match=r"input\.dtype"):
        validate_manifest(mutated(manifest, ("input", "dtype"), "replace", dtype), "manifest.json")


BATCHES = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
)
VALUES = st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=BATCHES)
@example(batch=np.zeros((0, *SHAPE), np.float32))
@example(batch=np.full((2, *SHAPE), np.nan, np.float32))
@example(batch=np.full((1, *SHAPE), np.inf, np.float32))
def test_any_input_batch_gets_logits_or_one_clear_refusal(exported, batch):
    path, manifest = exported
    session = open_session(path, select_variant(manifest, DEVICE))
    try:
        logits = predict(session, batch)
    except ValueError as refused:
        assert "Fix:" in str(refused)
        return
    assert batch.dtype == np.float32 and batch.shape[1:] == tuple(SHAPE) and len(batch)
    assert np.isfinite(batch).all() and logits.shape == (len(batch), CLASSES)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), *[st.just(s) for s in SHAPE]), elements=VALUES))
def test_finite_or_not_a_well_shaped_batch_is_answered_or_refused_for_its_values(exported, batch):
    path, manifest = exported
    session = open_session(path, select_variant(manifest, DEVICE))
    if np.isfinite(batch).all():
        assert np.isfinite(predict(session, batch)).all()
    else:
        with pytest.raises(ValueError, match="NaN or infinite"):
            predict(session, batch)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], max_examples=100)
@given(data=st.data())
def test_a_truncated_or_bit_flipped_model_file_is_refused(tmp_path_factory, data):
    path = write_export(tmp_path_factory.mktemp("flip"))
    manifest = json.loads(path.read_text())
    selection = select_variant(manifest, DEVICE)
    model = path.parent / selection.variant["file"]
    content = bytearray(model.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="keep")]
    else:
        offset = data.draw(st.integers(0, len(content) - 1), label="offset")
        content[offset] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    model.write_bytes(bytes(content))
    with pytest.raises(ManifestError, match="changed after export"):
        open_session(path, selection)
