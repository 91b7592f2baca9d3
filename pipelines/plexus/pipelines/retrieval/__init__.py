"""Retrieval on the platform: interaction logs -> ingest -> two-tower model -> kNN-Embed -> bundle.

Public entry points (the CLI calls these):
    run_retrieval_job(config) -> dict        `plexus run <retrieval config>`
    export_retrieval(config) -> dict         `plexus export <retrieval config>` (prints version)
    bench_retrieval(fmt, data, out, ks)      `plexus bench retrieval`
"""

from plexus.pipelines.retrieval.bench import bench_retrieval
from plexus.pipelines.retrieval.config import (
    RetrievalJobConfig,
    bundled_retrieval_config,
    is_retrieval_config,
    load_retrieval_config,
)
from plexus.pipelines.retrieval.data import Interactions, ingest_interactions, load_interactions
from plexus.pipelines.retrieval.job import export_retrieval, register_bundle, run_retrieval_job

__all__ = [
    "Interactions",
    "RetrievalJobConfig",
    "bench_retrieval",
    "bundled_retrieval_config",
    "export_retrieval",
    "ingest_interactions",
    "is_retrieval_config",
    "load_interactions",
    "load_retrieval_config",
    "register_bundle",
    "run_retrieval_job",
]
