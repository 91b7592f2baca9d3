"""The feature spec: how raw columns became model ids, saved beside the shards.

Built from the training split only by the ingest job and read by training, export and serving,
so every stage agrees on ids. Conventions for the encoded Parquet columns:

* `vocab` (categorical or multi-valued): id 0 is the OOV bucket (missing values and values seen
  fewer than `min_count` times in training); ids 1..V follow `vocabulary` order.
* `hash`: id = `bucketize_ids(hash_strings(value), seed, num_buckets)`; see `plexus.platform.hashing`.
* `bucketize` (numeric -> categorical): id 0 = missing; otherwise `1 + min(bucket(x), B - 2)` with
  `bucket(x) = floor(log(x)^2)` for x > 2 and `x` clipped at 0 otherwise (the Criteo-winning
  transform); `cardinality` = B.
* `normalize` (numeric -> dense float32): `(x - mean) / std`, missing -> 0.

Single-valued sparse columns are `int64`; multi-valued ones `list<int64>`; dense ones `float32`;
the label column is `float32` in {0, 1}.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from typing import Any

from plexus.platform.errors import DataError

SPEC_FORMAT_VERSION = 1
SPEC_FILENAME = "feature_spec.json"


class FeatureKind(str, enum.Enum):
    CATEGORICAL = "categorical"
    MULTI_CATEGORICAL = "multi_categorical"
    NUMERIC = "numeric"


class Encoding(str, enum.Enum):
    VOCAB = "vocab"
    HASH = "hash"
    BUCKETIZE = "bucketize"
    NORMALIZE = "normalize"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Feature:
    """One encoded feature. `cardinality` is the id range `[0, cardinality)` of sparse features."""

    name: str
    kind: FeatureKind
    encoding: Encoding
    cardinality: int = 0
    vocabulary: tuple[str, ...] = ()
    min_count: int = 1
    seed: int = 0
    mean: float = 0.0
    std: float = 1.0
    max_length: int = 1

    @property
    def is_sparse(self) -> bool:
        return self.encoding is not Encoding.NORMALIZE

    @property
    def is_multi_valued(self) -> bool:
        return self.kind is FeatureKind.MULTI_CATEGORICAL


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """All features of a dataset, in column order, with the label and provenance."""

    name: str
    label: str
    features: tuple[Feature, ...]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    format_version: int = SPEC_FORMAT_VERSION
    # Retrieval logs: the features of each entity, its id first, e.g. {"user": ["user_id",
    # "gender"], "item": ["item_id", "genres"]}. Empty for CTR data (and then not serialized,
    # so CTR specs keep their bytes and fingerprints).
    groups: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def group(self, name: str) -> tuple[Feature, ...]:
        """The features of entity `name` ("user", "item"), its id feature first."""
        if name not in self.groups:
            raise DataError(
                f"spec {self.name!r} has no {name!r} features (groups: {sorted(self.groups)}); "
                "ingest the log with data.interactions set"
            )
        return tuple(self[f] for f in self.groups[name])

    @property
    def sparse(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.is_sparse)

    @property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if not f.is_sparse)

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature {name!r} in spec {self.name!r}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal specs give equal bytes. Cached: the spec is frozen."""
        cached = self.__dict__.get("_json")
        if cached is None:
            # Built by hand: dataclasses.asdict deep-copies every vocabulary entry (slow for 1M).
            data = {
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in ("features", "groups")
            }
            if self.groups:
                data["groups"] = {k: list(v) for k, v in self.groups.items()}
            data["features"] = [
                {
                    **{f.name: getattr(feature, f.name) for f in dataclasses.fields(feature)},
                    "kind": feature.kind.value,
                    "encoding": feature.encoding.value,
                    "vocabulary": list(feature.vocabulary),
                }
                for feature in self.features
            ]
            cached = json.dumps(data, indent=1, sort_keys=True)
            object.__setattr__(self, "_json", cached)
        return cached

    @property
    def fingerprint(self) -> str:
        """A short content hash: two specs with the same fingerprint encode identically."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        version = data.get("format_version")
        if version != SPEC_FORMAT_VERSION:
            raise DataError(
                f"feature spec format {version} is not supported (expected {SPEC_FORMAT_VERSION}); "
                "re-run `plexus ingest` to rebuild it"
            )
        features = tuple(
            Feature(
                **{
                    **f,
                    "kind": FeatureKind(f["kind"]),
                    "encoding": Encoding(f["encoding"]),
                    "vocabulary": tuple(f["vocabulary"]),
                }
            )
            for f in data.pop("features")
        )
        groups = {k: tuple(v) for k, v in data.pop("groups", {}).items()}
        return cls(features=features, groups=groups, **data)

    def save(self, directory: str | Path) -> Path:
        """Write `feature_spec.json` atomically into `directory`."""
        path = Path(directory) / SPEC_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Read a spec from a `feature_spec.json` file or the folder that holds one."""
        file = Path(path)
        if file.is_dir():
            file = file / SPEC_FILENAME
        if not file.is_file():
            raise DataError(f"feature spec not found: {file}; run `plexus ingest` first")
        try:
            return cls.from_json(file.read_text())
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{file}: not a valid feature spec: {exc}") from exc
