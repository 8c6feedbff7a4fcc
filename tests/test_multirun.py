"""Multirun as a user launches it: parallel jobs on submitit, a SLURM job array without a cluster, the
launch-time checks, and what every job and every export records in Weights & Biases (offline)."""

import json
import re
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from tierkit.cli.launch import check_swept_group_options
from tierkit.errors import TierkitError
from tierkit.utils import files

from conftest import CONFIG_DIR, FAST, compose_train, run_cli

TINY = [*(o for o in FAST if not o.startswith("quantization=")), "debug=tiny"]
# Two epochs with a pruning step at each, and the quantization stage's ONNX files for the W&B artifact.
SWEEP = [
    *TINY,
    "quantization=ptq",
    "logger=wandb",
    "trainer.max_epochs=2",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=1",
    "callbacks.pruning.steps=2",
]
EXPORT_FAST = [
    "profiling.hardware=[cpu_1thread,cpu_2thread]",
    "profiling.graph_optimization_levels=[ORT_ENABLE_ALL]",
    "profiling.repeats=20",
    "profiling.warmup=2",
    "profiling.throughput_repeats=4",
    "profiling.operator_runs=5",
    "profiling.memory=false",
]


def run_wandb_cli(root: Path, *args: str, script: str = "train.py") -> subprocess.CompletedProcess:
    """run_cli with W&B's artifact staging inside ``root``, not in the home folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DATA_DIR", str(root / "wandb-data"))
        return run_cli(root, *args, script=script, timeout=600)


def wandb_records(folder: Path) -> list[wandb_internal_pb2.Record]:
    """The records of the one offline W&B run under ``folder``: its .wandb file is a LevelDB-style log
    (7-byte file header, then 32 KiB blocks of checksum/length/type-framed chunks) of protobuf Records."""
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, position, pending = [], 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records: list, key: str) -> list:
    """Every value logged under ``key``, in order."""
    items = [item for h in of_type(records, "history") for item in h.item]
    return [json.loads(item.value_json) for item in items if (item.key or "/".join(item.nested_key)) == key]


def history_keys(records: list) -> set[str]:
    return {item.key or "/".join(item.nested_key) for h in of_type(records, "history") for item in h.item}


def artifacts(records: list) -> dict[str, list[str]]:
    return {a.name: sorted(e.path for e in a.manifest.contents) for a in of_type(records, "artifact")}


def logged_table(folder: Path, key: str) -> dict:
    (path,) = folder.glob(f"wandb/offline-run-*/files/media/table/{key}_*.table.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("multirun")
    sweep = root / "multirun" / "tiers"
    result = run_wandb_cli(
        root, "-m", "hydra/launcher=local", "tier=lowend,midrange", *SWEEP, f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, sweep


def _submitit_times(log: Path) -> tuple[datetime, datetime]:
    """When submitit started and finished the job whose stdout log this is."""
    stamps = {}
    for line in log.read_text().splitlines():
        found = re.match(r"submitit INFO \(([\d-]+ [\d:,]+)\) - (Starting with|Job completed)", line)
        if found:
            stamps.setdefault(found[2], datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f"))
    return stamps["Starting with"], stamps["Job completed"]


def test_multiruns_started_in_the_same_second_each_get_their_own_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "datetime", SimpleNamespace(now=lambda: datetime(2026, 12, 4, 13, 20, 43)))
    configs = [compose_train(tmp_path, f"paths.root_dir={tmp_path}", hydra_config=True) for _ in range(2)]
    sweeps = [config.hydra.sweep.dir for config in configs]
    assert sweeps == [f"{tmp_path}/multirun/2026-12-04/13-20-43", f"{tmp_path}/multirun/2026-12-04/13-20-43_2"]
    assert configs[0].hydra.sweep.dir == sweeps[0], "every reading within one launch names the same folder"
    assert all(Path(sweep).is_dir() for sweep in sweeps), "created as it is named, so no other sweep can take it"


@pytest.mark.slow
def test_submitit_local_runs_the_jobs_in_parallel_each_in_its_own_folder_with_one_teacher(sweep):
    root, sweep = sweep
    metrics = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in (0, 1)]
    assert [m["tier"] for m in metrics] == ["lowend", "midrange"]
    assert all((sweep / str(n) / "checkpoints" / "best.ckpt").is_file() for n in (0, 1))
    logs = sorted(p for p in sweep.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2, "one submitit job per multirun job"
    (start_a, end_a), (start_b, end_b) = map(_submitit_times, logs)
    assert start_a < end_b and start_b < end_a, "the two jobs ran at the same time"
    trained = [n for n in (0, 1) if "Training teacher" in (sweep / str(n) / "train.log").read_text()]
    assert len(trained) == 1, "one job trains the teacher, the other waits for it and loads it"
    assert metrics[0]["teacher"]["source"] == metrics[1]["teacher"]["source"]
    assert len(list((root / "cache" / "teachers").glob("*/teacher.pt"))) == 1


def test_every_job_logs_its_own_grouped_wandb_run_with_stages_table_and_onnx_artifact(sweep):
    _, sweep = sweep
    runs = []
    for n, tier in ((0, "lowend"), (1, "midrange")):
        job = sweep / str(n)
        records = wandb_records(job)
        (run,) = of_type(records, "run")
        runs.append(run)
        assert run.display_name.endswith(f"-{tier}-seed42-job{n}")
        assert [e.exit_code for e in of_type(records, "exit")] == [0], "the job finished its run"
        config = {u.key: json.loads(u.value_json) for c in of_type(records, "config") for u in c.update}
        assert config["tier"]["name"] == tier
        metrics = json.loads((job / "metrics.json").read_text())
        keys = history_keys(records)
        assert {"prune/params", "prune/macs", "prune/ratio"} <= keys, "every pruning step's statistics"
        assert any(k.startswith("prune/kept/") for k in keys)
        assert history(records, "prune/params") == [step["params"] for step in metrics["pruning"]["history"]]
        assert history(records, "quantization/ptq/test_acc") == [metrics["quantization"]["ptq"]["test_acc"]]
        stages = {"test/acc", "student/test_acc", "teacher/test_acc", "quantization/ptq/test_acc"}
        assert stages | {"quantization/fp32/bytes", "quantization/fp16/test_acc"} <= keys
        table = logged_table(job, "results")
        row = dict(zip(table["columns"], table["data"][0], strict=True))
        assert row["tier"] == tier and row["params"] == metrics["student"]["params"]
        assert row["int8_path"] == "ptq" and row["int8_bytes"] == metrics["quantization"]["ptq"]["bytes"]
        assert {"verdict/passed", "verdict/checks/size/value"} <= keys
        assert list(job.glob("wandb/offline-run-*/files/media/images/quantization/sensitivity_*.png"))
        onnx = artifacts(records)[f"train-{tier}-onnx"]
        report = ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
        assert onnx == ["fp16.onnx", "fp32.onnx", "int8_ptq.onnx", *report]
    assert runs[0].run_group == runs[1].run_group == "debug-multirun_tiers", "one group per sweep"
    assert runs[0].run_id != runs[1].run_id


@pytest.mark.slow
def test_export_logs_the_tier_table_pareto_plot_and_files_to_wandb(sweep):
    root, sweep = sweep
    out = root / "exports" / "tiers"
    result = run_wandb_cli(
        root, f"run={sweep}", f"output_dir={out}", "wandb.enabled=true", *EXPORT_FAST, script="export.py"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    records = wandb_records(out)
    (run,) = of_type(records, "run")
    assert run.run_group == "debug-multirun_tiers", "the export joins the group of the sweep it exports"
    assert [e.exit_code for e in of_type(records, "exit")] == [0]
    table = logged_table(out, "variants")
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [r["variant"] for r in rows] == ["teacher"] + [v["name"] for v in manifest["variants"]]
    assert {r["tier"] for r in rows} == {"teacher", "lowend", "midrange"}
    assert all(r["best_p50_ms"] > 0 and r["bytes"] > 0 for r in rows)
    (plot,) = out.glob("wandb/offline-run-*/files/media/images/pareto_*.png")
    assert plot.read_bytes()[:4] == b"\x89PNG" and "pareto/caption" in history_keys(records)
    files = [manifest["teacher"]["file"], *(v["file"] for v in manifest["variants"])]
    assert artifacts(records)["export"] == sorted(["manifest.json", "pareto.png", "report.md", *files])


@pytest.mark.slow
def test_a_failed_job_finishes_its_wandb_run_so_the_next_job_gets_its_own(tmp_path):
    # The basic launcher runs both jobs in one process; a learning rate of 1e30 makes job 0's loss NaN.
    sweep = tmp_path / "multirun" / "nan"
    result = run_wandb_cli(
        tmp_path,
        "-m",
        "optimizer.lr=1e30,0.003",
        *TINY,
        "logger=wandb",
        "trainer.detect_anomaly=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode != 0, "the sweep reports the failed job"
    assert "the training loss became nan" in result.stdout + result.stderr
    failed, finished = wandb_records(sweep / "0"), wandb_records(sweep / "1")
    assert [e.exit_code for e in of_type(failed, "exit")] == [1]
    assert [e.exit_code for e in of_type(finished, "exit")] == [0]
    assert of_type(finished, "run")[0].display_name.endswith("-job1")
    assert (sweep / "1" / "metrics.json").is_file()


def test_slurm_launcher_composes_the_documented_knobs_and_the_local_account(tmp_path):
    if (CONFIG_DIR / "local" / "slurm.yaml").exists():
        pytest.skip("your own conf/local/slurm.yaml takes precedence over the test's")
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "slurm.yaml").write_text("account: acme\npartition: gpu-long\n")
    cfg = compose_train(
        tmp_path,
        "hydra/launcher=slurm",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.launcher.timeout_min=240",
        hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.account, launcher.partition) == ("acme", "gpu-long"), "from conf/local/slurm.yaml"
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb) == (240, 8, 1, 32)
    assert launcher.submitit_folder == f"{tmp_path / 'sweep'}/.submitit/%j"


def test_slurm_job_array_is_specified_as_sbatch_would_receive_it(tmp_path, monkeypatch):
    """Submit through the real launcher and submitit, with stand-ins for sbatch and srun: no cluster needed."""
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for command in bin_dir.iterdir():
        command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}")
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "results", lambda job: [job.job_id])
    sweep = tmp_path / "sweep"
    cfg = compose_train(
        tmp_path,
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=acme",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.tasks_per_node=2",
        hydra_config=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    assert launcher.launch([["tier=lowend"], ["tier=midrange"]], initial_job_idx=0) == ["4242_0", "4242_1"]
    script = (sweep / ".submitit" / "4242" / "4242_submission.sh").read_text()
    for flag in (
        "--partition=gpu",
        "--account=acme",
        "--gpus-per-node=2",
        "--ntasks-per-node=2",
        "--cpus-per-task=8",
        "--time=120",
        "--mem=32GB",
        "--nodes=1",
        "--array=0-1%2",
        f"--output={sweep}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "srun" in script and "submitit.core._submit" in script
    jobs = [submitit.helpers.DelayedSubmission.load(p) for p in sorted(sweep.glob(".submitit/4242_*/*_submitted.pkl"))]
    assert [(job.args[0], job.args[2]) for job in jobs] == [(["tier=lowend"], 0), (["tier=midrange"], 1)]


@pytest.mark.slow
def test_a_slurm_launch_without_slurm_stops_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sbatch, whatever this machine has
    sweep = tmp_path / "multirun" / "slurm"
    result = run_cli(tmp_path, "-m", "hydra/launcher=slurm", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert "this machine has no SLURM (sbatch, srun not on PATH)" in result.stdout + result.stderr
    assert "hydra/launcher=local" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not list(sweep.glob("*/metrics.json")) and not (sweep / ".submitit").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["foo=1,2"],
        ["hydra/launcher=local", "distill.temprature=2.0,4.0"],
        ["hparams_search=accuracy", "optimizer.lrr=interval(0.001,0.01)", "hydra/launcher=local"],
    ],
)
@pytest.mark.slow
def test_a_sweep_over_an_unknown_key_stops_at_launch(tmp_path, args):
    sweep = tmp_path / "multirun" / "unknown"
    result = run_cli(tmp_path, "-m", *args, *TINY, f"hydra.sweep.dir={sweep}")
    unknown = next(a.split("=")[0] for a in args if "," in a)
    assert result.returncode == 2
    assert f"the sweep varies {unknown}, which the config does not have" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not list(sweep.glob("*/.hydra")) and not (sweep / ".submitit").exists()
    assert not (sweep / "optuna.db").exists(), "no Optuna study is opened"


TIERS = "highend, lowend, midrange"


@pytest.mark.parametrize(
    ("args", "group", "bad", "options"),
    [
        (["tier=ultra,lowend"], "tier", "ultra", TIERS),
        (
            ["hydra/launcher=local", "model=cnn,resnett"],
            "model",
            "resnett",
            "cnn, cnn1d, mlp, mobilenetv2, resnet, separable",
        ),
        (
            ["experiment=null,resnet_cifar1O"],
            "experiment",
            "resnet_cifar1O",
            "fashion_mnist_highend, fashion_mnist_lowend, fashion_mnist_midrange, no_kd, resnet_cifar10",
        ),
        (["hparams_search=accuracy", "tier=choice(lowend,ultra)"], "tier", "ultra", TIERS),
        (["hparams_search=accuracy", "+hydra.sweeper.params.tier='choice(lowend, ultra)'"], "tier", "ultra", TIERS),
    ],
)
@pytest.mark.slow
def test_a_sweep_over_a_misspelled_group_option_stops_at_launch(tmp_path, args, group, bad, options):
    sweep = tmp_path / "multirun" / "typo"
    result = run_cli(tmp_path, "-m", *args, *TINY, f"hydra.sweep.dir={sweep}")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"the sweep gives the config group {group} the value {bad}, which is not one of its options" in output
    assert f"({options})" in output and f"where: {group}\n" in output
    assert f"fix:   pick the values of {group} from its options: {options}" in output
    assert "Traceback" not in result.stderr and "Could not find" not in output, "before Hydra composes a job"
    assert not sweep.exists(), "no job folder, no multirun.yaml, no Optuna study"


@pytest.mark.parametrize(
    ("task", "params"),
    [
        (["tier=lowend,midrange", "seed=1,2"], {}),
        (["experiment=null,no_kd", "shift=camera,null"], {}),
        (["tier=glob(*end)", "+model=choice(cnn,resnet)"], {}),
        (
            [],
            {"tier": "choice(lowend, highend)", "experiment": "null,no_kd", "distill.alpha": "interval(0,1)"},
        ),
    ],
)
def test_a_sweep_over_existing_group_options_or_null_passes_the_launch_check(task, params):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
        OmegaConf.set_readonly(cfg, False)
        cfg.hydra.overrides.task = task
        cfg.hydra.sweeper.params = params or None
        check_swept_group_options(cfg)


@pytest.mark.parametrize(
    ("task", "bad"),
    [(["tier=glob(ultra*)"], "the value glob(ultra*),"), (["tier=range(1,3)"], "the values 1, 2, which are not among")],
)
def test_a_group_sweep_that_picks_no_option_is_refused(task, bad):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
        OmegaConf.set_readonly(cfg, False)
        cfg.hydra.overrides.task = task
        with pytest.raises(TierkitError, match=re.escape(bad)):
            check_swept_group_options(cfg)
