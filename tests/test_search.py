"""Optuna searches as a user launches them: multi-objective, a crashing trial, and resuming the study."""

import sqlite3

import pytest
import yaml

from conftest import run_cli

# Every test here runs the entry points as subprocesses: the full suite's tier (pytest -m 'not slow' skips it).
pytestmark = pytest.mark.slow

SEARCH = [
    "-m",
    "hparams_search=pareto",
    "data=synthetic",
    "model.teacher.base_channels=8",
    "student=scratch",
    "model.student.base_channels=8",
    "~callbacks.progress",
    "debug=tiny",
    "quantization=ptq",
    "trainer.detect_anomaly=false",
    "hydra.sweeper.sampler.population_size=2",
    # With these parameters, seed 0's first four trials draw both learning rates (seed 1's draw only 1e30).
    "hydra.sweeper.sampler.seed=0",
    # A learning rate of 1e30 makes the loss NaN: those trials crash, as real ones sometimes do.
    "optimizer.lr=choice(0.003,1e30)",
]


def _trial_states(sweep) -> list[str]:
    with sqlite3.connect(sweep / "optuna.db") as db:
        return [state for (state,) in db.execute("SELECT state FROM trials ORDER BY number")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    sweep = root / "multirun" / "pareto"
    result = run_cli(root, *SEARCH, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}", timeout=600)
    return root, sweep, result


def test_multi_objective_search_survives_a_crashing_trial_and_reports_its_pareto_set(study):
    _, sweep, result = study
    assert result.returncode == 0, result.stderr[-3000:]
    states = _trial_states(sweep)
    assert len(states) == 4 and "FAIL" in states and "COMPLETE" in states
    assert "the training loss became nan" in result.stdout + result.stderr
    solutions = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["solutions"]
    assert solutions, "at least one completed trial is on the Pareto front"
    for solution in solutions:
        accuracy, int8_bytes = solution["values"]
        assert 0 <= accuracy <= 1 and int8_bytes > 0
        assert solution["params"]["optimizer.lr"] == 0.003, "only trials that finished can be Pareto-optimal"


def test_rerunning_in_the_same_sweep_folder_resumes_the_study(study):
    root, sweep, _ = study
    result = run_cli(root, *SEARCH, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_trial_states(sweep)) == 6, "the two new trials join the four stored ones"
    finished = _trial_states(sweep).count("COMPLETE")
    assert len(list(sweep.glob("*/metrics.json"))) == finished, "every finished trial keeps its own folder"
    assert "Using an existing study" in result.stdout + result.stderr


def test_a_multi_objective_metric_missing_from_the_run_is_a_clear_error(tmp_path):
    overrides = [o for o in SEARCH if o not in ("quantization=ptq", "optimizer.lr=choice(0.003,1e30)")]
    sweep = tmp_path / "multirun" / "off"
    result = run_cli(tmp_path, *overrides, "quantization=off", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}")
    assert "optimized_metric names ['student.int8_bytes']" in result.stdout + result.stderr
    assert _trial_states(sweep) == ["FAIL"]
