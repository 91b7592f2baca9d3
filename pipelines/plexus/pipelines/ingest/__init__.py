"""Ingest: raw Criteo / Avazu / MovieLens / Parquet inputs -> encoded Parquet shards + FeatureSpec.

Criteo and Avazu inputs (a file, a folder or a glob; plain, `.gz` or `.zst`) and CTR Parquet
inputs (a file, a folder or a glob) are streamed in bounded memory
(`plexus.pipelines.ingest.stream`); MovieLens and interaction logs are read whole (see
`plexus.pipelines.ingest.interactions` for why).

Example:
    >>> from plexus.pipelines.ingest import DataConfig, DataFormat, ingest
    >>> result = ingest(DataConfig(format=DataFormat.CRITEO, path="train.txt"), output=Path("out"))
    >>> result.rows, result.rejects
"""

from plexus.pipelines.ingest.config import DataConfig, DataFormat, ParquetSchema, SplitConfig
from plexus.pipelines.ingest.encode import arrow_schema, encode, fit_spec
from plexus.pipelines.ingest.job import IngestResult, ingest
from plexus.pipelines.ingest.readers import RawTable, read_input

__all__ = [
    "DataConfig",
    "DataFormat",
    "IngestResult",
    "ParquetSchema",
    "RawTable",
    "SplitConfig",
    "arrow_schema",
    "encode",
    "fit_spec",
    "ingest",
    "read_input",
]
