"""`plexus bench train`: DeepFM examples/s through the real pipeline vs a bare PyTorch loop.

Both sides train the same model (same config, seed and batch size) in the same process run:
the pipeline side is `plexus.pipelines.train.job.train` (Ray Data shards -> Ray Train worker ->
Arrow -> KeyedJaggedTensor), the baseline iterates over batches already built in memory.
The figure compared is the steady-state (last epoch) throughput; Ray start-up is excluded.
`--workers 1,2` also trains with the tables sharded over 2 workers (TorchRec) and reports the
scaling ratio and each worker's memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.embeddings import EmbeddingConfig
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.bench.throughput import interleaved_examples_per_s, load_batches, train_step
from plexus.pipelines.config import JobConfig, TrackingConfig, TrainConfig
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ingest
from plexus.pipelines.train.job import train
from plexus.platform.feature_spec import FeatureSpec


def bench_train(
    out: Path,
    *,
    rows: int = 200_000,
    seed: int = 0,
    epochs: int = 2,
    workers: Sequence[int] = (1,),
) -> dict[str, Any]:
    """Measure the pipeline at each worker count in `workers` and the bare loop, write
    `out/results.json` (`by_workers`: one row per worker count) and print the table.

    With several workers the tables are sharded (`plexus.pipelines.train.sharding`); each row
    has the largest worker's peak resident memory and the table bytes it holds. The scaling
    ratio is examples/s against the first worker count's, in the same run.
    """
    out = out.resolve()
    raw = synth_criteo(out / "criteo.tsv", rows=rows, seed=seed)
    data_config = DataConfig(format=DataFormat.CRITEO, path=str(raw), min_count=2)
    data = ingest(data_config, output=out / "data")
    cores = os.cpu_count() or 1
    jobs = [
        _job(out, data_config, seed=seed, epochs=epochs, workers=n, cores=cores) for n in workers
    ]
    by_workers = []
    for count, job in zip(workers, jobs, strict=True):
        result = train(job, data, force=True)
        last = result.history[-1]
        by_workers.append(
            {
                "workers": count,
                "examples_per_s": last["examples_per_s"],
                "worker_peak_rss_bytes": last["worker_peak_rss_bytes"],
                "worker_table_bytes": last["worker_table_bytes"],
                "test_auc": result.metrics["test_auc"],
            }
        )
    for row in by_workers:
        row["scaling"] = row["examples_per_s"] / by_workers[0]["examples_per_s"]
    first = jobs[0]
    baseline = _bare_loop(first, data.shards("train"), data.spec)
    pipeline = by_workers[0]["examples_per_s"]
    results = {
        "examples_per_s": pipeline,
        "baseline_examples_per_s": baseline,
        "ratio": pipeline / baseline,
        "by_workers": by_workers,
        "rows": rows,
        "train_rows": data.rows["train"],
        "batch_size": first.train.batch_size,
        "model": "deepfm",
        "cores": cores,
    }
    mb = 1 << 20
    table = markdown_table(
        [
            {
                "side": f"pipeline, {r['workers']} worker(s)"
                + (" (tables sharded)" if r["workers"] > 1 else ""),
                "examples/s": r["examples_per_s"],
                "scaling": f"{r['scaling']:.2f}",
                "peak RSS/worker (MB)": f"{r['worker_peak_rss_bytes'] / mb:,.0f}",
                "tables/worker (MB)": f"{r['worker_table_bytes'] / mb:,.1f}",
                "test AUC": f"{r['test_auc']:.4f}",
            }
            for r in by_workers
        ]
        + [{"side": "bare PyTorch loop (pre-loaded tensors)", "examples/s": baseline}],
        ["side", "examples/s", "scaling", "peak RSS/worker (MB)", "tables/worker (MB)", "test AUC"],
    )
    summary = (
        f"ratio pipeline ({workers[0]} worker) / bare: {results['ratio']:.2f}  (target >= 0.6)"
    )
    if len(workers) > 1:
        summary += f"; {cores} cores bound the scaling ratio at about {cores / workers[0]:.0f}"
    write_results(out, results, markdown=table + f"\n{summary}\n")
    print(table + summary)
    return results


def _job(
    out: Path, data: DataConfig, *, seed: int, epochs: int, workers: int, cores: int
) -> JobConfig:
    """DeepFM [400, 400] over full dim-16 tables, the cores split over the workers."""
    return JobConfig(
        name=f"bench-train-{workers}w",
        data=data,
        model=ModelConfig(backbone=Backbone.DEEPFM, hidden=(400, 400)),
        embedding=EmbeddingConfig(dim=16),
        train=TrainConfig(
            batch_size=2048,
            epochs=epochs,
            patience=epochs,
            seed=seed,
            shuffle_buffer=0,
            workers=workers,
            threads_per_worker=max(1, cores // workers),
        ),
        tracking=TrackingConfig(uri=f"sqlite:///{out / 'mlflow.db'}", experiment="bench-train"),
        output=str(out / "runs"),
    )


@restores_cpu_state()
def _bare_loop(job: JobConfig, shards: list[Path], spec: FeatureSpec) -> float:
    """Examples/s of one epoch over pre-built batches, after a short warm-up.

    Uses the same torch thread count as the pipeline's Ray Train worker.
    """
    use_cpu_threads(
        job.train.threads_per_worker or max(1, (os.cpu_count() or 1) // job.train.workers)
    )
    torch.manual_seed(job.train.seed)
    batches = load_batches(shards, spec, batch_size=job.train.batch_size)
    step = train_step(build_ctr_model(job.model, job.embedding, spec), lr=job.train.lr)
    return interleaved_examples_per_s({"bare": step}, batches, passes=1, warmup=5)["bare"]


__all__ = ["bench_train"]
