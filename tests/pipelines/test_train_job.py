"""End to end through real Ray (local), real MLflow (SQLite) and real Parquet: the `plexus` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import PLEXUS, evaluate_saved_model, plexus
from plexus.pipelines.data.synth import synth_criteo


def _config(tmp: Path, raw: Path, *, epochs: int = 3) -> Path:
    config = tmp / "job.yaml"
    config.write_text(
        f"""
name: e2e
data: {{format: criteo, path: {raw}, min_count: 2, split: {{valid: 0.15, test: 0.15, seed: 1}}}}
model: {{backbone: deepfm, hidden: [64, 32]}}
embedding: {{method: full, dim: 8}}
train: {{batch_size: 512, epochs: {epochs}, lr: 0.003, patience: 5, threads_per_worker: 1}}
tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: e2e}}
output: {tmp / "runs"}
"""
    )
    return config


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("e2e")
    raw = synth_criteo(tmp / "criteo.tsv", rows=12_000, seed=3)
    config = _config(tmp, raw)
    done = plexus("run", str(config), cwd=tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp, config, done


def test_run_trains_a_model_that_learned_the_planted_signal(finished_run) -> None:
    tmp, _, done = finished_run
    lines = done.stdout.strip().splitlines()
    metrics_path = Path(lines[-1])
    assert metrics_path.name == "metrics.json" and metrics_path.is_file()
    assert any(line.startswith("[plexus] MLflow run: ") for line in lines)
    metrics = json.loads(metrics_path.read_text())
    assert metrics["test_auc"] > 0.70, metrics  # a broken model sits near 0.5
    assert 0 < metrics["test_logloss"] < 0.69
    assert len(metrics["history"]) == 3
    assert (metrics_path.parent / "training_curves.png").stat().st_size > 1000
    assert "epoch 3/3" in done.stdout + done.stderr  # per-epoch progress lines


def test_run_is_tracked_in_mlflow(finished_run) -> None:
    import mlflow

    tmp, _, done = finished_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    parent_id = next(line for line in done.stdout.splitlines() if "MLflow run:" in line).split()[-1]
    parent = client.get_run(parent_id)
    assert parent.data.metrics["test_auc"] > 0.7
    assert parent.data.params["model.backbone"] == "deepfm"
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    names = {r.info.run_name for r in children}
    assert names == {"e2e-ingest", "e2e-train"}
    train_run = next(r for r in children if r.info.run_name == "e2e-train")
    history = client.get_metric_history(train_run.info.run_id, "valid_auc")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "model")}
    assert {"model/model.pt", "model/job.yaml", "model/feature_spec.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(train_run.info.run_id, "plots")}
    assert "plots/training_curves.png" in plots


def test_evaluate_reproduces_the_test_metrics(finished_run) -> None:
    tmp, _, done = finished_run
    metrics_path = Path(done.stdout.strip().splitlines()[-1])
    metrics = json.loads(metrics_path.read_text())
    evaluated = evaluate_saved_model(tmp, metrics_path)
    assert evaluated["test_auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_rerun_reuses_finished_work(finished_run) -> None:
    tmp, config, done = finished_run
    again = plexus("run", str(config), cwd=tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing finished training run" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == done.stdout.strip().splitlines()[-1]


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    out = plexus("run", "synthetic", "train.epochz=3", cwd=tmp_path)
    assert out.returncode == 2
    assert "train.epochz" in out.stderr


@pytest.mark.reliability("fault", "training crash: the rerun resumes from the last checkpoint")
@pytest.mark.slow  # 70 s; the killed-driver and killed-worker tests (slow) resume as well
def test_training_resumes_from_the_last_checkpoint_after_a_crash(tmp_path: Path) -> None:
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=20_000, seed=4)
    config = _config(tmp_path, raw, epochs=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*PLEXUS, "train", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    seen = ""
    while time.monotonic() < deadline:  # kill the whole job once the first epoch is checkpointed
        line = proc.stdout.readline()
        seen += line
        if "epoch 1/3" in line or not line:
            break
    assert "epoch 1/3" in seen, seen[-3000:]
    time.sleep(3)  # let the checkpoint land
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = plexus("train", str(config), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert "resumed after epoch" in text, text[-3000:]
    assert "epoch 1/3" not in text
    metrics = json.loads(Path(resumed.stdout.strip().splitlines()[-1]).read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("wait", [1, 2])
def test_a_plateau_cuts_the_learning_rate_and_returns_to_the_best_weights(
    tmp_path: Path, wait: int
) -> None:
    """FuxiCTR's reduce_lr_on_plateau: after `reduce_lr_patience` epochs without a better
    validation AUC the learning rates are cut by the factor and training goes on from the best
    weights; the count restarts after each cut."""
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=4_000, seed=5)
    config = _config(tmp_path, raw, epochs=8)
    done = plexus("run", str(config), "train.lr=0.05", "train.reduce_lr_on_plateau=0.1",
                  f"train.reduce_lr_patience={wait}", "train.patience=7", "use_ray=false",
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    history = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())["history"]
    best, bad, cuts = float("-inf"), 0, 0
    for before, after in zip(history, history[1:], strict=False):
        bad = bad + 1 if before["valid_auc"] <= best else 0
        best = max(best, before["valid_auc"])
        cut = bad > 0 and bad % wait == 0
        assert after["lr"] == pytest.approx(before["lr"] * (0.1 if cut else 1.0))
        cuts += cut
    assert history[0]["lr"] == pytest.approx(0.05) and cuts >= 1  # lr 0.05 overshoots early
    assert (
        done.stdout.count("back to the best weights")
        + done.stderr.count("back to the best weights")
        == cuts
    )
