"""The CTR backbone interface, its config and registry.

A backbone maps one mini-batch (normalised dense features (B, Dn) and sparse ids as a
`KeyedJaggedTensor`) to click logits (B,). It owns its embedding tables (`self.embeddings`, built
from the `embedding:` section through the embedding registry) but no optimizer, device or loss.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import torch
from plexus.models.embeddings import (
    EmbeddingConfig,
    EmbeddingTables,
    build_embedding_tables,
    protocol,
)
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import FeatureSpec
from torch import nn
from torchrec import KeyedJaggedTensor


class Backbone(str, enum.Enum):  # noqa: UP042  (str mixin: plain `==` with config strings)
    """Registry keys of the backbones (`model.backbone` in a job config)."""

    LR = "lr"
    FM = "fm"
    DEEPFM = "deepfm"
    DCNV2 = "dcnv2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The `model:` section: which backbone and the sizes of its deep and cross parts."""

    backbone: Backbone = Backbone.DEEPFM
    hidden: tuple[int, ...] = (400, 400)
    dropout: float = 0.0
    cross_layers: int = 3
    batch_norm: bool = False

    def __post_init__(self) -> None:
        coerce_choice(self, "backbone", Backbone, "model.backbone")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(
                f"model.hidden={list(self.hidden)} must be positive layer widths, e.g. [400, 400]"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.cross_layers < 0:
            raise ConfigError(f"model.cross_layers={self.cross_layers} must be >= 0")


class CTRModel(nn.Module):
    """Base of every backbone: `forward(dense (B, Dn), sparse KJT) -> logits (B,)`.

    A backbone builds `embeddings` (and `first_order`, 1-wide per-id weights, if it has a linear
    part) and implements `interact` on their pooled outputs; `forward` (training, TorchRec) and
    `forward_padded` (export, plain gathers with the hash in the graph) share it.
    """

    embeddings: EmbeddingTables
    first_order: EmbeddingTables | None

    def __init__(self, model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.model_config = model
        self.embedding_config = embedding
        self.sparse_names = tuple(f.name for f in spec.sparse)
        self.num_dense = len(spec.dense)
        self._spec = spec
        self.first_order = None  # an instance attribute: a class default would shadow the module

    def build_tables(self, *, dim: int | None = None) -> EmbeddingTables:
        """Tables of the configured method over the spec's sparse features (`dim` overrides)."""
        config = self.embedding_config
        if dim is not None and dim != config.dim:
            config = dataclasses.replace(config, dim=dim)
        return build_embedding_tables(config, self._spec.sparse)

    def build_first_order(self) -> EmbeddingTables:
        """Width-1 per-id weights of a linear part: the method's base tables, never learned
        (`EmbeddingConfig.first_order_config`), at the same budget."""
        return build_embedding_tables(self.embedding_config.first_order_config(), self._spec.sparse)

    def embedding_parameters(self) -> int:
        """Parameters of every embedding table of the model (main and first-order), in the
        form they are served from (compact for a learned method)."""
        return sum(m.num_parameters() for m in self.modules() if isinstance(m, EmbeddingTables))

    def embedding_bytes(self) -> int:
        """Serving bytes of every embedding table of the model, index arrays included."""
        return sum(m.num_bytes() for m in self.modules() if isinstance(m, EmbeddingTables))

    def compact(self) -> CTRModel:
        """A copy whose tables are in their serving form (`EmbeddingTables.compact`): the model
        to export. Same logits as this model in eval mode."""
        import copy

        served = copy.deepcopy(self).eval()
        served.embeddings = served.embeddings.compact()
        if served.first_order is not None:
            served.first_order = served.first_order.compact()
        return served

    def interact(
        self, dense: torch.Tensor, embedded: torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        """dense (B, Dn), pooled embeddings (B, sum widths), pooled first-order weights (B, K) or
        None -> logits (B,)."""
        raise NotImplementedError

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        first = None if self.first_order is None else self.first_order(sparse).values()
        return self.interact(dense, self.embeddings(sparse).values(), first)

    def forward_padded(
        self, dense: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The export path: dense (B, Dn), ids (B, F, L) int64 raw ids padded per feature (F in
        spec sparse order), lengths (B, F) -> logits (B,), equal to `forward` on the same bags."""
        first = None
        if self.first_order is not None:
            first = self.first_order.forward_padded(ids, lengths)
        return self.interact(dense, self.embeddings.forward_padded(ids, lengths), first)


def stack_fields(pooled: torch.Tensor, tables: EmbeddingTables) -> torch.Tensor:
    """(B, F * D) pooled outputs -> (B, F, D) field vectors; needs equal feature widths."""
    widths = set(tables.output_dims().values())
    return pooled.view(pooled.shape[0], len(tables.feature_names), widths.pop())


def require_equal_widths(tables: EmbeddingTables, backbone: Backbone) -> None:
    """FM-style inner products need one width; unified chunks may give features different ones."""
    widths = tables.output_dims()
    if len(set(widths.values())) != 1:
        raise ConfigError(
            f"model.backbone={backbone.value} takes inner products between features, so every "
            f"feature needs the same embedding width, got {widths}; give every feature the same "
            "number of chunks (drop embedding.feature_chunks) or use backbone dcnv2"
        )


_REGISTRY: dict[Backbone, type[CTRModel]] = {}


def register_backbone(backbone: Backbone) -> Callable[[type], type]:
    """Class decorator: make a `CTRModel` subclass selectable as `model.backbone`."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CTRModel)):
            raise TypeError(f"{cls!r} must subclass CTRModel to be registered")
        _REGISTRY[backbone] = cls
        return cls

    return decorate


def registered_backbones() -> tuple[Backbone, ...]:
    return tuple(b for b in Backbone if b in _REGISTRY)


def build_ctr_model(model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> CTRModel:
    """The backbone of `model.backbone` with embeddings of `embedding.method` for `spec`.

    Example:
        >>> net = build_ctr_model(ModelConfig(backbone="dcnv2"), EmbeddingConfig(dim=16), spec)
        >>> logits = net(batch.dense, batch.sparse)   # (B,)
    """
    cls = _REGISTRY.get(model.backbone)
    if cls is None:
        raise ConfigError(f"model.backbone={model.backbone.value!r} has no implementation")
    return protocol.bind_model(cls(model, embedding, spec))
