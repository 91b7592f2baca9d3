"""DSL and magnitude pruning through the real job (`plexus train` on local Ray, MLflow in sqlite):
the planned steps reach the masks, the budget holds in the saved model, the model reloads, and
its sparse form serves at the bytes it reports. Slow: two Ray Train jobs (~1-2 min each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import evaluate_saved_model, plexus
from plexus.pipelines.bench.lookup import lookup_latency, padded_batches
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.train.job import load_model
from plexus.platform.feature_spec import FeatureSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # two jobs in the fixture
ROWS, BATCH, EPOCHS = 20_000, 512, 2


def _job(tmp: Path, raw: Path, method: str) -> Path:
    config = tmp / f"{method}.yaml"
    config.write_text(
        f"""
name: {method}
data: {{format: criteo, path: {raw}, min_count: 2, split: {{valid: 0.15, test: 0.15, seed: 1}}}}
model: {{backbone: deepfm, hidden: [32]}}
embedding: {{method: {method}, dim: 8, options: {{byte_budget: 0.25}}}}
train: {{batch_size: {BATCH}, epochs: {EPOCHS}, lr: 0.003, patience: 5, threads_per_worker: 1}}
tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: sparse}}
output: {tmp / "runs"}
"""
    )
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple]]:
    tmp = tmp_path_factory.mktemp("dsl")
    raw = synth_criteo(tmp / "criteo.tsv", rows=ROWS, seed=4)
    out = {}
    for method in ("dsl", "magnitude_pruning"):
        done = plexus("train", str(_job(tmp, raw, method)), cwd=tmp, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        out[method] = (done, Path(done.stdout.strip().splitlines()[-1]))
    return tmp, out


def test_dsl_trains_at_its_budget_with_the_planned_prune_and_grow(runs) -> None:
    tmp, out = runs
    _, metrics_path = out["dsl"]
    metrics = json.loads(metrics_path.read_text())
    assert metrics["test_auc"] > 0.65, metrics  # the planted signal is learned sparse
    model, _ = load_model(metrics_path.parent / "model")
    tables = model.embeddings
    train_rows = json.loads(next((tmp / "runs" / "data").glob("*/manifest.json")).read_text())
    planned = EPOCHS * -(-train_rows["rows"]["train"] // BATCH)
    assert int(tables.steps) == planned  # the loop gave the steps and called the hook each step
    assert tables.nonzeros() == tables.target_nonzeros  # constant through every cycle
    for weight, mask in zip(tables.weights(), tables.masks(), strict=True):
        assert int((weight.detach()[~mask] != 0).sum()) == 0
    dense = 4 * sum(w.numel() for w in tables.weights())
    assert tables.num_bytes() <= 0.25 * dense
    first_order = model.first_order.num_bytes()
    assert metrics["embedding_bytes"] == tables.num_bytes() + first_order
    evaluated = evaluate_saved_model(tmp, metrics_path)
    assert evaluated["test_auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_magnitude_pruning_runs_dense_then_finetune_at_the_same_bytes(runs) -> None:
    _, out = runs
    done, metrics_path = out["magnitude_pruning"]
    text = done.stdout + done.stderr
    assert text.index("stage 1/2 dense") < text.index("stage 2/2 finetune")
    metrics = json.loads(metrics_path.read_text())
    assert {"dense.best_valid_auc", "finetune.best_valid_auc"} <= set(metrics)
    dsl = json.loads(out["dsl"][1].read_text())
    # Both at 1/4 of the main tables' bytes: within a few hundred bytes of each other.
    assert abs(metrics["embedding_bytes"] - dsl["embedding_bytes"]) < 0.01 * dsl["embedding_bytes"]
    model, _ = load_model(metrics_path.parent / "model")
    assert bool(model.embeddings.pruned)


def test_the_saved_sparse_form_serves_at_its_bytes(runs) -> None:
    tmp, out = runs
    model, _ = load_model(out["dsl"][1].parent / "model")
    data = next((tmp / "runs" / "data").iterdir())
    spec = FeatureSpec.load(data)
    batches = padded_batches(
        sorted((data / "test").glob("*.parquet")), spec, batch_size=256, limit=2
    )
    torch.set_num_threads(1)
    figures = lookup_latency(model.embeddings, batches, passes=2)
    assert figures is not None
    assert figures["sparse_form_bytes"] == model.embeddings.num_bytes()
    assert figures["sparse_form_bytes"] <= 0.25 * figures["dense_form_bytes"]
    assert figures["lookup_sparse_us"] > 0 and figures["lookup_dense_us"] > 0
    with torch.no_grad():
        served = model.embeddings.compact()
        torch.testing.assert_close(
            served.forward_padded(*batches[0]), model.embeddings.forward_padded(*batches[0])
        )


def test_magnitude_pruning_at_another_budget_reuses_the_dense_stage(runs) -> None:
    tmp, out = runs
    first = json.loads(out["magnitude_pruning"][1].read_text())
    config = _job(tmp, tmp / "criteo.tsv", "magnitude_pruning")
    done = plexus(
        "train", str(config), "embedding.options.byte_budget=0.0625", cwd=tmp, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "stage 1/2 dense: finished earlier, reused" in done.stdout
    metrics_path = Path(done.stdout.strip().splitlines()[-1])
    assert metrics_path.parent != out["magnitude_pruning"][1].parent  # a run of its own
    metrics = json.loads(metrics_path.read_text())
    assert metrics["dense.best_valid_auc"] == first["dense.best_valid_auc"]
    assert metrics["embedding_bytes"] < 0.75 * first["embedding_bytes"]  # pruned to 1/16
    for path in (metrics_path.parent, out["magnitude_pruning"][1].parent):
        link = path / "stages" / "0-dense"
        assert link.is_symlink() and (link / "model.pt").is_file()
