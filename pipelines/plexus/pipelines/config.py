"""The job config: one YAML file per dataset, validated into typed sections.

Example (`pipelines/configs/criteo.yaml`), any key overridable as `section.key=value`:

    name: criteo
    data: {format: criteo, path: data/train.txt, min_count: 2}
    model: {backbone: deepfm, hidden: [400, 400]}
    embedding: {method: full, dim: 16}
    train: {batch_size: 2048, epochs: 10, lr: 0.001}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from plexus.models.backbones import ModelConfig
from plexus.models.embeddings import EmbeddingConfig
from plexus.pipelines.daily.ids import DailyConfig
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.train.sharding import ShardingConfig
from plexus.platform import config as config_io
from plexus.platform.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and the Ray Train set-up."""

    batch_size: int = 2048
    eval_batch_size: int = 8192
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0  # Adam L2 of every parameter
    embedding_weight_decay: float | None = None  # the tables' own L2; None: weight_decay
    patience: int = 2  # epochs without a better validation AUC before stopping
    # After an epoch without a better validation AUC: every learning rate times this factor
    # (at least MIN_LR) and the model back to its best weights, as FuxiCTR's
    # reduce_lr_on_plateau (factor 0.1) does for the BARS benchmarks. 0: off.
    reduce_lr_on_plateau: float = 0.0
    # Epochs without a better validation AUC before each cut (Keras's ReduceLROnPlateau
    # patience; FuxiCTR cuts after every such epoch: 1). The count restarts after a cut.
    reduce_lr_patience: int = 1
    seed: int = 0
    workers: int = 1  # Ray Train workers: tables sharded (TorchRec), dense part data parallel
    threads_per_worker: int = 0  # torch intra-op threads; 0 = cores / workers
    shuffle_buffer: int = 100_000  # rows in the local shuffle buffer of each worker
    max_failures: int = 1  # worker restarts from the last checkpoint before the job fails
    search_workers: int = 0  # parallel fitness evaluations of a search stage; 0 = one per core
    sharding: ShardingConfig = ShardingConfig()  # how tables shard when workers > 1

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "epochs", "workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        for key in ("weight_decay", "embedding_weight_decay"):
            if (getattr(self, key) or 0.0) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.reduce_lr_on_plateau < 1.0:
            raise ConfigError(
                "train.reduce_lr_on_plateau must be in [0, 1) (a factor, e.g. 0.1; 0 is off), "
                f"got {self.reduce_lr_on_plateau}"
            )
        if self.reduce_lr_patience < 1:
            raise ConfigError(
                "train.reduce_lr_patience must be >= 1 (epochs without a better validation AUC "
                f"before each cut of the learning rate), got {self.reduce_lr_patience}"
            )
        for key in ("patience", "threads_per_worker", "max_failures", "search_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are tracked: `uri` None means MLFLOW_TRACKING_URI or the embedded SQLite store."""

    uri: str | None = None
    experiment: str = "plexus"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
    """A CTR job: ingest -> train -> evaluate."""

    name: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    daily: DailyConfig = DailyConfig()  # `plexus daily`: id admission and eviction over days
    output: str | None = None  # runs folder; None -> ./runs (or PLEXUS_RUNS_DIR)
    use_ray: bool = True  # False trains in this process, one worker (`train.local`)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty string without '/', got {self.name!r}")
        if not self.use_ray and self.train.workers > 1:
            raise ConfigError(
                f"use_ray: false trains in this process with one worker, got train.workers="
                f"{self.train.workers}; set train.workers=1 or use_ray=true"
            )

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the given sections (all if none): equal hashes mean the same work."""
        return config_io.fingerprint(self, *sections)

    def training_key(self, data_fingerprint: str, *, init: str | None = None) -> str:
        """What decides a training run's result: the data, model, embedding and train sections,
        the ingested data (its spec fingerprint), the initial weights (`init`, a hash) and
        whether it runs in this process (other batches: a whole-split shuffle)."""
        key = f"{self.fingerprint('data', 'model', 'embedding', 'train')}:{data_fingerprint}"
        key += f":{init}" if init else ""
        return key if self.use_ray else key + ":in-process"


def load_job_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> JobConfig:
    """Load a job YAML plus `key=value` overrides; errors name the file and the key.

    `data.path=...` given without `data.valid_path` and `data.test_path` means "split this file":
    the config file's own validation and test files (the bundled sample's, say) are dropped,
    so a model is never validated and tested on data the user did not name.
    """
    return config_io.load(JobConfig, path, [*overrides, *_split_the_new_path(overrides)])


def _split_the_new_path(overrides: list[str] | tuple[str, ...]) -> list[str]:
    keys = {item.partition("=")[0].strip() for item in overrides}
    if "data.path" not in keys or keys & {"data.valid_path", "data.test_path"}:
        return []
    return ["data.valid_path=null", "data.test_path=null"]


CONFIGS_DIR = Path(__file__).parent / "configs"
TUNED_DIR = CONFIGS_DIR / "tuned"


def config_path(name: str | Path) -> Path:
    """A YAML path as given, or the bundled config of that name (`criteo`, `movielens_1m`)."""
    path = Path(name)
    text = str(name)
    if not path.exists() and "/" not in text and not text.endswith((".yaml", ".yml")):
        path = bundled_config(text)
    return path


def tuned_config(config: str, backbone: str) -> Path | None:
    """The bundled tuned config of `backbone` on `config`'s dataset (`configs/tuned/<config>-
    <backbone>.yaml`: a `best.yaml` of `plexus tune`, or a recipe chosen on validation by hand),
    if there is one."""
    path = TUNED_DIR / f"{config}-{backbone}.yaml"
    return path if path.is_file() else None


def bundled_config(name: str) -> Path:
    """The path of an example config shipped with Plexus (`criteo`, `avazu`, `movielens`, ...)."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no bundled config {name!r}; available: {', '.join(available)}")
    return path
