"""`plexus bench train`: DeepFM examples/s through the real pipeline vs a bare PyTorch loop.

Both sides train the same model (same config, seed and batch size) in the same process run:
the pipeline side is `plexus.pipelines.train.job.train` (Ray Data shards -> Ray Train worker ->
Arrow -> KeyedJaggedTensor), the baseline iterates over batches already built in memory.
The figure compared is the steady-state (last epoch) throughput; Ray start-up is excluded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.embeddings import EmbeddingConfig
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.bench.throughput import interleaved_examples_per_s, load_batches, train_step
from plexus.pipelines.config import JobConfig, TrackingConfig, TrainConfig
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ingest
from plexus.pipelines.train.job import train
from plexus.platform.feature_spec import FeatureSpec


def bench_train(
    out: Path, *, rows: int = 200_000, seed: int = 0, epochs: int = 2
) -> dict[str, float]:
    """Measure both sides, write `out/results.json` and print the ratio."""
    out = out.resolve()
    raw = synth_criteo(out / "criteo.tsv", rows=rows, seed=seed)
    data = ingest(
        DataConfig(format=DataFormat.CRITEO, path=str(raw), min_count=2), output=out / "data"
    )
    job = JobConfig(
        name="bench-train",
        data=DataConfig(format=DataFormat.CRITEO, path=str(raw), min_count=2),
        model=ModelConfig(backbone=Backbone.DEEPFM, hidden=(400, 400)),
        embedding=EmbeddingConfig(dim=16),
        train=TrainConfig(
            batch_size=2048, epochs=epochs, patience=epochs, seed=seed, shuffle_buffer=0
        ),
        tracking=TrackingConfig(uri=f"sqlite:///{out / 'mlflow.db'}", experiment="bench-train"),
        output=str(out / "runs"),
    )
    pipeline = train(job, data, force=True).history[-1]["examples_per_s"]
    baseline = _bare_loop(job, data.shards("train"), data.spec)
    results = {
        "examples_per_s": pipeline,
        "baseline_examples_per_s": baseline,
        "ratio": pipeline / baseline,
        "rows": rows,
        "train_rows": data.rows["train"],
        "batch_size": job.train.batch_size,
        "model": "deepfm",
        "threads": torch.get_num_threads(),
    }
    table = markdown_table(
        [
            {"side": "pipeline (Ray Train + Ray Data)", "examples/s": pipeline},
            {"side": "bare PyTorch loop (pre-loaded tensors)", "examples/s": baseline},
        ],
        ["side", "examples/s"],
    )
    write_results(out, results, markdown=table + f"\nratio: {results['ratio']:.2f}\n")
    print(table + f"ratio pipeline / bare: {results['ratio']:.2f}  (target >= 0.6)")
    return results


def _bare_loop(job: JobConfig, shards: list[Path], spec: FeatureSpec) -> float:
    """Examples/s of one epoch over pre-built batches, after a short warm-up.

    Uses the same torch thread count as the pipeline's Ray Train worker.
    """
    torch.set_num_threads(
        job.train.threads_per_worker or max(1, (os.cpu_count() or 1) // job.train.workers)
    )
    torch.manual_seed(job.train.seed)
    batches = load_batches(shards, spec, batch_size=job.train.batch_size)
    step = train_step(build_ctr_model(job.model, job.embedding, spec), lr=job.train.lr)
    return interleaved_examples_per_s({"bare": step}, batches, passes=1, warmup=5)["bare"]


__all__ = ["bench_train"]
