"""The promotion gate: move the serving alias to a candidate version only when it is better.

`promote(config)` loads the candidate registered version and the one the alias (`export.alias`,
usually `champion`) points at, each through the service's own loading path (download, sha256
check, onnxruntime session, index, smoke queries), answers every held-out user of the job's
ingested test split with `Bundle.recommend_batch` as the service would, and computes Recall@K
and NDCG@K against the test items. The alias moves only when

    candidate[metric] >= champion[metric] + margin

(or when nothing holds the alias yet). Both bundles' metrics, the margin and the decision are
written as `plexus.promote.*` tags on the candidate version, promoted or not.

Example (`plexus promote retrieval_movielens promote.margin=0.002`), or as a step of `plexus run`
with `promote.gate=true` (the job then registers without the alias and calls the gate).
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from plexus.pipelines.retrieval.config import RetrievalJobConfig
    from plexus.pipelines.retrieval.data import Interactions
    from plexus.serving.bundle import Bundle

__all__ = ["GateMetric", "PromoteConfig", "Promotion", "evaluate_bundle", "promote"]

TAG = "plexus.promote"


class GateMetric(StrEnum):
    """What the gate compares: Recall@K or NDCG@K of the served candidates."""

    RECALL = "recall"
    NDCG = "ndcg"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromoteConfig:
    """The `promote:` section of a retrieval job.

    `gate`: `plexus run` / `plexus export` register the new version without moving
    `export.alias` and let this gate move it. `metric`@`k` is compared with `margin` (absolute);
    `diversify` picks the service's retrieval mode (kNN-Embed mixture, its default, or single
    vector); `max_users` caps the held-out users evaluated (a seeded sample; None: all).
    """

    gate: bool = False
    metric: GateMetric = GateMetric.NDCG
    k: int = 20
    margin: float = 0.0
    diversify: bool = True
    max_users: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        coerce_choice(self, "metric", GateMetric, "promote.metric")
        if self.k < 1:
            raise ConfigError(f"promote.k: must be >= 1, got {self.k}")
        if not -1.0 <= self.margin <= 1.0:
            raise ConfigError(
                f"promote.margin: an absolute metric difference in [-1, 1], got {self.margin}"
            )
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"promote.max_users: must be >= 1 or null, got {self.max_users}")
        if self.batch_size < 1:
            raise ConfigError(f"promote.batch_size: must be >= 1, got {self.batch_size}")

    @property
    def key(self) -> str:
        """The compared metric's name, e.g. `ndcg@20`."""
        return f"{self.metric.value}@{self.k}"


@dataclasses.dataclass(frozen=True)
class Promotion:
    """The gate's outcome. `decision`: promoted, no-champion (promoted: nothing held the alias),
    rejected, or already-champion (the candidate holds the alias; nothing to do)."""

    model: str
    alias: str
    candidate: str
    champion: str | None
    decision: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    metric: str
    margin: float
    users: int

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "no-champion")

    def summary(self) -> str:
        """One line for logs and the CLI."""
        got = self.candidate_metrics[self.metric]
        if self.decision == "already-champion":
            return (
                f"{self.decision}: v{self.candidate} holds @{self.alias} ({self.metric} {got:.4f})"
            )
        if self.champion_metrics is None:
            return (
                f"{self.decision}: v{self.candidate} -> @{self.alias} ({self.metric} {got:.4f}; "
                "nothing held the alias)"
            )
        best = self.champion_metrics[self.metric]
        sign = ">=" if got >= best + self.margin else "<"
        return (
            f"{self.decision}: candidate v{self.candidate} {self.metric} {got:.4f} {sign} "
            f"champion v{self.champion} {best:.4f} + margin {self.margin:g} "
            f"({self.users} held-out users)"
        )


def evaluate_bundle(
    bundle: Bundle,
    data: Interactions,
    *,
    k: int,
    diversify: bool = True,
    users: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Recall@k and NDCG@k of what `bundle` serves, on the test lists of `data`.

    Each held-out user is queried as a client would: its external id and its training items
    (external ids, oldest first) as `history`, the training items excluded. Ids the bundle does
    not know are skipped by the bundle, exactly as in the service; retrieved items that `data`
    does not know count as misses. `users`: internal ids of `data` (default: all with test items).
    """
    from plexus.pipelines.retrieval.evaluate import ranking_metrics, test_users

    chosen = test_users(data) if users is None else np.asarray(users, np.int64)
    order = np.argsort(data.item_ids[1:], kind="stable")
    known = data.item_ids[1:][order]
    sums = {"recall": 0.0, "ndcg": 0.0}
    for lo in range(0, chosen.size, batch_size):
        chunk = chosen[lo : lo + batch_size]
        histories = [data.item_ids[data.train_of(int(u))] for u in chunk]
        answers = bundle.recommend_batch(
            [int(u) for u in data.user_ids[chunk]],
            histories,
            k=k,
            diversify=diversify,
            excludes=histories,
        )
        top = np.full((chunk.size, k), -1, np.int64)
        for row, answer in enumerate(answers):
            ids = answer.item_ids[:k]
            pos = np.clip(np.searchsorted(known, ids), 0, max(known.size - 1, 0))
            hit = known.size > 0 and known[pos] == ids
            top[row, : ids.size] = np.where(hit, order[pos] + 1, -1)
        metrics = ranking_metrics(top, data, chunk, (k,))
        sums["recall"] += float(metrics[f"recall@{k}"].sum())
        sums["ndcg"] += float(metrics[f"ndcg@{k}"].sum())
    count = max(chosen.size, 1)
    return {f"{name}@{k}": value / count for name, value in sums.items()}


def promote(
    config: RetrievalJobConfig,
    *,
    candidate: str | None = None,
    data: Interactions | None = None,
    tracking_uri: str | None = None,
) -> Promotion:
    """Gate `candidate` (default: the newest version of `export.registered_model`) against the
    version holding `export.alias`, on the job's held-out test split; move the alias if it wins.

    `data`: the job's ingested interactions when the caller already has them (the job step);
    otherwise the job's data section is ingested (reused when unchanged).
    """
    from plexus.pipelines import tracking

    name, alias, gate = config.export.registered_model, config.export.alias, config.promote
    if not alias:
        raise ConfigError(
            "export.alias: the promotion gate moves this alias; set it (e.g. champion)"
        )
    uri = tracking.configure(tracking_uri or config.tracking.uri)
    client = _client(uri)
    candidate = candidate or _latest_version(client, name, uri)
    champion = _alias_version(client, name, alias)
    if data is None:
        from plexus.pipelines.retrieval.job import load_data

        data = load_data(config)
    users = _held_out_users(data, gate.max_users)
    if users.size == 0:
        raise RegistryError(
            f"{data.name}: no held-out test interactions to gate on; the job's data section "
            "must keep a test split (data.interactions.split)"
        )

    def measure(version: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="plexus-promote-") as cache:
            bundle = _load_served(name, version, uri, Path(cache))
            return evaluate_bundle(
                bundle,
                data,
                k=gate.k,
                diversify=gate.diversify,
                users=users,
                batch_size=gate.batch_size,
            )

    candidate_metrics = measure(candidate)
    champion_metrics = None
    if champion is None:
        decision = "no-champion"
    elif champion == candidate:
        decision = "already-champion"
    else:
        champion_metrics = measure(champion)
        better = candidate_metrics[gate.key] >= champion_metrics[gate.key] + gate.margin
        decision = "promoted" if better else "rejected"
    result = Promotion(
        model=name,
        alias=alias,
        candidate=candidate,
        champion=champion,
        decision=decision,
        candidate_metrics=candidate_metrics,
        champion_metrics=champion_metrics,
        metric=gate.key,
        margin=gate.margin,
        users=int(users.size),
    )
    if result.promoted:
        now = _alias_version(client, name, alias)
        if now != champion:
            raise RegistryError(
                f"{name}@{alias} moved from v{champion} to v{now} while the gate evaluated "
                f"v{candidate}; run `plexus promote` again"
            )
        client.set_registered_model_alias(name, alias, candidate)
    _write_tags(client, result, data)
    return result


def _client(uri: str) -> Any:  # -> mlflow.MlflowClient
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _latest_version(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise RegistryError(f"cannot list versions of {name!r} at {uri}: {exc}") from exc
    if not versions:
        raise RegistryError(
            f"{name!r} has no registered version at {uri}; run the job (`plexus run`) or "
            "`plexus export` first, or check export.registered_model and the tracking URI"
        )
    return str(max(int(v.version) for v in versions))


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        code = str(exc.error_code)
        if "RESOURCE_DOES_NOT_EXIST" in code or (
            "INVALID_PARAMETER" in code and "not found" in str(exc)
        ):
            return None
        raise RegistryError(f"cannot resolve {name}@{alias}: {exc}") from exc


def _held_out_users(data: Interactions, limit: int | None) -> np.ndarray:
    from plexus.pipelines.retrieval.evaluate import test_users

    users = test_users(data)
    if limit is not None and users.size > limit:
        users = np.sort(np.random.default_rng(0).choice(users, limit, replace=False))
    return users


def _load_served(name: str, version: str, uri: str, cache: Path) -> Bundle:
    """Version `version` of `name` loaded as the service loads it (download to `cache`,
    checksums, ONNX session, index, smoke queries); RegistryError naming the version if it
    cannot serve. The loaded bundle holds everything in memory: `cache` may go afterwards."""
    from plexus.serving.metrics import ServiceMetrics
    from plexus.serving.registry import BundleWatcher, ModelRef

    watcher = BundleWatcher(
        ModelRef(name=name, version=version),
        metrics=ServiceMetrics(),
        tracking_uri=uri,
        cache_dir=cache,
    )
    try:
        return watcher.load(version).bundle
    except RegistryError as exc:
        raise RegistryError(
            f"{name} v{version} cannot be served, so it cannot be gated: {exc}"
        ) from exc


def _write_tags(client: Any, result: Promotion, data: Interactions) -> None:
    """The gate's record on the candidate version (a later gate of the same version overwrites)."""
    source = Path(data.source).name if data.source else data.name  # the ingest's keyed folder
    tags: dict[str, str] = {
        f"{TAG}.decision": result.decision,
        f"{TAG}.metric": result.metric,
        f"{TAG}.margin": f"{result.margin:g}",
        f"{TAG}.alias": result.alias,
        f"{TAG}.champion_version": result.champion or "",
        f"{TAG}.held_out": f"{source} test split, {result.users} users",
        f"{TAG}.evaluated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    for side, metrics in (
        ("candidate", result.candidate_metrics),
        ("champion", result.champion_metrics),
    ):
        for key, value in (metrics or {}).items():
            tags[f"{TAG}.{side}.{key.replace('@', '_at_')}"] = f"{value:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(result.model, result.candidate, key, value)
