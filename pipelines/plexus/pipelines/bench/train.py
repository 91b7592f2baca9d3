"""`plexus bench train`: DeepFM examples/s through the real pipeline vs a bare PyTorch loop.

Both sides train the same model (same config, seed and batch size) in the same process run:
the pipeline side is `plexus.pipelines.train.job.train` (Ray Data shards -> Ray Train worker ->
Arrow -> KeyedJaggedTensor), the baseline iterates over batches already built in memory.
The figure compared is the steady-state (last epoch) throughput; Ray start-up is excluded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.batch import batch_from_arrow
from plexus.models.embeddings import EmbeddingConfig
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.config import JobConfig, TrackingConfig, TrainConfig
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ingest
from plexus.pipelines.train.job import train


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


def _bare_loop(job: JobConfig, shards: list[Path], spec) -> float:  # noqa: ANN001
    """Examples/s of one epoch over pre-built batches, after a short warm-up.

    Uses the same torch thread count as the pipeline's Ray Train worker.
    """
    torch.set_num_threads(
        job.train.threads_per_worker or max(1, (os.cpu_count() or 1) // job.train.workers)
    )
    torch.manual_seed(job.train.seed)
    table = pq.read_table([str(s) for s in shards]) if len(shards) > 1 else pq.read_table(shards[0])
    size = job.train.batch_size
    batches = [batch_from_arrow(table.slice(i, size), spec) for i in range(0, table.num_rows, size)]
    model = build_ctr_model(job.model, job.embedding, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=job.train.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(batch) -> None:  # noqa: ANN001
        loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:5]:
        step(batch)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(b.labels.numel() for b in batches) / (time.perf_counter() - started)


__all__ = ["bench_train"]
