"""benchmarks.compare end to end in its quick mode, and the README's comparison kept in step with its output."""

import copy
import json
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from benchmarks import common
from benchmarks.memory import MAX_GROWTH, MAX_SLOPE_MIB_PER_EPOCH
from tierkit.conf.validate import validate_train_config

from conftest import FAST, REPO, compose_train

COMPARE = "benchmarks.compare"
MEMORY = "benchmarks.memory"
ROWS = [
    "teacher",
    "teacher ORT INT8",
    "teacher ModelPruning 50%",
    "teacher torch-pruning 50% + ORT INT8",
    "teacher NNCF INT8",
    "teacher NNCF INT8, accuracy control",
    "student alone",
    "student + KD",
    "tierkit highend",
    "tierkit midrange",
    "tierkit lowend",
]


def run_compare(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", COMPARE, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = run_compare("--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_quick_compare_measures_every_row(quick):
    out, result = quick
    payload = json.loads((out / "compare.json").read_text())
    assert "CPU:" in payload["machine"] and "CPU:" in result.stdout
    rows = {row["model"]: row for row in payload["rows"]}
    assert list(rows) == ROWS
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1
        assert row["bytes"] > 0
        for setting in ("cpu_1thread", "cpu_all"):
            assert 0 < row[f"{setting}_p50_ms"] <= row[f"{setting}_p90_ms"]
            assert row[f"{setting}_throughput_per_s"] > 0
    teacher = rows["teacher"]
    assert teacher["size_ratio"] == 1 and teacher["drop_points"] == 0
    # ONNX Runtime's INT8 stores 8-bit weights; ModelPruning's zeros stay in a dense file of the same layout.
    assert rows["teacher ORT INT8"]["bytes"] < teacher["bytes"] / 2
    assert abs(rows["teacher ModelPruning 50%"]["bytes"] - teacher["bytes"]) < 0.05 * teacher["bytes"]
    # torch-pruning removed channels (a smaller dense file); NNCF stores 8-bit weights.
    assert rows["teacher torch-pruning 50% + ORT INT8"]["bytes"] < rows["teacher ORT INT8"]["bytes"]
    assert rows["teacher NNCF INT8"]["bytes"] < teacher["bytes"] / 2
    assert {rows[name]["runtime"] for name in ROWS} == {"ONNX Runtime", "OpenVINO"}
    checks = {check["name"]: check for check in payload["checks"]}
    assert "lowend Pareto-dominates teacher NNCF INT8" in checks and "lowend within 1 point of the teacher" in checks
    assert checks["export ships a model for every tier"]["passed"] and payload["unshipped"] == []
    assert all(isinstance(check["passed"], bool) and check["detail"] for check in checks.values())
    floor = payload["floor"]
    assert floor["lowend_macs"] > 0 and 0 < floor["lowend_floor_ms"] < rows["tierkit lowend"]["cpu_1thread_p50_ms"]
    assert set(payload["stages"]) >= {
        "teacher",
        "tier lowend: distil, prune, quantize",
        "export: three tiers, profiled",
    }
    loop = payload["loop"]
    assert loop["lightning_steps_per_s"] > 0 and loop["plain_steps_per_s"] > 0
    assert loop["kd_epoch_s_cache"] > 0 and loop["kd_epoch_s_no_cache"] > 0


@pytest.mark.slow
def test_quick_compare_writes_table_and_plot(quick):
    out, _ = quick
    table = (out / "compare.md").read_text()
    assert table.count("\n| tierkit ") == 3 and "| teacher ModelPruning 50% |" in table
    assert re.search(r"\| lowend Pareto-dominates teacher ORT INT8 \| (PASS|MISS) \|", table)
    assert "| **whole pipeline** |" in table and "Hardware floor, one thread" in table
    assert "Lightning distillation steps/s" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_mode_refuses_to_overwrite_the_readme_or_results():
    result = run_compare("--quick", "--readme")
    assert result.returncode == 2
    assert "--quick needs --out" in result.stderr


def readme_comparison() -> tuple[str, str]:
    """The README's comparison block, and the results file it was written from (without its extension)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- compare:start -->\n", 1)[1].split("\n<!-- compare:end -->", 1)[0]
    # The block ends with its plot, benchmarks/results/compare[_<data>].png: the table beside it is the source.
    plot = re.search(r"\(benchmarks/results/(compare[\w-]*)\.png\)", block)
    assert plot, "the README's comparison block names no plot"
    return block, plot.group(1)


def test_readme_comparison_is_the_scripts_latest_output():
    block, name = readme_comparison()
    table = (REPO / "benchmarks" / "results" / f"{name}.md").read_text().rstrip("\n")
    assert block.startswith(table)


@pytest.mark.parametrize("tier", ["highend", "midrange", "lowend"])
def test_each_tiers_fashion_mnist_experiment_is_the_readme_comparisons_run_of_that_tier(tmp_path, tier):
    """experiment=fashion_mnist_<tier> composes to what the README's comparison trained as that tier (its data
    and --tier-overrides), so one override reproduces the row. Only the run's name may differ, and a callback
    the comparison removed (~callbacks.pruning) is null in the experiment."""
    from benchmarks.compare import overrides_for_tier

    compared = json.loads((REPO / "benchmarks" / "results" / f"{readme_comparison()[1]}.json").read_text())
    own = overrides_for_tier(tier, compared["tier_overrides"])
    from_comparison = OmegaConf.to_container(compose_train(tmp_path, f"data={compared['data']}", f"tier={tier}", *own))
    from_experiment = OmegaConf.to_container(compose_train(tmp_path, f"experiment=fashion_mnist_{tier}"))
    assert from_experiment.pop("task_name") == f"fashion_mnist_{tier}"
    from_comparison.pop("task_name")
    removed = [o.removeprefix("~callbacks.") for o in own if o.startswith("~callbacks.")]
    assert [from_experiment["callbacks"].pop(name) for name in removed] == [None] * len(removed)
    assert from_experiment == from_comparison


def test_the_forced_qat_run_trains_the_mobilenet_student_it_names(tmp_path):
    """The forced QAT run names a MobileNetV2 student, which only student=scratch builds: under the default
    student=from_teacher, validation refuses the run's model.student overrides."""
    from benchmarks.quantization import FORCED_QAT

    cfg = compose_train(tmp_path, *FORCED_QAT)
    assert cfg.student.init == "scratch"
    assert cfg.model.student._target_ == "tierkit.models.MobileNetV2"
    assert cfg.quantization.escalation.enabled is False


@pytest.mark.slow
def test_quick_memory_records_every_epoch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", MEMORY, "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp_path / "memory.json").read_text())
    assert payload["mode"] == "quick" and "CPU:" in payload["machine"]
    assert [r["epoch"] for r in payload["records"]] == list(range(1, payload["epochs"] + 1))
    for record in payload["records"]:
        assert 0 < record["rss_mib"] <= record["peak_rss_mib"] and record["objects"] > 0
        assert 0 < record["rss_anon_mib"] + record["rss_file_mib"] <= record["rss_mib"] + 0.05
        assert record["malloc_in_use_mib"] > 0
    assert payload["rss_mib_end_of_warmup"] > 0 and payload["rss_mib_last"] > 0 and payload["wall_seconds"] > 0
    assert payload["rss_mib_last"] - payload["rss_mib_end_of_warmup"] == pytest.approx(
        payload["rss_growth_mib"], abs=0.01
    )
    flat = payload["rss_median_slope_mib_per_epoch"] < MAX_SLOPE_MIB_PER_EPOCH
    flat = flat and payload["rss_projected_growth_mib"] < MAX_GROWTH * payload["rss_mib_end_of_warmup"]
    assert payload["verdict"] == ("no growth" if flat else "GROWS")
    table = (tmp_path / "memory.md").read_text()
    assert "| RSS at the end of warm-up (epoch 2) |" in table and f"Verdict: **{payload['verdict']}**" in table
    assert payload["verdict"] in result.stdout
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quantization_targets_pass_and_miss_at_their_limits():
    from benchmarks.quantization import target_line

    fp32 = {"bytes": 1000, "onnx_test_acc": 0.986, "latency_ms_p50": 0.5}
    small = {"model": "teacher", "precision": "int8 PTQ", "bytes": 300, "onnx_test_acc": 0.981, "latency_ms_p50": 0.25}
    assert target_line(small, fp32).count("PASS") == 3
    large = {**small, "model": "lowend student", "bytes": 301, "onnx_test_acc": 0.980, "latency_ms_p50": 0.6}
    line = target_line(large, fp32)
    assert "size 0.3010x MISS" in line and "drop +0.60 points MISS" in line and "faster" not in line


def test_derived_student_benchmark_counts_epochs_to_a_target():
    from benchmarks.derived_student import epochs_cell, first_epoch_reaching

    assert first_epoch_reaching([0.5, 0.7, 0.9], 0.7) == 2
    assert first_epoch_reaching([0.5, 0.6], 0.7) is None
    assert first_epoch_reaching([0.9, 0.5, 0.8], 0.7, from_epoch=2) == 3
    assert epochs_cell([2, 4, None]) == "3.0 ± 1.4 (1 of 3 never)"


def test_a_derived_student_run_of_some_tiers_keeps_its_own_results_file():
    from argparse import Namespace

    from benchmarks.derived_student import derived_results_name

    every = Namespace(tiers=["lowend", "highend", "midrange"], overrides=["data=fashion_mnist"])
    assert derived_results_name(every) == "derived_student_fashion_mnist"
    some = Namespace(tiers=["midrange", "highend"], overrides=["data=fashion_mnist"])
    assert derived_results_name(some) == "derived_student_fashion_mnist_midrange_highend"
    assert derived_results_name(Namespace(tiers=["lowend"], overrides=[])) == "derived_student_lowend"


def test_the_command_a_result_records_runs_again_with_the_same_arguments(monkeypatch):
    import shlex
    import sys

    from benchmarks.common import command_line, tiers_and_seeds

    recorded = command_line("derived_student", "--tiers", "midrange", "--seeds", "1", "2", overrides=["data=mnist1d"])
    monkeypatch.setattr(sys, "argv", shlex.split(recorded)[2:])
    again = tiers_and_seeds("doc")
    assert (again.tiers, again.seeds, again.overrides) == (["midrange"], [1, 2], ["data=mnist1d"])
    assert command_line("pruning", "--target", "0.5") == "python -m benchmarks.pruning --target 0.5"


def test_a_stopped_compare_reuses_finished_runs_and_retrains_unfinished_ones(tmp_path, monkeypatch):
    from tierkit.run_folder import ModelSummary, RunFolder, RunMetrics

    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    student = ModelSummary("SmallCNN", 0.9, params=1, macs=1, size_bytes=1)
    RunFolder(finished).write_metrics(RunMetrics(tier="lowend", seed=1, epochs=1, student=student, checkpoints={}))
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"half an epoch")
    trained = []
    monkeypatch.setattr(common, "train_with", lambda overrides, out: trained.append(out) or {"trained": True})
    assert common.finished_or_train(["seed=1"], finished)["student"]["test_acc"] == 0.9
    assert common.finished_or_train(["seed=1"], stopped) == {"trained": True}
    assert trained == [stopped] and not (stopped / "checkpoints").exists()


def test_a_stopped_compare_makes_only_the_peer_rows_it_lacks(tmp_path):
    from benchmarks.compare import RowRecord

    made = []

    def make(name):
        def write():
            made.append(name)
            path = tmp_path / f"{name}.onnx"
            path.write_bytes(b"model")
            return path, f"note of {name}"

        return write

    first = RowRecord(tmp_path)
    first.row("a", make("a"))
    first.row("b", make("b"))
    (tmp_path / "b.onnx").unlink()  # a row whose file is gone is made again
    again = RowRecord(tmp_path)
    assert [again.row(name, make(name)) for name in ("a", "b", "c")] == [tmp_path / f"{n}.onnx" for n in "abc"]
    assert made == ["a", "b", "b", "c"]
    assert RowRecord(tmp_path).notes == {name: f"note of {name}" for name in "abc"}


def test_a_tier_that_ships_nothing_is_compared_by_the_variant_closest_to_shipping():
    from benchmarks.compare import best_effort

    def variant(name, precision, accuracy, failed):
        checks = {"accuracy": "accuracy" not in failed, "size": "size" not in failed, "latency": True}
        return {
            "name": name,
            "precision": precision,
            "allowed_precisions": ["fp32", "int8"],
            "accuracy": accuracy,
            "bytes": 100,
            "checks": checks,
        }

    variants = [
        variant("fp16", "fp16", 0.95, ["accuracy"]),  # most accurate, but a precision the tier does not ship
        variant("fp32", "fp32", 0.94, ["accuracy", "size"]),
        variant("int8", "int8", 0.93, ["accuracy"]),
    ]
    assert best_effort(variants)["name"] == "int8"


def test_tier_overrides_name_their_own_tier_runs_and_results():
    from benchmarks.common import override_name

    overrides = ["student=from_teacher", "callbacks.pruning.mode=budget"]
    assert override_name("tiers", overrides) == "tiers_from_teacher_budget"
    assert override_name("compare_fashion_mnist", []) == "compare_fashion_mnist"
    assert override_name("tiers", ["model@model.student=mlp"]) == "tiers_mlp"


def test_a_tier_override_with_a_tier_in_front_reaches_that_tier_alone():
    from benchmarks.compare import overrides_for_tier, tier_overrides_name

    given = ["trainer.max_epochs=30", "lowend:model=separable", "lowend:~callbacks.pruning", "+x=${oc.env:HOME}"]
    assert overrides_for_tier("lowend", given) == [
        "trainer.max_epochs=30",
        "model=separable",
        "~callbacks.pruning",
        "+x=${oc.env:HOME}",
    ]
    assert overrides_for_tier("highend", given) == ["trainer.max_epochs=30", "+x=${oc.env:HOME}"]
    assert tier_overrides_name("tiers", given[:3]) == "tiers_30_lowend-separable_lowend-callbacks-pruning"


def test_torch_pruning_fine_tunes_for_the_epochs_lowend_trains_for(tmp_path):
    from benchmarks.compare import lowend_epochs

    tier_default = lowend_epochs(tmp_path, [], [])
    assert lowend_epochs(tmp_path, [], ["highend:trainer.max_epochs=3"]) == tier_default
    assert lowend_epochs(tmp_path, [], ["lowend:trainer.max_epochs=40"]) == 40
    assert lowend_epochs(tmp_path, [], ["trainer.max_epochs=7"]) == 7


def test_the_cache_pass_cell_says_when_the_cache_was_off():
    from benchmarks.compare import one_off_pass

    assert one_off_pass({"cache_used": True, "fit_start_s_cache": 3.5, "fit_start_s_no_cache": 1.25}) == "2.25"
    # Augmented data turns the cache off: the two fit starts differ by noise only, never a figure for the pass.
    assert one_off_pass({"cache_used": False, "fit_start_s_cache": 1.0, "fit_start_s_no_cache": 1.004}) == (
        "none (cache off)"
    )


def test_every_pruning_benchmark_variant_is_a_valid_training_config(tmp_path):
    from benchmarks.common import SCRATCH_STUDENT
    from benchmarks.pruning import VARIANTS, overrides_for

    for variant in VARIANTS:
        cfg = compose_train(tmp_path, SCRATCH_STUDENT, *overrides_for(variant, 0.5, 0.6, 8))
        validate_train_config(cfg)


def test_distillation_benchmark_keeps_each_training_in_its_work_folder_and_reports_the_gain(tmp_path, monkeypatch):
    import sys

    from benchmarks import distillation

    trained, saved = [], {}

    def fake_train(overrides, out):
        trained.append((out, overrides))
        kd = "experiment=no_kd" not in overrides
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        test, val = (0.92, 0.93) if kd else (0.91, 0.925)
        student = {"test_acc": test + seed / 1000, "val_acc_best": val, "params": 13_186, "macs": 1, "agreement": 0.9}
        teacher = {"params": 288_170, "macs": 2, "test_acc": 0.94}
        quantization = {"path": "tuned", "ptq": {"test_acc": 0.5}, "tuned": {"test_acc": student["test_acc"] - 0.001}}
        metrics = {"student": student, "teacher": teacher, "train_seconds": 300.0, "quantization": quantization}
        return metrics if seed == 1 or kd else {k: v for k, v in metrics.items() if k != "quantization"}

    monkeypatch.setattr(distillation, "finished_or_train", fake_train)
    monkeypatch.setattr(distillation, "save_results", lambda name, payload, lines: saved.update(name=name, lines=lines))
    work = tmp_path / "work"
    argv = ["distillation", "--tiers", "lowend", "--seeds", "1", "2", "--work", str(work), "--", "data=mnist1d"]
    monkeypatch.setattr(sys, "argv", argv)
    distillation.main()
    folders = [work / f"lowend-{mode}-{seed}" for seed in (1, 2) for mode in ("kd", "alone")]
    assert [out for out, _ in trained] == folders
    assert all("data=mnist1d" in overrides and "~callbacks.pruning" in overrides for _, overrides in trained)
    assert saved["name"] == "distillation_mnist1d"
    row = "| lowend | 13,186 | 1 | 94.00% | 92.15 ± 0.07 | 91.15 ± 0.07 | +1.00 | +0.50 | 92.05 ± 0.07 / - |"
    assert row in saved["lines"]
    assert "--work" not in saved["lines"][1]
    assert saved["lines"][-1].endswith(
        "4 runs, 20 min of training (runs an earlier command finished in --work are reused)."
    )


def test_distillation_settings_are_chosen_on_validation_and_only_the_choice_meets_the_test_split(monkeypatch):
    from benchmarks import distill_settings

    # Validation prefers T=8; the test split would prefer T=2. The choice must follow validation.
    validation = {"alone": 0.90, "t2_a0.5": 0.91, "t8_a0.5": 0.93}
    test = {"alone": 0.89, "t2_a0.5": 0.95, "t8_a0.5": 0.90}
    trained = []

    def fake_run(overrides, out):
        slug, seed = out.name.rsplit("_", 1)
        trained.append((slug, int(seed)))
        student = {"val_acc_best": validation[slug], "test_acc": test[slug] + int(seed) / 1000}
        student |= {"architecture": "SmallCNN", "params": 41_110}
        teacher = {} if slug == "alone" else {"teacher": {"test_acc": 0.93}}  # a run without KD loads no teacher
        return {"student": student, "tier": "midrange", **teacher}

    monkeypatch.setattr(distill_settings, "finished_or_train", fake_run)
    args = distill_settings.argparse.Namespace(temperatures=[2.0, 8.0], alphas=[0.5], seeds=[1, 2], overrides=[])
    result = distill_settings.measure(args, distill_settings.Path("work"))
    assert result["chosen"] == "T=8, alpha=0.5"
    assert sorted(trained) == [("alone", 1), ("alone", 2), ("t2_a0.5", 1), ("t8_a0.5", 1), ("t8_a0.5", 2)]
    assert result["gains"] == pytest.approx([0.01, 0.01])
    lines = distill_settings.table(args, result)
    assert "| T=8, alpha=0.5 (chosen) | 93.00 |" in lines
    assert lines[-1].startswith("Distillation gain on test: +1.00 points") and lines[-1].endswith("PASS.")


def test_distillation_settings_refuse_alpha_zero_in_the_grid(monkeypatch, capsys):
    from benchmarks import distill_settings

    monkeypatch.setattr(sys, "argv", ["distill_settings", "--alphas", "0", "0.5"])
    with pytest.raises(SystemExit) as stopped:
        distill_settings.parse_args()
    assert stopped.value.code == 2
    assert "alpha 0 is the student alone" in capsys.readouterr().err


def test_teacher_epochs_are_chosen_on_validation_and_only_the_choice_is_read_on_test(monkeypatch):
    from benchmarks import teacher_recipe

    # 30 epochs wins on validation, 15 would win on test; 45 ties 30 on validation and trains longer.
    scores = {15: (0.930, 0.940), 30: (0.936, 0.934), 45: (0.936, 0.950)}

    def fake_teacher(epochs, work, extra):
        val, test = scores[epochs]
        return {"epochs": epochs, "val_acc": val, "test_acc": test, "train_seconds": 60.0 * epochs}

    monkeypatch.setattr(teacher_recipe, "teacher_after", fake_teacher)
    args = teacher_recipe.argparse.Namespace(epochs=[15, 45, 30], overrides=["data=fashion_mnist"])
    result = teacher_recipe.measure(args, teacher_recipe.Path("work"))
    assert result["chosen_epochs"] == 30 and result["chosen_test_acc"] == 0.934
    lines = teacher_recipe.table(args, result)
    assert "| 30 (chosen) | 93.60 | 1,800 |" in lines
    assert not any("94.00" in line or "95.00" in line for line in lines)  # no other teacher's test accuracy
    assert lines[-1] == "Target: the teacher >= 93.5% on test: MISS."


def test_results_with_other_settings_never_overwrite_the_defaults():
    from benchmarks.common import results_name

    assert results_name("distillation", []) == "distillation"
    wider = ["data=fashion_mnist", "tier.student_width=0.25"]
    assert results_name("distillation", wider) == "distillation_fashion_mnist_tier-student_width-0-25"
    assert results_name("distillation", ["tier.student_width=0.25"]) == "distillation_tier-student_width-0-25"


def test_results_from_an_existing_run_are_named_after_the_data_it_was_trained_on(tmp_path):
    import torch

    from benchmarks.common import data_overrides_of, results_name

    def run_trained_on(name: str, target: str):
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        torch.save({"tierkit": {"config": {"data": {"_target_": target}}}}, folder / "checkpoints" / "best.ckpt")
        return folder

    default = run_trained_on("default", "tierkit.data.MNIST5kDataModule")
    fashion = run_trained_on("fashion", "tierkit.data.FashionMNISTDataModule")
    assert results_name("finetune", data_overrides_of(default)) == "finetune"
    assert results_name("export", data_overrides_of(fashion)) == "export_fashion_mnist"
    with pytest.raises(SystemExit, match="no conf/data option"):
        data_overrides_of(run_trained_on("own", "mypackage.MyData"))


def test_quantization_lists_each_escalation_step_and_takes_an_existing_sweep_as_trained(tmp_path, monkeypatch):
    from benchmarks.common import tier_run_folders
    from benchmarks.quantization import escalation_lines, main

    steps = [
        {
            "step": "post-training",
            "recipe": "minmax, per-channel",
            "val_acc": 0.9,
            "drop": 0.012,
            "bytes": 2048,
            "meets_budget": False,
        },
        {
            "step": "weight bits",
            "recipe": "minmax, per-channel, 7-bit weights",
            "val_acc": 0.908,
            "drop": 0.004,
            "bytes": 2048,
            "meets_budget": True,
        },
    ]
    table = escalation_lines([{"model": "lowend student", "steps": steps}])
    assert table[2:] == [
        "| lowend student | post-training | minmax, per-channel | 90.00% | 1.20 | 2.0 KiB | no |",
        "| lowend student | weight bits | minmax, per-channel, 7-bit weights | 90.80% | 0.40 | 2.0 KiB | yes |",
    ]
    with pytest.raises(SystemExit, match=r"no finished run of tier\(s\) \['highend', 'midrange', 'lowend'\]"):
        tier_run_folders(tmp_path)
    monkeypatch.setattr("sys.argv", ["quantization", "--sweep", str(tmp_path), "data=fashion_mnist"])
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 2


def test_students_are_checked_against_the_lowend_targets_at_their_limits(tmp_path):
    from benchmarks.common import DATASET_TARGETS
    from benchmarks.students import run_rows, target_checks

    at_limits = {"test_acc": 0.925, "params": 20_000, "smaller": 20.0, "speedup": 8.0, "floor_multiple": 3.0}
    assert all("PASS" in line for line in target_checks(at_limits, DATASET_TARGETS["fashion_mnist"]))
    over = {"test_acc": 0.9249, "params": 20_001, "smaller": 19.9, "speedup": 7.9, "floor_multiple": 3.1}
    missed = target_checks(over, DATASET_TARGETS["fashion_mnist"])
    assert len(missed) == 4 and all("MISS" in line for line in missed)
    assert target_checks(over, None) == ["within 3x of the hardware floor: MISS (3.1x)"]
    with pytest.raises(SystemExit, match=r"no finished, quantized run of train\.py there"):
        run_rows([tmp_path])


def test_students_requantize_a_run_with_its_first_layer_in_float_and_its_own_settings(tmp_path):
    from benchmarks.students import float_first_layer_row
    from tierkit.data import SyntheticDataModule
    from tierkit.models import SeparableCNN
    from tierkit.onnxio import export_onnx
    from tierkit.onnxio.verify import float_compute_ops

    shape = (1, 16, 16)
    data = SyntheticDataModule(input_shape=list(shape), num_classes=4, mean=[0.5], std=[0.3], num_samples=128)
    fp32 = export_onnx(SeparableCNN(shape, 4, width=0.375).eval(), tmp_path / "fp32.onnx", shape)
    settings = {"samples": 64, "batch_size": 16, "method": "minmax", "seed": 0}
    weights = {"reduce_range": True, "per_channel": True}
    fp32_row = {"run": "r", "precision": "fp32", "file": str(fp32), "quantization": {**settings, **weights}}
    row = float_first_layer_row(fp32_row, data, tmp_path / "int8.onnx")
    assert row["precision"] == "int8 (ptq, first layer float)" and row["bytes"] < fp32.stat().st_size
    assert len(float_compute_ops(tmp_path / "int8.onnx")) == 1, "only the first layer computes in float"
    assert 0 <= row["val_acc"] <= 1 and 0 <= row["test_acc"] <= 1


def test_a_peer_fine_tune_is_the_same_whatever_the_process_drew_before(tmp_path):
    import torch
    from torch.nn.utils import parameters_to_vector

    from benchmarks.baselines import fit_with_labels
    from tierkit.models.build import build_student
    from tierkit.utils.instantiate import instantiate

    cfg = compose_train(tmp_path, *FAST)
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    start = build_student(cfg)
    weights = []
    for draw in (0, 123):
        torch.manual_seed(draw)  # what an earlier row or training left in the generators
        model = fit_with_labels(copy.deepcopy(start), datamodule, epochs=1, lr=1e-2)
        weights.append(parameters_to_vector(model.parameters()).detach())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], parameters_to_vector(start.parameters()).detach())


def test_cpu_time_stolen_by_other_guests_is_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 50 0 25 400 5 0 2 17 3 0\n")
    assert common.cpu_jiffies(stat) == (35, 1000)
    assert common.cpu_jiffies(tmp_path / "absent") is None
    assert common.stolen_percent((35, 1000), (135, 2000)) == 10.0
    assert common.stolen_percent(None, (135, 2000)) is None
    assert common.stolen_percent((35, 1000), (35, 1000)) is None


def test_results_end_with_the_cpu_time_stolen_while_the_benchmark_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "stolen_percent", lambda: 1.5)
    written = common.save_results("probe", {"rows": []}, ["| a |"], tmp_path)
    assert (tmp_path / "probe.md").read_text().splitlines() == written
    assert written[0] == "| a |" and "stolen" in written[-1] and "1.50%" in written[-1]
    assert json.loads((tmp_path / "probe.json").read_text())["cpu_stolen_percent"] == 1.5
    monkeypatch.setattr(common, "stolen_percent", lambda: None)
    assert common.save_results("bare", {}, ["| a |"], tmp_path) == ["| a |"]
