"""The retrieval job end to end on tiny planted data: MLflow run, registered bundle versions,
`export_retrieval`, and `bench_retrieval` outputs. The Ray Train path is marked slow."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from plexus.pipelines.retrieval import (
    RetrievalJobConfig,
    bench_retrieval,
    bundled_retrieval_config,
    export_retrieval,
    is_retrieval_config,
    run_retrieval_job,
)
from plexus.pipelines.retrieval.synthetic import planted_interests
from plexus.platform.config import from_dict
from plexus.serving.bundle import Bundle

TINY = {
    "model": {"dim": 8, "history_len": 8},
    "train": {"epochs": 3, "batch_size": 128, "num_negatives": 32, "lr": 0.02,
              "loss": "sampled_softmax", "temperature": 0.2, "threads": 1},
    "knn_embed": {"num_clusters": 4, "neighbors": 3},
    "eval": {"ks": [5, 10]},
}  # fmt: skip


def _write_lightgcn(folder: Path) -> Path:
    data, _ = planted_interests(
        num_users=60, num_groups=4, items_per_group=12, per_user=10, test_per_user=2
    )
    folder.mkdir(parents=True)
    for split, indptr, items in (
        ("train", data.train_indptr, data.train_items),
        ("test", data.test_indptr, data.test_items),
    ):
        lines = [
            " ".join(
                map(str, [int(data.user_ids[u]), *data.item_ids[items[indptr[u] : indptr[u + 1]]]])
            )
            for u in range(1, data.num_users + 1)
        ]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def _config(tmp_path: Path, uri: str, *, use_ray: bool) -> RetrievalJobConfig:
    return from_dict(
        RetrievalJobConfig,
        {
            "name": "tiny",
            "data": {"format": "lightgcn", "path": str(_write_lightgcn(tmp_path / "data"))},
            **TINY,
            "export": {"registered_model": "tiny-retrieval", "alias": "champion"},
            "tracking": {"uri": uri, "experiment": "test-retrieval"},
            "output": str(tmp_path / "runs"),
            "use_ray": use_ray,
        },
    )


def _check_registered(uri: str, version: str, user: int) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    folder = mlflow.artifacts.download_artifacts("models:/tiny-retrieval@champion")
    bundle = Bundle.load(folder)
    assert bundle.version == version
    assert len(bundle.recommend(user_id=user, k=5).item_ids) == 5


def test_job_registers_a_new_bundle_version_each_time(tmp_path: Path, mlflow_uri: str) -> None:
    config = _config(tmp_path, mlflow_uri, use_ray=False)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, eval_every=2))
    summary = run_retrieval_job(config)
    assert summary["version"] == "1"
    import mlflow

    metrics = mlflow.get_run(summary["run_id"]).data.metrics
    assert "train.recall_at_20" in metrics and "tower.recall_at_10" in metrics  # '@' is refused
    assert summary["tower"]["recall@10"] > 0
    assert summary["export"]["onnx_max_abs_diff"] <= 1e-5
    assert summary["export"]["index_recall_vs_exact"]["20"] == 1.0
    rows = json.loads((Path(summary["output"]) / "results.json").read_text())
    assert {(r["method"], r["k"]) for r in rows} == {
        (m, k) for m in ("single", "knn_embed", "popular") for k in (5, 10)
    }
    _check_registered(mlflow_uri, "1", user=3)
    again = export_retrieval(config)
    assert again["version"] == "2"
    _check_registered(mlflow_uri, "2", user=3)


def test_a_simplex_user_tower_exports_and_serves(tmp_path: Path, mlflow_uri: str) -> None:
    """The history's own table and user attention go through the same export: the ONNX query
    model matches torch and the registered bundle answers."""
    config = _config(tmp_path, mlflow_uri, use_ray=False)
    model = dataclasses.replace(
        config.model, history_table=True, history_attention=True, project_history=True,
        user_dropout=0.1,
    )  # fmt: skip
    summary = run_retrieval_job(dataclasses.replace(config, model=model))
    assert summary["export"]["onnx_max_abs_diff"] <= 1e-5
    assert summary["tower"]["recall@10"] > 0
    _check_registered(mlflow_uri, "1", user=3)


def test_bench_writes_results_json_md_and_png(tmp_path: Path, mlflow_uri: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    data = _write_lightgcn(tmp_path / "data")
    overrides = [f"{section}.{key}={json.dumps(value)}" for section, values in TINY.items() if section != "eval" for key, value in values.items()]  # fmt: skip
    rows = bench_retrieval(
        "lightgcn",
        data,
        tmp_path / "out",
        ks=(5, 10),
        overrides=[*overrides, "use_ray=false"],
        tune_power=(0.5, 1.0),
        tune_smoothing=(0.0, 0.3),
        tune_prior=(0.0, 0.1),
    )
    keys = {"method", "k", "recall", "ndcg", "distinct_clusters", "intra_list_distance"}
    assert rows and all(keys <= set(r) for r in rows)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == rows
    report = (tmp_path / "out" / "results.md").read_text()
    chosen, _, tuning = report.partition("chosen on the validation split (the prior by")
    assert "kNN-Embed" in report and tuning
    header = next(line for line in tuning.splitlines() if line.startswith("| popularity_prior"))
    columns = [c.strip() for c in header.split("|")[1:-1]]
    table = [
        dict(zip(columns, map(float, line.split("|")[1:-1]), strict=True))
        for line in tuning.splitlines()
        if line.startswith("| 0")
    ]
    # the prior first, by single-vector recall at the smallest K (the config's allocation)...
    by_prior = table[:2]
    assert [r["popularity_prior"] for r in by_prior] == [0.0, 0.1]
    prior = max(by_prior, key=lambda r: r["single_recall@5"])["popularity_prior"]
    # ... then smoothing and power at that prior
    grid = {(r["smoothing"], r["power"]): r for r in table[2:]}
    assert set(grid) == {(0.0, 0.5), (0.0, 1.0), (0.3, 0.5), (0.3, 1.0)}
    assert {r["popularity_prior"] for r in grid.values()} == {prior}
    diverse = [
        key
        for key, r in grid.items()
        if r["distinct_clusters"] >= 1.2 * r["single_distinct_clusters"]
    ]
    smoothing, power = max(diverse or grid, key=lambda key: grid[key]["recall"])
    assert (
        f"kNN-Embed smoothing {smoothing:g}, allocation power {power:g}, "
        f"popularity prior {prior:g}" in chosen
    )
    assert len(list((tmp_path / "out").glob("*-retrieval-*/validation/model.pt"))) == 1
    assert (tmp_path / "out" / "retrieval.png").stat().st_size > 1000


def test_shipped_configs_load_and_are_recognised() -> None:
    from plexus.pipelines.retrieval import load_retrieval_config

    for fmt in ("movielens", "lightgcn"):
        path = bundled_retrieval_config(fmt)
        assert is_retrieval_config(path)
        assert load_retrieval_config(path).data.format.value == fmt


@pytest.mark.slow
def test_job_trains_through_ray_train(tmp_path: Path, mlflow_uri: str, ray_local, capfd) -> None:
    summary = run_retrieval_job(_config(tmp_path, mlflow_uri, use_ray=True))
    assert summary["version"] == "1"
    assert summary["tower"]["recall@10"] > 0
    printed = capfd.readouterr()
    epoch_lines = (printed.out + printed.err).count("[retrieval] {'epoch': 1.0")
    assert epoch_lines == 1  # Ray Train's print patch printed every worker line twice
    assert "Failed to query Ray Train Controller" not in printed.out + printed.err
    import ray

    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    level = ray.remote(num_cpus=0)(lambda: logging.getLogger(cleaner).level)
    assert ray.get(level.remote()) == logging.ERROR  # runtime.quiet_ray_worker ran there


def test_a_relative_output_folder_becomes_absolute(tmp_path: Path, monkeypatch) -> None:
    """Ray Train's storage_path rejects relative paths ('URI has empty scheme')."""
    from plexus.pipelines.retrieval.job import run_dir

    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "sqlite:///unused.db", use_ray=True)
    folder = run_dir(dataclasses.replace(config, output="runs/bench"))
    assert folder.is_absolute() and folder.parent == tmp_path / "runs" / "bench"
