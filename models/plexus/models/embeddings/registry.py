"""Registry of embedding methods: `embedding.method` in a job config -> an `EmbeddingTables` class."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from plexus.models.embeddings.base import (
    _METHOD_OPTIONS,
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    LearnedOptions,
)
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature

_REGISTRY: dict[EmbeddingMethod, type[EmbeddingTables]] = {}


def register_embedding(
    method: EmbeddingMethod, *, options: type | None = None
) -> Callable[[type], type]:
    """Class decorator: make an `EmbeddingTables` subclass selectable as `method`.

    `options` is the method's typed config dataclass, read from `embedding.options`.
    """

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, EmbeddingTables)):
            raise TypeError(f"{cls!r} must subclass EmbeddingTables to be registered")
        if method in _REGISTRY and _REGISTRY[method] is not cls:
            raise ValueError(f"embedding method {method.value!r} is already registered")
        _REGISTRY[method] = cls
        if options is not None:
            _METHOD_OPTIONS[method] = options
        return cls

    return decorate


def registered_methods() -> tuple[EmbeddingMethod, ...]:
    """Every method with an implementation, in enum order."""
    return tuple(m for m in EmbeddingMethod if m in _REGISTRY)


def learned_methods() -> tuple[EmbeddingMethod, ...]:
    """Every registered method that builds on a plain base (its options are `LearnedOptions`)."""
    return tuple(m for m in registered_methods() if _is_learned(m))


def _is_learned(method: EmbeddingMethod) -> bool:
    return issubclass(_METHOD_OPTIONS.get(method, object), LearnedOptions)


def learned_options(method: EmbeddingMethod) -> type[LearnedOptions]:
    """The options dataclass of a learned method: what it reads from `embedding.options` and
    how it sizes a benchmark row (`LearnedOptions.at_budget`)."""
    if not _is_learned(method):
        learned = ", ".join(m.value for m in learned_methods())
        raise ConfigError(
            f"embedding method {method.value!r} is not a learned method (one of: {learned})"
        )
    return _METHOD_OPTIONS[method]


def method_class(method: EmbeddingMethod) -> type[EmbeddingTables]:
    """The class registered as `method` (e.g. a learned method building on a base's plan)."""
    if method not in _REGISTRY:
        raise ConfigError(f"embedding method {method.value!r} has no implementation")
    return _REGISTRY[method]


def build_embedding_tables(config: EmbeddingConfig, features: Sequence[Feature]) -> EmbeddingTables:
    """The tables of `config.method` for the sparse `features` (dense ones are ignored).

    Example:
        >>> tables = build_embedding_tables(EmbeddingConfig(method="hashing", budget=0.25), spec.sparse)
        >>> tables(batch.sparse).values().shape   # (B, sum(tables.output_dims().values()))
    """
    cls = _REGISTRY.get(config.method)
    if cls is None:
        raise ConfigError(
            f"embedding.method={config.method.value!r} has no implementation; "
            f"available: {', '.join(m.value for m in registered_methods())}"
        )
    return cls(config, features)
