"""Typed configs of the retrieval models (frozen, keyword-only, validated on construction)."""

from __future__ import annotations

import dataclasses
import enum

from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError


class LossKind(enum.StrEnum):
    """`cosine_contrastive`: SimpleX's CCL (margin on negatives); `sampled_softmax`: InfoNCE."""

    COSINE_CONTRASTIVE = "cosine_contrastive"
    SAMPLED_SOFTMAX = "sampled_softmax"


class HistoryPick(enum.StrEnum):
    """Which training items make a user's history when it has more than `history_len`: `last`,
    the latest (the log's time, or the file's order where it has none); `sample`, a seeded
    random sample (the same in training, evaluation and export). Gowalla's LightGCN files
    list each user's items in ascending raw id, with no time: there `last` takes the user's
    newest-catalogued items, whose mean popularity is a quarter of the user's (measured)."""

    LAST = "last"
    SAMPLE = "sample"


class QueryVariant(enum.StrEnum):
    """kNN-Embed component queries: `shared` = the user vector for every interest;
    `per_cluster` = the user vector mixed with the mean of the user's items in that interest."""

    SHARED = "shared"
    PER_CLUSTER = "per_cluster"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TwoTowerConfig:
    """Two-tower / MF shape. User vector = normalize(g * e_user + (1 - g) * W mean(e_history)),
    with g = `user_weight` (only the parts present are mixed); items = normalize(e_item).

    `side_features`: the towers also take the data's side features (MovieLens: gender, age,
    occupation, zip3 / year, genres), summed into e_user and e_item; data without side
    features (Gowalla) trains the id-only towers either way. `item_id_dropout`: the fraction of
    items whose id embedding a training step leaves out, so that the features alone also rank
    (the vector that a catalog item never seen in training gets; DropoutNet, Volkovs 2017).
    `side_center`: the side features' vectors are summed relative to their mean over the trained
    entities, so an offset shared by a feature's rows cannot move every item at once (uncentred,
    MovieLens' items collapsed into one narrow cone; see `TwoTower`).
    `history_table`: the history's items are looked up in a table of their own, trained through
    the user tower (SimpleX's separate user-history feature, SVD++'s implicit factors), instead
    of the item tower's rows; by id only. `user_dropout`: dropout on the unit user vector while
    training (SimpleX's `net_dropout`, 0.1 in its Gowalla config). `history_attention`: the
    history is pooled with weights softmax_i(tanh(W_k h_i + b_k) . e_user) instead of the mean
    (SimpleX's `user_attention` aggregator, its Gowalla choice); a user without an id vector
    (a new user) gets equal weights, the mean.
    """

    dim: int = 64
    history_len: int = 50
    history_pick: HistoryPick = HistoryPick.LAST
    user_weight: float = 0.5
    use_user_id: bool = True
    use_history: bool = True
    project_history: bool = False  # a learned (D, D) map on the history mean, as in SimpleX
    history_grad: bool = True  # False: history items get no gradient (MF-cost training)
    history_table: bool = False  # history items have rows of their own (SimpleX, SVD++'s y_j)
    history_attention: bool = False  # weigh history items by attention to the user id vector
    init_std: float = 0.1
    user_dropout: float = 0.0  # dropout on the unit user vector in training (SimpleX's net_dropout)
    side_features: bool = True
    item_id_dropout: float = 0.25
    side_center: bool = True

    def __post_init__(self) -> None:
        coerce_choice(self, "history_pick", HistoryPick, "model.history_pick")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ConfigError(
                f"model.item_id_dropout: must be in [0, 1), got {self.item_id_dropout}"
            )
        if not 0.0 <= self.user_dropout < 1.0:
            raise ConfigError(f"model.user_dropout: must be in [0, 1), got {self.user_dropout}")
        if self.dim < 1:
            raise ConfigError(f"model.dim: must be >= 1, got {self.dim}")
        if self.history_len < 1:
            raise ConfigError(f"model.history_len: must be >= 1, got {self.history_len}")
        if not 0.0 <= self.user_weight <= 1.0:
            raise ConfigError(f"model.user_weight: must be in [0, 1], got {self.user_weight}")
        if not (self.use_user_id or self.use_history):
            raise ConfigError("model: set use_user_id or use_history (or both) to true")
        if self.history_attention and not (
            self.use_user_id and self.use_history and self.history_grad
        ):
            raise ConfigError(
                "model.history_attention: attends from the user id vector over the history and "
                "learns through it; set model.use_user_id, use_history and history_grad to true"
            )
        if self.history_table and not (self.history_grad and self.use_history):
            raise ConfigError(
                "model.history_table: the history's own rows learn only through the history; "
                "set model.history_grad=true and model.use_history=true, or history_table=false"
            )
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std: must be > 0, got {self.init_std}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class KnnEmbedConfig:
    """kNN-Embed: `num_clusters` spherical k-means interests; each user's interest distribution
    is mixed with the mean of its `neighbors` nearest users' with weight `smoothing`."""

    num_clusters: int = 64
    kmeans_iters: int = 25
    neighbors: int = 10
    smoothing: float = 0.3
    query_variant: QueryVariant = QueryVariant.PER_CLUSTER
    component_mix: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_choice(self, "query_variant", QueryVariant, "knn_embed.query_variant")
        if self.num_clusters < 1:
            raise ConfigError(f"knn_embed.num_clusters: must be >= 1, got {self.num_clusters}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"knn_embed.kmeans_iters: must be >= 1, got {self.kmeans_iters}")
        if self.neighbors < 1:
            raise ConfigError(f"knn_embed.neighbors: must be >= 1, got {self.neighbors}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"knn_embed.smoothing: must be in [0, 1], got {self.smoothing}")
        if not 0.0 <= self.component_mix <= 1.0:
            raise ConfigError(
                f"knn_embed.component_mix: must be in [0, 1], got {self.component_mix}"
            )
