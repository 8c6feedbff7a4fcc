"""Assemble an export's manifest.json: what each variant is, how it measured, and where it came from."""

import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from tierkit.errors import TierkitError
from tierkit.runtime import SCHEMA_VERSION, ManifestError, validate_manifest
from tierkit.runtime.device import detect_device

PACKAGES = ("tierkit", "torch", "lightning", "onnx", "onnxruntime", "onnxscript", "torch-pruning", "numpy")


def git_commit(repo: Path) -> tuple[str | None, bool | None]:
    """The commit the code was at, and whether the working tree had uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def provenance(repo: Path, seeds: list[int]) -> dict:
    """Code, packages and machine behind the measurements; the seed when every run shared one."""
    commit, dirty = git_commit(repo)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    device = detect_device()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": versions,
        "cpu": {"model": device.cpu_model, "flags": device.cpu_flags, "cores": device.cores},
        "seed": seeds[0] if len(set(seeds)) == 1 else None,
    }


def complete_manifest(body: dict, path: Path) -> dict:
    """Stamp the schema version and time and validate against the runtime's schema before anything is written."""
    manifest = {"schema_version": SCHEMA_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"), **body}
    try:
        validate_manifest(manifest, str(path))
    except ManifestError as exc:
        raise TierkitError(
            f"the manifest export built breaks schema v{SCHEMA_VERSION}: {exc.what}",
            where=str(path),
            fix="this is a tierkit bug; please report it with the command you ran",
        ) from exc
    return manifest
