"""OptEmbed through the real job: three stages (trained in the job's process, `use_ray: false`;
the search's fitness evaluations on two local Ray actors), nested MLflow runs, a compact model
that loads back, and a crashed run that resumes at the first unfinished stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import evaluate_saved_model, plexus
from plexus.pipelines.data.synth import synth_criteo


@pytest.fixture(scope="module")
def optembed_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("optembed")
    raw = synth_criteo(tmp / "criteo.tsv", rows=10_000, seed=4)
    config = tmp / "job.yaml"
    config.write_text(
        f"""
name: oe
data: {{format: criteo, path: {raw}, min_count: 2, split: {{valid: 0.15, test: 0.15, seed: 1}}}}
model: {{backbone: deepfm, hidden: [32]}}
embedding:
  method: optembed
  dim: 8
  options: {{search_budget: 0.5, search: {{generations: 2, mutation: 3, crossover: 3, parents: 3}}}}
train: {{batch_size: 512, epochs: 2, lr: 0.003, patience: 5, threads_per_worker: 1, search_workers: 2}}
use_ray: false
tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: oe}}
output: {tmp / "runs"}
"""
    )
    done = plexus("run", str(config), cwd=tmp, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics_path = Path(done.stdout.strip().splitlines()[-1])
    return tmp, config, done, metrics_path


def test_the_three_stages_run_in_order_and_give_a_compact_model(optembed_run) -> None:
    _, _, done, metrics_path = optembed_run
    out = done.stdout + done.stderr
    order = [
        out.index(f"stage {i}/3 {name}")
        for i, name in enumerate(("supernet", "search", "retrain"), 1)
    ]
    assert order == sorted(order)
    assert "supernet: epoch 1/2" in out and "retrain: epoch 2/2" in out
    assert "search generation 2/2" in out
    metrics = json.loads(metrics_path.read_text())
    assert metrics["test_auc"] > 0.65, metrics  # the planted signal survives the pruning
    assert metrics["search.compact_fraction"] <= 0.5  # the search budget holds
    assert metrics["search.workers"] == 2 and metrics["search.fitness_evaluations"] >= 6
    assert metrics["search.kept_rows"] <= metrics["search.total_rows"]
    # The served size is the compact one (remaps included), below the float32 tables' size.
    assert metrics["embedding_bytes"] < 4 * metrics["embedding_params"] + 4 * 26 * 10_000
    assert {"supernet.best_valid_auc", "retrain.best_valid_auc", "retrain.seconds"} <= set(metrics)


def test_each_stage_is_a_nested_mlflow_run_of_the_training_run(optembed_run) -> None:
    import mlflow

    tmp, _, _, metrics_path = optembed_run
    run_id = json.loads(metrics_path.read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oe")
    runs = client.search_runs([experiment.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == run_id}
    assert set(children) == {"oe-supernet", "oe-search", "oe-retrain"}
    assert children["oe-search"].data.metrics["search_fitness"] > 0.6
    assert "valid_auc" in children["oe-retrain"].data.metrics  # per-epoch lines land in the stage


def test_the_saved_model_reloads_with_its_architecture(optembed_run) -> None:
    tmp, _, _, metrics_path = optembed_run
    metrics = json.loads(metrics_path.read_text())
    evaluated = evaluate_saved_model(tmp, metrics_path)
    assert evaluated["test_auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_a_crash_after_the_search_resumes_at_the_retrain_stage(optembed_run) -> None:
    tmp, config, _, metrics_path = optembed_run
    before = json.loads(metrics_path.read_text())
    train_dir = metrics_path.parent
    metrics_path.unlink()  # as if the job died during the retrain stage
    shutil.rmtree(train_dir / "stages" / "2-retrain")
    done = plexus("train", str(config), cwd=tmp, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout + done.stderr
    assert "stage 1/3 supernet: finished earlier, reused" in out
    assert "stage 2/3 search: finished earlier, reused" in out
    assert "retrain: epoch 1/2" in out and "supernet: epoch" not in out
    after = json.loads(metrics_path.read_text())
    assert after["search.compact_fraction"] == before["search.compact_fraction"]
    assert after["test_auc"] == pytest.approx(before["test_auc"], abs=0.01)


@pytest.mark.slow  # 37 s; the job above already searches on two Ray actors
def test_bench_search_times_one_worker_against_two_and_finds_the_same_widths(optembed_run) -> None:
    tmp, config, _, _ = optembed_run
    out = tmp / "bench-search"
    done = plexus("bench", "search", str(config), "--out", str(out), "--workers", "1,2", cwd=tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads((out / "results.json").read_text())
    assert [r["workers"] for r in rows] == [1, 2]
    assert all(r["same_result"] and r["evaluations"] >= 6 and r["seconds"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0 and len(rows[0]["widths"]) == 39  # one width per field
