"""The service's configuration: which model, where to listen, limits and threading.

A frozen keyword-only dataclass validated on construction; `plexus serve` / `python -m
plexus.serving` fill it from the command line (`server.build_parser`).
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError

__all__ = ["Batching", "ServeConfig", "default_threads"]


class Batching(StrEnum):
    """How concurrent requests reach the model.

    INLINE: each request runs alone, in the event loop.
    LOOP: the model runs in the event loop on all requests that arrived together.
    MICRO: the model runs on a worker thread; requests arriving meanwhile form the next batch
    (the event loop stays free for HTTP while onnxruntime/faiss run without the GIL).
    """

    INLINE = "inline"
    LOOP = "loop"
    MICRO = "micro"


def default_threads() -> int:
    """onnxruntime intra-op threads: 1. Queries are tiny (B <= a few hundred rows), so
    parallelism comes from concurrent requests, not from splitting one small matmul."""
    return 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything the service needs to start.

    `model`: `NAME@ALIAS`, `NAME/VERSION`, `models:/...` (resolved through the MLflow
    registry, polled every `poll_interval` seconds, 0 = never) or a local bundle folder.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    tracking_uri: str | None = None
    poll_interval: float = 30.0
    cache_dir: str | None = None  # where registry bundles are downloaded (a temp dir if None)
    threads: int = dataclasses.field(default_factory=default_threads)
    batching: Batching = Batching.MICRO
    max_batch: int = 64  # queries per model call in micro-batching
    max_k: int = 1000
    default_k: int = 100
    max_history: int = 1000
    max_exclude: int = 10_000
    max_batch_request: int = 256  # queries in one POST /v1/retrieve/batch
    max_body_bytes: int = 1 << 20
    body_timeout: float = 10.0  # seconds to receive a whole request body before a 408
    log_level: str = "info"

    def __post_init__(self) -> None:
        coerce_choice(self, "batching", Batching, "serve.batching")
        if not self.model:
            raise ConfigError("serve.model: give NAME@ALIAS, NAME/VERSION or a bundle folder")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"serve.port: must be in [0, 65535], got {self.port}")
        if self.body_timeout <= 0:
            raise ConfigError(f"serve.body_timeout: must be > 0 seconds, got {self.body_timeout}")
        if self.poll_interval < 0:
            raise ConfigError(
                f"serve.poll_interval: must be >= 0 seconds, got {self.poll_interval}"
            )
        for key in (
            "threads",
            "max_batch",
            "max_k",
            "max_history",
            "max_exclude",
            "max_batch_request",
            "max_body_bytes",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve.{key}: must be >= 1, got {getattr(self, key)}")
        if not 1 <= self.default_k <= self.max_k:
            raise ConfigError(
                f"serve.default_k: must be in [1, max_k={self.max_k}], got {self.default_k}"
            )
        if not isinstance(self.batching, Batching):
            try:
                object.__setattr__(self, "batching", Batching(self.batching))
            except ValueError as exc:
                choices = [b.value for b in Batching]
                raise ConfigError(
                    f"serve.batching: {self.batching!r} is not one of {choices}"
                ) from exc
