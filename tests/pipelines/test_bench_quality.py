"""`plexus bench quality`: baseline rows on the datasets' own splits, tuned configs per backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plexus.pipelines.bench.quality import DATASETS, bench_quality
from plexus.pipelines.config import TUNED_DIR, load_job_config, tuned_config
from plexus.pipelines.data.synth import synth_movielens
from plexus.platform.errors import ConfigError


def test_bundled_tuned_configs_load_and_name_their_backbone() -> None:
    path = tuned_config("movielens", "lr")
    assert path is not None
    job = load_job_config(path)
    assert job.model.backbone.value == "lr" and job.train.lr > 0.001
    assert tuned_config("movielens", "no-such-backbone") is None
    # The random split has its own LR recipe (chosen on its own validation rows), the time
    # split's other backbones none: they fall back to the dataset's bundled config.
    random_split = DATASETS["movielens_random"]
    assert tuned_config(random_split.tuned_name, "lr") != path
    assert load_job_config(tuned_config(random_split.tuned_name, "lr")).data.split.by == "random"
    assert tuned_config(random_split.tuned_name, "deepfm") is None
    assert DATASETS["movielens"].tuned_name == "movielens"


def test_every_tuned_config_is_its_files_backbone_and_reads_the_data_root(
    tmp_path: Path, monkeypatch
) -> None:
    """A `best.yaml` copied in as written would carry the tuning machine's absolute paths."""
    monkeypatch.setenv("PLEXUS_DATA", str(tmp_path))
    paths = sorted(TUNED_DIR.glob("*.yaml"))
    # movielens lr; movielens_1m lr, fm; criteo x 4; avazu lr, deepfm, dcnv2
    assert len(paths) >= 10
    for path in paths:
        dataset, backbone = path.stem.rsplit("-", 1)
        assert tuned_config(dataset, backbone) == path
        job = load_job_config(path)
        assert job.model.backbone.value == backbone, path.name
        for data_path in (job.data.path, job.data.valid_path, job.data.test_path):
            assert data_path is None or str(data_path).startswith(str(tmp_path)), path.name


def _baselines_on_synthetic_movielens(
    tmp_path: Path, monkeypatch, datasets: tuple[str, ...], **options
) -> list[dict]:
    """`bench_quality` with baselines only (no backbone), on a synthetic MovieLens-100K-layout
    folder standing in for the shared data root."""
    synth_movielens(tmp_path / "data" / "movielens_100k", ratings=6000, seed=1)
    monkeypatch.setenv("PLEXUS_DATA", str(tmp_path / "data"))
    return bench_quality(
        tmp_path / "out", data_root=tmp_path / "data", backbones=(), datasets=datasets, **options
    )


def test_baselines_run_on_both_movielens_splits(tmp_path: Path, monkeypatch) -> None:
    """Every baseline row per split, written to results.json/md."""
    rows = _baselines_on_synthetic_movielens(
        tmp_path, monkeypatch, ("movielens", "movielens_random")
    )
    got = {(r["dataset"], r["model"]) for r in rows}
    assert got == {
        (d, m)
        for d in ("movielens", "movielens_random")
        for m in ("sklearn_lr", "item_popularity", "user_mean")
    }
    by = {(r["dataset"], r["model"]): r for r in rows}
    # the synthetic ratings depend on the ids and side features: LR finds it, on both splits
    assert by[("movielens_random", "sklearn_lr")]["test_auc"] > 0.6
    assert by[("movielens", "sklearn_lr")]["test_auc"] > 0.55
    # the two splits differ (time vs random), so do their baselines
    assert (
        by[("movielens", "user_mean")]["test_auc"]
        != by[("movielens_random", "user_mean")]["test_auc"]
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved) == 6
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| MovieLens-100K, random split |" in text


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown 'movielens_2m'"):
        bench_quality(Path("unused"), data_root=Path("."), datasets=("movielens_2m",))
    assert set(DATASETS) >= {"movielens", "movielens_random", "movielens_1m", "criteo", "avazu"}


def test_folds_repeat_the_benchmark_on_each_cross_validation_fold(
    tmp_path: Path, monkeypatch
) -> None:
    """`--folds 2`: every row once a fold, each fold validating on its own rows."""
    from plexus.pipelines.bench.quality import summarise

    rows = _baselines_on_synthetic_movielens(tmp_path, monkeypatch, ("movielens_random",), folds=2)
    assert sorted((r["fold"], r["model"]) for r in rows) == sorted(
        (f, m) for f in (0, 1) for m in ("sklearn_lr", "item_popularity", "user_mean")
    )
    by = {(r["fold"], r["model"]): r for r in rows}
    assert by[(0, "user_mean")]["valid_auc"] != by[(1, "user_mean")]["valid_auc"]
    (lr,) = [s for s in summarise(rows) if s["model"] == "sklearn_lr"]
    assert lr["seeds"] == 2 and lr["auc_std"] > 0
    with pytest.raises(ConfigError, match="--folds"):
        bench_quality(tmp_path / "x", data_root=tmp_path / "data", folds=1)
