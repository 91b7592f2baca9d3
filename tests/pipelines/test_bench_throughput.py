"""Back-to-back throughput: every model trains on the same batches, pass by pass, in turn."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from plexus.models.backbones import Backbone, ModelConfig
from plexus.models.embeddings import EmbeddingConfig
from plexus.pipelines.bench.throughput import (
    embedding_throughput,
    interleaved_examples_per_s,
    load_batches,
)
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ingest


def test_models_take_turns_pass_by_pass_after_a_warm_up() -> None:
    calls: list[str] = []
    batches = [type("B", (), {"labels": torch.zeros(4)})() for _ in range(3)]
    steps = {name: (lambda b, name=name: calls.append(name)) for name in ("a", "b")}
    speeds = interleaved_examples_per_s(steps, batches, passes=2, warmup=1)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(speeds) == {"a", "b"} and min(speeds.values()) > 0


def test_every_embedding_config_trains_on_the_same_real_batches(tmp_path: Path) -> None:
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=3_000, seed=1)
    data = ingest(
        DataConfig(format=DataFormat.CRITEO, path=str(raw), min_count=2), output=tmp_path / "data"
    )
    batches = load_batches(data.shards("train"), data.spec, batch_size=256, limit=3)
    assert [b.labels.numel() for b in batches] == [256] * 3
    embeddings = {
        "full": EmbeddingConfig(dim=8),
        "unified": EmbeddingConfig(method="unified", dim=4, budget=0.125, chunks=2),
    }
    model = ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,))
    speeds = embedding_throughput(model, embeddings, data.spec, batches, passes=1)
    assert set(speeds) == set(embeddings) and min(speeds.values()) > 0


def test_throughput_only_benchmark_writes_ratios_to_full(tmp_path: Path) -> None:
    from plexus.pipelines.bench.embeddings import bench_embedding_throughput

    raw = synth_criteo(tmp_path / "criteo.tsv", rows=3_000, seed=1)
    rows = bench_embedding_throughput(
        "criteo",
        raw,
        tmp_path / "out",
        methods=("unified", "full"),
        budgets=(1 / 4,),
        overrides=["model.hidden=[8]", "train.batch_size=256", "train.threads_per_worker=1"],
        batches=2,
    )
    assert [(r["method"], r["budget_label"], r["chunks"]) for r in rows] == [
        ("full", "1", 1),
        ("unified", "1/4", 2),
    ]
    assert rows[0]["speed_vs_full"] == 1.0 and rows[1]["speed_vs_full"] > 0
    assert json.loads((tmp_path / "out" / "throughput.json").read_text()) == rows
    assert "| unified |  | 1/4 | 2 |" in (tmp_path / "out" / "throughput.md").read_text()
