"""SLURM awareness without a cluster: the run folder a job's tasks and requeues share, which checkpoint a requeued
job resumes from, and the shuffle that leaves out what a mid-epoch checkpoint already trained on."""

import os
import re
import time
from datetime import datetime
from types import SimpleNamespace

import pytest

from tierkit.data.base import EpochShuffle
from tierkit.run_folder import RunFolder
from tierkit.utils import files
from tierkit.utils.resume import restart_epoch_at_its_start
from tierkit.utils.slurm import requeued_checkpoint, run_folder_name

from conftest import compose_train, fake_slurm


@pytest.fixture
def in_slurm_job(monkeypatch, tmp_path):
    def enter(job_id: int, restarts: int = 0, **extra: str) -> None:
        for key, value in {**fake_slurm(tmp_path, job_id, restarts=restarts), **extra}.items():
            monkeypatch.setenv(key, value)

    return enter


def test_a_run_outside_slurm_is_named_after_its_start_time(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    name = run_folder_name(str(tmp_path))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", name)
    assert (tmp_path / name).is_dir(), "created as it is named, so no other run can take it"


def test_runs_started_in_the_same_second_each_get_their_own_folder(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(files, "datetime", SimpleNamespace(now=lambda: datetime(2026, 12, 4, 13, 20, 43)))
    names = [run_folder_name(str(tmp_path)) for _ in range(3)]
    assert names == ["2026-12-04/13-20-43", "2026-12-04/13-20-43_2", "2026-12-04/13-20-43_3"]


def test_a_run_inside_a_slurm_job_is_named_after_the_job(in_slurm_job, tmp_path):
    in_slurm_job(4242)
    assert run_folder_name(str(tmp_path)) == "slurm/4242"
    cfg = compose_train(tmp_path, hydra_config=True)
    assert cfg.hydra.run.dir.endswith("outputs/slurm/4242")


def test_an_array_task_is_named_as_scontrol_requeue_names_it(in_slurm_job, tmp_path):
    in_slurm_job(4243, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")
    assert run_folder_name(str(tmp_path)) == "slurm/77_3"


def test_an_interactive_shell_is_not_a_job(in_slurm_job, tmp_path):
    in_slurm_job(4244, SLURM_JOB_NAME="bash")
    assert not run_folder_name(str(tmp_path)).startswith("slurm/")


def test_a_requeued_job_resumes_from_its_newest_checkpoint(in_slurm_job, tmp_path):
    run = tmp_path / "run"
    files = [run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt", run / "checkpoints" / "qat" / "last.ckpt"]
    for age, path in enumerate(reversed(files)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (time.time() - 10 * age, time.time() - 10 * age))
    in_slurm_job(4245, restarts=0)
    assert requeued_checkpoint(RunFolder(run).requeue_checkpoints()) is None, "a first attempt starts afresh"
    in_slurm_job(4245, restarts=2)
    assert sorted(RunFolder(run).requeue_checkpoints()) == sorted(files)
    assert requeued_checkpoint(RunFolder(run).requeue_checkpoints()) == files[-1]
    assert requeued_checkpoint(RunFolder(tmp_path / "empty").requeue_checkpoints()) is None


def test_a_resumed_shuffle_leaves_out_the_samples_already_trained_on():
    data = list(range(50))
    plain = EpochShuffle(data, seed=3)
    plain.set_epoch(2)
    epoch_two = list(plain)
    resumed = EpochShuffle(data, seed=3, resume=(2, 16))
    resumed.set_epoch(2)
    assert list(resumed) == epoch_two[16:]
    resumed.set_epoch(2)
    assert list(resumed) == epoch_two, "only the first pass after resuming is shortened"


def test_a_resume_point_for_an_earlier_epoch_is_dropped():
    resumed = EpochShuffle(list(range(20)), seed=3, resume=(1, 8))
    resumed.set_epoch(2)
    assert len(list(resumed)) == 20
    resumed.set_epoch(1)
    assert len(list(resumed)) == 20


def test_a_checkpoint_saved_as_an_epoch_starts_gets_that_epochs_batch_counters():
    stale = {"ready": 20, "started": 20, "processed": 20, "completed": 20}
    checkpoint = {
        "loops": {
            "fit_loop": {
                "epoch_progress": {"current": {"ready": 3, "started": 2, "processed": 2, "completed": 2}},
                "epoch_loop.batch_progress": {"current": dict(stale), "is_last_batch": True},
            }
        }
    }
    restart_epoch_at_its_start(checkpoint)
    batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert batches == {"current": dict.fromkeys(stale, 0), "is_last_batch": False}
    mid_epoch = {"ready": 3, "started": 3, "processed": 2, "completed": 2}
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"] = mid_epoch
    checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"] = {"current": dict(stale), "is_last_batch": False}
    restart_epoch_at_its_start(checkpoint)
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"] == stale, "mid-epoch: untouched"
