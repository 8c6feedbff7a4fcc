import os
import random
import subprocess
import sys
from pathlib import Path

# pytest-xdist runs one worker per core: each worker, and every CLI it starts, computes on one thread, so the
# workers do not fight over the cores. Set before torch is imported, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, settings
from omegaconf import DictConfig

import tierkit.utils.resolvers  # noqa: F401  (registers config resolvers for compose)

# Fuzzing (hypothesis): every test run tries the same examples ("ci"); HYPOTHESIS_PROFILE=long draws ten times
# as many at random. Tests whose examples are slow set a smaller max_examples of their own, scaled by SCALE.
settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FUZZ_SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "conf"
# A fast recipe: tiny synthetic data, narrow models, no quantization stage (tests/test_qat.py covers it).
FAST = [
    "data=synthetic",
    # A tiny model.student of its own, trained from scratch: the derived default would be the teacher pruned.
    "student=scratch",
    "model.teacher.base_channels=8",
    "model.student.base_channels=8",
    "~callbacks.progress",
    "quantization=off",
]
# An export profiled on one setting with few repeats: enough to ship a variant, for tests that are not about timing.
QUICK_PROFILE = [
    "profiling.hardware=[cpu_2thread]",
    "profiling.repeats=10",
    "profiling.warmup=2",
    "profiling.throughput_repeats=2",
    "profiling.operator_runs=2",
    "profiling.memory=false",
]


def fake_slurm(root: Path, job_id: int, tasks: int = 1, rank: int = 0, restarts: int = 0) -> dict[str, str]:
    """The environment of task ``rank`` of a one-node SLURM job, with a stand-in ``scontrol`` on PATH that records
    its arguments in ``root/scontrol.log`` and, as SLURM does when it requeues a job, sends its caller SIGTERM."""
    scontrol = root / "slurm-bin" / "scontrol"
    scontrol.parent.mkdir(parents=True, exist_ok=True)
    scontrol.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{root / "scontrol.log"}"\nkill -TERM "$PPID"\n')
    scontrol.chmod(0o755)
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NAME": "tierkit-test",
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_RESTART_COUNT": str(restarts),
        "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws the same weights and data whichever tests ran before it, in its process or another worker."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_train(tmp_path: Path, *overrides: str, hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
            return_hydra_config=hydra_config,
        )


def run_cli(
    tmp_path: Path, *args: str, script: str = "train.py", timeout: int = 300, test_helpers: bool = False
) -> subprocess.CompletedProcess:
    """Run an entry point the way a user does, from a scratch folder, with the teacher cache inside it.

    ``test_helpers`` puts tests/ on the path, for configs that name a test-only callback as a ``_target_``."""
    env = {**os.environ, "TIERKIT_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    if test_helpers:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
