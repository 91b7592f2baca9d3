"""Embedding methods behind one interface, selected by `embedding.method` in a job config.

Example:
    >>> from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables
    >>> tables = build_embedding_tables(EmbeddingConfig(method="hashing", dim=16, budget=0.25), spec.sparse)
    >>> pooled = tables(batch.sparse)          # KeyedTensor, keys = tables.feature_names
    >>> pooled.values().shape                  # (B, sum(tables.output_dims().values()))
"""

from plexus.models.embeddings import full, hashing, multiplexed, unified  # noqa: F401  (registers)
from plexus.models.embeddings.base import (
    EMBEDDING_INIT_STD,
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    budget_rows,
    full_table_parameters,
)
from plexus.models.embeddings.registry import (
    build_embedding_tables,
    register_embedding,
    registered_methods,
)

__all__ = [
    "EMBEDDING_INIT_STD",
    "EmbeddingConfig",
    "EmbeddingMethod",
    "EmbeddingTables",
    "budget_rows",
    "build_embedding_tables",
    "full_table_parameters",
    "register_embedding",
    "registered_methods",
]
