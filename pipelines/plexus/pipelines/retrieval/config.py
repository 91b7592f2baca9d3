"""The retrieval job config: typed sections data / model / train / knn_embed / export / promote /
tracking.

Example (`pipelines/configs/retrieval_movielens.yaml`), any key overridable as `section.key=value`:

    name: movielens
    data: {format: movielens, path: ../shared/data/movielens_100k/u.data,
           interactions: {min_rating: 4, split: leave_last}}
    model: {dim: 64, history_len: 50}
    train: {epochs: 40, batch_size: 512}
    knn_embed: {num_clusters: 16, neighbors: 10, smoothing: 0.3}
    export: {registered_model: plexus-retrieval-movielens}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from plexus.models.embeddings import EmbeddingConfig
from plexus.models.retrieval import KnnEmbedConfig, TwoTowerConfig
from plexus.pipelines.config import TrackingConfig
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.promote import PromoteConfig
from plexus.pipelines.retrieval.train import RetrievalTrainConfig
from plexus.platform import config as config_io
from plexus.platform.errors import ConfigError
from plexus.serving.knn_embed import AllocationConfig
from plexus.serving.user_state import UserStateConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalEvalConfig:
    """Cut-offs of the full-ranking and kNN-Embed evaluation."""

    ks: tuple[int, ...] = (20, 50, 100, 200)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks: must be a non-empty list of positive ints, got {self.ks}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalExportConfig:
    """The bundle: registered model name, alias set on the new version, index, allocation and
    the compact user state (`user_state.top_clusters` per known user, the new-user sample).

    `popularity_prior`: every retrieval (single-vector and kNN-Embed, offline and served) ranks
    by cosine + `popularity_prior * log(1 + training interactions of the item)`
    (`plexus.serving.index.popularity_prior`); 0 = cosine alone. Chosen on the validation
    hold-out by `plexus bench retrieval --tune-prior`."""

    registered_model: str = "plexus-retrieval"
    alias: str | None = "champion"
    nprobe: int | None = None  # None: exact (all lists) below 200k items
    popularity_prior: float = 0.0
    allocation: AllocationConfig = AllocationConfig()
    user_state: UserStateConfig = UserStateConfig()

    def __post_init__(self) -> None:
        if not self.registered_model:
            raise ConfigError("export.registered_model: must be a non-empty name")
        if self.nprobe is not None and self.nprobe < 1:
            raise ConfigError(f"export.nprobe: must be >= 1 or null, got {self.nprobe}")
        if not math.isfinite(self.popularity_prior):
            raise ConfigError(
                f"export.popularity_prior: must be a finite number, got {self.popularity_prior}"
            )

    @property
    def stored_user_state(self) -> UserStateConfig:
        """`user_state` keeping at most `allocation.max_components` clusters a user."""
        return self.user_state.capped(self.allocation.max_components)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalJobConfig:
    """ingest -> train (Ray Train) -> kNN-Embed fit -> evaluate -> export -> register
    (-> promotion gate, with `promote.gate`).

    `data` is the platform's ingest section, with `data.interactions` set (format lightgcn
    sets it): the log goes through the same ingest job as CTR data. `embedding` is the CTR
    job's section: the towers' tables (None: full tables of width `model.dim`)."""

    name: str
    data: DataConfig
    model: TwoTowerConfig = TwoTowerConfig()
    embedding: EmbeddingConfig | None = None
    train: RetrievalTrainConfig = RetrievalTrainConfig()
    knn_embed: KnnEmbedConfig = KnnEmbedConfig()
    eval: RetrievalEvalConfig = RetrievalEvalConfig()
    export: RetrievalExportConfig = RetrievalExportConfig()
    promote: PromoteConfig = PromoteConfig()
    tracking: TrackingConfig = TrackingConfig(experiment="plexus-retrieval")
    output: str | None = None  # runs folder; None -> ./runs (or PLEXUS_RUNS_DIR)
    use_ray: bool = True  # False trains in-process (tests, debugging)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: must be a non-empty string without '/', got {self.name!r}")
        if self.data.interactions is None:
            raise ConfigError(
                "data.interactions: a retrieval job reads an interaction log; add e.g. "
                "`interactions: {min_rating: 4, split: leave_last}` under data (format "
                "lightgcn needs nothing)"
            )
        if self.promote.gate and not self.export.alias:
            raise ConfigError(
                "promote.gate: the gate moves export.alias, which is null; set export.alias "
                "(e.g. champion) or promote.gate=false"
            )

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the given sections (all if none): equal hashes mean the same model."""
        return config_io.fingerprint(self, *sections)


def load_retrieval_config(
    path: str | Path | None, overrides: Sequence[str] = ()
) -> RetrievalJobConfig:
    """Load a retrieval job YAML plus `key=value` overrides; errors name the file and key."""
    return config_io.load(RetrievalJobConfig, path, overrides)


def is_retrieval_config(path: str | Path) -> bool:
    """Whether a job YAML is a retrieval job (it has a `knn_embed` section), so that
    `plexus run` can dispatch on the file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "knn_embed" in data


def bundled_retrieval_config(fmt: str) -> Path:
    """The shipped config for a data format: `movielens` or `lightgcn` (Gowalla)."""
    name = {"movielens": "retrieval_movielens", "lightgcn": "retrieval_gowalla"}.get(fmt)
    if name is None:
        raise ConfigError(f"no retrieval config for format {fmt!r}; use movielens or lightgcn")
    return Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
