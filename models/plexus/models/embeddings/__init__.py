"""Embedding methods behind one interface, selected by `embedding.method` in a job config.

    embedding: {method: full, dim: 16}                                  # one table per field
    embedding: {method: hashing, dim: 16, budget: 0.25}                 # per-field hashing trick
    embedding: {method: multiplexed, dim: 16, budget: 0.25, probes: 1}  # one shared table
    embedding: {method: unified, dim: 16, budget: 0.25, chunks: 2,      # Unified Embedding
                feature_chunks: {site_id: 4}, num_tables: 2}

`budget` is the fraction of the full tables' parameters (`full_table_parameters`); the hashed
methods hold exactly `budget_rows(features, budget) * dim` parameters. Their ids go through
`plexus.models.layers.hashing.hash_bucket` (bit-identical to `plexus.platform.hashing.hash_bucket`
and to onnxruntime), and `EmbeddingTables.forward_padded` is the exportable path.

Example:
    >>> from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables
    >>> tables = build_embedding_tables(EmbeddingConfig(method="hashing", dim=16, budget=0.25), spec.sparse)
    >>> pooled = tables(batch.sparse)          # KeyedTensor, keys = tables.feature_names
    >>> pooled.values().shape                  # (B, sum(tables.output_dims().values()))
"""

from plexus.models.embeddings import (  # noqa: F401  (registers)
    dnis,
    dsl,
    full,
    hashing,
    magnitude_pruning,
    multiplexed,
    optembed,
    unified,
)
from plexus.models.embeddings.base import (
    EMBEDDING_INIT_STD,
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    LearnedOptions,
    budget_rows,
    full_table_parameters,
)
from plexus.models.embeddings.registry import (
    build_embedding_tables,
    learned_methods,
    learned_options,
    register_embedding,
    registered_methods,
)

__all__ = [
    "EMBEDDING_INIT_STD",
    "EmbeddingConfig",
    "EmbeddingMethod",
    "EmbeddingTables",
    "LearnedOptions",
    "budget_rows",
    "build_embedding_tables",
    "learned_methods",
    "learned_options",
    "full_table_parameters",
    "register_embedding",
    "registered_methods",
]
