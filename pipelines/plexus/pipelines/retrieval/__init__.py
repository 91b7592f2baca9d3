"""The retrieval half of Plexus: interaction logs -> two-tower model -> kNN-Embed -> bundle.

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
from plexus.pipelines.retrieval.data import Interactions, RetrievalDataConfig, read_interactions
from plexus.pipelines.retrieval.job import export_retrieval, register_bundle, run_retrieval_job

__all__ = [
    "Interactions",
    "RetrievalDataConfig",
    "RetrievalJobConfig",
    "bench_retrieval",
    "bundled_retrieval_config",
    "export_retrieval",
    "is_retrieval_config",
    "load_retrieval_config",
    "read_interactions",
    "register_bundle",
    "run_retrieval_job",
]
