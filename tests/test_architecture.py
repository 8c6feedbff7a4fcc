"""The house's one rule: imports point down the pipeline, never back up it.

Rooms (the folders of src/tierkit, and its top-level modules) sit on floors; a room imports only rooms on lower
floors. The runtime sits on the ground floor and imports nothing else of tierkit, so it installs on a device alone.
The config schema (conf) checks values with tierkit's one error type, so it sits just above it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tierkit"
FLOORS = [
    {"errors", "runtime"},
    {"conf"},
    {"utils"},
    {"run_folder"},
    {"data", "models"},
    {"onnxio", "distill"},
    {"prune"},
    {"quant", "profile"},
    {"export"},
    {"tracking"},
    {"stages"},
    {"cli"},
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _room(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_rooms(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "tierkit" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def test_every_room_has_a_floor():
    rooms = {_room(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert rooms <= set(FLOOR), f"rooms without a floor in this test: {sorted(rooms - set(FLOOR))}"


def test_imports_point_down_the_pipeline():
    back_edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        if room == "__init__":
            continue
        for target, line in _imported_rooms(path):
            if target == room:
                continue
            if room == "runtime" or FLOOR[target] >= FLOOR[room]:
                back_edges.append(f"{path.relative_to(PACKAGE)}:{line} imports tierkit.{target}")
    assert not back_edges, "imports that point back up the pipeline:\n" + "\n".join(back_edges)
