"""`plexus tune` end to end: real local Ray Tune, real MLflow (SQLite in tmp), the real loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import PLEXUS, plexus
from plexus.pipelines.config import CONFIGS_DIR, bundled_config, load_job_config
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.tune import load_space, parse_space
from plexus.pipelines.tune.job import check_space, rank_configurations
from plexus.platform.errors import ConfigError


def _job(tmp: Path, raw: Path, *, epochs: int, lr: float = 0.001) -> Path:
    config = tmp / "job.yaml"
    config.write_text(
        f"""
name: tune
data: {{format: criteo, path: {raw}, min_count: 2, split: {{valid: 0.2, test: 0.2, seed: 1}}}}
model: {{backbone: lr}}
embedding: {{method: full, dim: 4}}
train: {{batch_size: 512, epochs: {epochs}, lr: {lr}, patience: 5}}
tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: tune}}
output: {tmp / "runs"}
"""
    )
    return config


def _space(tmp: Path, text: str) -> Path:
    path = tmp / "space.yaml"
    path.write_text(text)
    return path


def test_space_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="space.train.lr: unknown kind 'logunif'"):
        parse_space({"space": {"train.lr": {"logunif": [0.1, 1]}}})
    with pytest.raises(ConfigError, match="loguniform needs low > 0"):
        parse_space({"space": {"train.lr": {"loguniform": [0, 1]}}})
    with pytest.raises(ConfigError, match="unknown key 'trails'"):
        parse_space({"trails": 3, "space": {"train.lr": {"choice": [0.1]}}})
    space = parse_space({"trials": 3, "space": {"model.hidden": {"choice": [[8], [16, 16]]}}})
    assert space.trials == 3 and space.params[0].values == ([8], [16, 16])


def test_unknown_config_key_in_the_space_fails_before_any_work(tmp_path: Path) -> None:
    config = _job(tmp_path, tmp_path / "missing.tsv", epochs=1)
    space = _space(tmp_path, "space: {train.lrr: {choice: [0.1]}}\n")
    done = plexus("tune", str(config), "--space", str(space), cwd=tmp_path)
    assert done.returncode == 2
    assert "space.train.lrr" in done.stderr and "train.lrr" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "space_path", sorted((CONFIGS_DIR / "spaces").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_bundled_space_is_valid_for_its_datasets_config(space_path: Path) -> None:
    """`spaces/<dataset>[-<variant>].yaml`: every key and value applies to that dataset's
    bundled job, so the commands in the spaces' headers do not fail after Ray has started."""
    space = load_space(space_path)
    job = load_job_config(bundled_config(space_path.stem.split("-")[0]))
    check_space(job, space)


def test_rank_configurations_averages_seeds_and_sinks_failed_ones() -> None:
    def row(lr: float, seed: int, auc: float, status: str = "ok") -> dict:
        return {"config": {"train.lr": lr, "train.seed": seed}, "valid_auc": auc, "status": status}

    ranked = rank_configurations(
        [
            row(0.1, 0, 0.80),  # the luckiest single run, but the worse recipe on average
            row(0.1, 1, 0.60),
            row(0.01, 1, 0.74),
            row(0.01, 0, 0.72),
            row(0.5, 0, 0.95),
            row(0.5, 1, float("-inf"), status="error"),
        ]
    )
    assert [c["config"] for c in ranked] == [
        {"train.lr": 0.01},
        {"train.lr": 0.1},
        {"train.lr": 0.5},
    ]
    assert ranked[0]["valid_auc"] == pytest.approx(0.73)
    assert [t["config"]["train.seed"] for t in ranked[0]["trials"]] == [0, 1]
    assert ranked[2]["status"] == "error"


def test_repeats_and_a_searched_seed_are_exclusive() -> None:
    assert parse_space({"repeats": 3, "space": {"train.lr": {"choice": [0.1]}}}).repeats == 3
    with pytest.raises(ConfigError, match="space.train.seed: searched and repeated"):
        parse_space({"repeats": 2, "space": {"train.seed": {"grid": [0, 1]}}})
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        parse_space({"repeats": 0, "space": {"train.lr": {"choice": [0.1]}}})
    assert parse_space({"folds": 5, "space": {"train.lr": {"choice": [0.1]}}}).folds == 5
    with pytest.raises(ConfigError, match="folds must be >= 1"):
        parse_space({"folds": 0, "space": {"train.lr": {"choice": [0.1]}}})


def _tune_planted_lr(tmp: Path, runs: str) -> tuple[Any, Path, dict, dict]:
    """`plexus tune` of LR over lr 1e-5 / 0.05 on planted data, each run `runs` times (a
    `repeats:` or `folds:` line): the process, best.yaml's path and content, summary.json."""
    raw = synth_criteo(tmp / "criteo.tsv", rows=6000, seed=3)
    config = _job(tmp, raw, epochs=2)
    space = _space(tmp, f"{runs}\nspace:\n  train.lr: {{grid: [0.00001, 0.05]}}\n")
    done = plexus(
        "tune", str(config), "--space", str(space), "--trials", "1", cwd=tmp, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    best_path = Path(done.stdout.strip().splitlines()[-1])
    best = yaml.safe_load(best_path.read_text())
    assert best["train"]["lr"] == 0.05 and best["model"]["backbone"] == "lr"
    summary = json.loads((best_path.parent / "summary.json").read_text())
    return done, best_path, best, summary


def test_tune_finds_the_planted_learning_rate_on_the_mean_of_two_seeds(tmp_path: Path) -> None:
    """LR needs a large step to learn the planted weights in 2 epochs: 1e-5 stays at chance.
    Each learning rate runs with seeds 0 and 1; the selection and test figures are their means."""
    done, best_path, best, summary = _tune_planted_lr(tmp_path, "repeats: 2")
    assert best["train"]["seed"] == 0  # the job's own seed, not the last one tried
    assert (summary["trials"], summary["configurations"], summary["repeats"]) == (4, 2, 2)
    seeds = summary["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1] and seeds[0]["test_auc"] != seeds[1]["test_auc"]
    assert summary["best_valid_auc"] == pytest.approx(sum(s["valid_auc"] for s in seeds) / 2)
    assert summary["test_auc"] == pytest.approx(sum(s["test_auc"] for s in seeds) / 2)
    assert summary["best_valid_auc"] > 0.6 and summary["test_auc"] > 0.6
    trials = json.loads((best_path.parent / "trials.json").read_text())["trials"]
    assert {t["status"] for t in trials} == {"ok"}
    pairs = {(t["config"]["train.lr"], t["config"]["train.seed"]) for t in trials}
    assert pairs == {(0.00001, 0), (0.00001, 1), (0.05, 0), (0.05, 1)}
    assert min(t["valid_auc"] for t in trials) < 0.58  # the tiny step barely moved
    assert "mean valid_auc" in (best_path.parent / "trials.md").read_text()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = next(ln for ln in done.stdout.splitlines() if "MLflow run:" in ln).split()[-1]
    parent = client.get_run(parent_id)
    assert parent.data.metrics["test_auc"] == pytest.approx(summary["test_auc"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    trial_runs = [r for r in children if "plexus.trial" in r.data.tags]
    assert len(trial_runs) == 4 and {r.info.status for r in trial_runs} == {"FINISHED"}
    for run in trial_runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "valid_auc")]
        if float(run.data.params["train.lr"]) == 0.05:
            assert steps == [1, 2]  # the best configuration ran every epoch
            seed = int(run.data.params["train.seed"])
            assert run.data.metrics["test_auc"] == pytest.approx(seeds[seed]["test_auc"])
        else:
            assert steps in ([1], [1, 2])  # ASHA may stop the weak one after its first rung


@pytest.mark.slow  # 120-170 s; the repeats test above runs the same ranking on every change
def test_tune_cross_validates_each_configuration_over_folds(tmp_path: Path) -> None:
    """`folds: 2`: every learning rate trains on both folds (each its own ingest: disjoint
    validation rows, the same test rows), is ranked by the mean, and `best.yaml` keeps the job's
    own split."""
    done, _, best, summary = _tune_planted_lr(tmp_path, "folds: 2")
    assert best["data"]["split"].get("folds", 0) == 0 and best["data"]["split"].get("fold", 0) == 0
    assert (summary["trials"], summary["configurations"], summary["folds"]) == (4, 2, 2)
    runs = summary["seeds"]
    assert [r["fold"] for r in runs] == [0, 1]
    assert runs[0]["valid_auc"] != runs[1]["valid_auc"]  # validated on different rows
    assert summary["best_valid_auc"] == pytest.approx(
        (runs[0]["valid_auc"] + runs[1]["valid_auc"]) / 2
    )
    assert "(mean of 2 folds)" in done.stdout
    data = sorted((tmp_path / "runs" / "data").glob("tune-*"))
    folds = [
        json.loads((d / "manifest.json").read_text())
        for d in data
        if (d / "manifest.json").is_file()
    ]
    cross = [m for m in folds if m.get("config", {}).get("split", {}).get("folds") == 2]
    assert len(cross) == 2
    assert cross[0]["rows"]["test"] == cross[1]["rows"]["test"]


@pytest.mark.slow
def test_a_killed_tuning_resumes_and_keeps_finished_trials(tmp_path: Path) -> None:
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=20_000, seed=4)
    config = _job(tmp_path, raw, epochs=6)
    space = _space(
        tmp_path,
        "trials: 4\ncpus_per_trial: 2\nscheduler: {grace_period: 6}\n"
        "space:\n  train.lr: {loguniform: [0.001, 0.05]}\n",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*PLEXUS, "tune", str(config), "--space", str(space)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline, seen = time.monotonic() + 400, ""
    while time.monotonic() < deadline:  # kill once a trial finished and the next one started
        line = proc.stdout.readline()
        seen += line
        if seen.count("epoch 6/6") >= 1 and line.count("epoch 2/6") or not line:
            break
    assert "epoch 6/6" in seen, seen[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    tuner = next((tmp_path / "runs" / "tune").glob("tune-*")) / "tuner"
    before = sorted(p.name for p in tuner.glob("run_trial_*"))
    resumed = plexus("tune", str(config), "--space", str(space), cwd=tmp_path, timeout=1200)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-4000:]
    assert "resuming the tuning" in text
    after = sorted(p.name for p in tuner.glob("run_trial_*"))
    assert set(before) <= set(after) and len(after) == 4  # same trials, none sampled anew
    assert text.count("epoch 1/6") < 4  # the finished trial was not trained again
    trials = json.loads((tuner.parent / "trials.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials)

    # The best config is a job config `plexus run` takes as it is.
    best_path = Path(resumed.stdout.strip().splitlines()[-1])
    run = plexus("run", str(best_path), cwd=tmp_path, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads(Path(run.stdout.strip().splitlines()[-1]).read_text())
    assert metrics["test_auc"] > 0.6
