"""DNIS through the real job: warm-up, search on validation batches, prune and retrain as
nested MLflow runs on local Ray, a compact model within the budget that loads back (slow:
`make test-slow`), and the frequency order of ingested vocabularies that DNIS's blocks use."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from cli_runner import evaluate_saved_model, plexus
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ParquetSchema, fit_spec

STAGES = ("warmup", "search", "prune", "retrain")


@pytest.fixture(scope="module")
def dnis_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dnis")
    raw = synth_criteo(tmp / "criteo.tsv", rows=20_000, seed=4)
    config = tmp / "job.yaml"
    config.write_text(
        f"""
name: dnis
data: {{format: criteo, path: {raw}, min_count: 2, split: {{valid: 0.15, test: 0.15, seed: 1}}}}
model: {{backbone: deepfm, hidden: [32]}}
embedding:
  method: dnis
  dim: 8
  options: {{search_budget: 0.25, search_epochs: 1, alpha_lr: 0.05}}
train: {{batch_size: 512, epochs: 2, lr: 0.003, patience: 5, threads_per_worker: 1}}
tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: dnis}}
output: {tmp / "runs"}
"""
    )
    done = plexus("run", str(config), cwd=tmp, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics_path = Path(done.stdout.strip().splitlines()[-1])
    return tmp, config, done, metrics_path


def _stage_state(metrics_path: Path, index: int) -> dict[str, torch.Tensor]:
    folder = metrics_path.parent / "stages" / f"{index}-{STAGES[index]}"
    return torch.load(folder / "model.pt", weights_only=True)


@pytest.mark.slow  # one 4-stage job: minutes on 2 cores
def test_the_four_stages_run_in_order_and_meet_the_budget(dnis_run) -> None:
    _, _, done, metrics_path = dnis_run
    out = done.stdout + done.stderr
    order = [out.index(f"stage {i}/4 {name}") for i, name in enumerate(STAGES, 1)]
    assert order == sorted(order)
    assert "warmup: epoch 2/2" in out and "search: epoch 1/1" in out
    assert "retrain: epoch 2/2" in out
    assert "retrain: start  valid AUC" in out  # the fine-tune's epoch 0: the pruned model
    metrics = json.loads(metrics_path.read_text())
    assert metrics["test_auc"] > 0.65, metrics  # the planted signal survives the pruning
    assert metrics["prune.compact_fraction"] <= 0.25  # the budget holds, indices included
    assert metrics["prune.kept_values"] < 0.25 * metrics["prune.total_values"]
    assert {"search.seconds", "warmup.seconds", "retrain.best_valid_auc"} <= set(metrics)
    # The model serves from the compact form: DNIS's bytes plus DeepFM's first-order tables.
    assert metrics["embedding_bytes"] < 0.25 * 4 * 8 * metrics["prune.total_values"] / 8 + (
        4 * metrics["prune.total_values"] / 8
    )


@pytest.mark.slow  # one 4-stage job: minutes on 2 cores
def test_alpha_moves_only_in_the_search_with_the_rest_of_the_network_frozen(dnis_run) -> None:
    _, _, _, metrics_path = dnis_run
    warm, searched = _stage_state(metrics_path, 0), _stage_state(metrics_path, 1)
    assert bool((warm["embeddings.alpha"] == 1).all())  # held at 1 in the warm-up
    alpha = searched["embeddings.alpha"]
    assert not bool((alpha == 1).all()) and bool(((alpha >= 0) & (alpha <= 1)).all())
    tables = [k for k in warm if k.startswith("embeddings.ebc.")]
    assert any(not torch.equal(warm[k], searched[k]) for k in tables)  # embeddings train
    rest = [k for k, v in warm.items() if not k.startswith("embeddings.") and v.is_floating_point()]
    assert rest and all(torch.equal(warm[k], searched[k]) for k in rest)  # the rest frozen


@pytest.mark.slow  # one 4-stage job: minutes on 2 cores
def test_pruned_weights_are_still_zero_after_the_retrain(dnis_run) -> None:
    _, _, _, metrics_path = dnis_run
    final = torch.load(metrics_path.parent / "model" / "model.pt", weights_only=True)
    tables = [k for k in final if k.startswith("embeddings.ebc.")]  # in table order: mask_<k>
    masks = [final[f"embeddings.mask_{k}"] for k in range(len(tables))]
    assert sum(int(m.sum()) for m in masks) > 0
    for table, mask in zip(tables, masks, strict=True):
        assert bool((final[table][~mask] == 0).all())  # pruned: still exactly zero
    kept = torch.cat([final[t][m] for t, m in zip(tables, masks, strict=True)])
    assert bool((kept != 0).float().mean() > 0.9)  # the kept ones trained


@pytest.mark.slow  # one 4-stage job: minutes on 2 cores
def test_each_stage_is_a_nested_mlflow_run_with_the_alpha_plot(dnis_run) -> None:
    import mlflow

    tmp, _, _, metrics_path = dnis_run
    run_id = json.loads(metrics_path.read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dnis")
    runs = client.search_runs([experiment.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == run_id}
    assert set(children) == {f"dnis-{s}" for s in STAGES}
    assert "valid_auc" in children["dnis-search"].data.metrics  # per-epoch lines of the search
    prune = children["dnis-prune"]
    assert prune.data.metrics["compact_fraction"] <= 0.25
    plots = [a.path for a in client.list_artifacts(prune.info.run_id, "plots")]
    assert "plots/dnis_alpha.png" in plots


@pytest.mark.slow  # one 4-stage job: minutes on 2 cores
def test_the_saved_model_reloads_with_its_mask(dnis_run) -> None:
    tmp, _, _, metrics_path = dnis_run
    metrics = json.loads(metrics_path.read_text())
    evaluated = evaluate_saved_model(tmp, metrics_path)
    assert evaluated["test_auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_ingest_numbers_a_vocabulary_by_descending_frequency() -> None:
    """DNIS's blocks assume it: the spec keeps no counts, only this order (id 0: OOV)."""
    values = ["c"] * 5 + ["a"] * 3 + ["d"] * 3 + ["b"] * 1 + ["e"] * 7
    frame = pl.DataFrame({"label": [0.0] * len(values), "x": values})
    roles = ParquetSchema(label="label", categorical=("x",))
    spec = fit_spec(
        frame, roles, DataConfig(format=DataFormat.CRITEO, path="unused"), name="t", source={},
        splits={},
    )  # fmt: skip
    assert spec["x"].vocabulary == ("e", "c", "a", "d", "b")  # count, then value on ties
