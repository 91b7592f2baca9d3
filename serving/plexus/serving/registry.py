"""Which bundle serves: resolve the registry alias, download, load, warm, and swap atomically.

`ModelRef` parses `NAME@ALIAS` / `NAME/VERSION` / `models:/...` / a local folder.
`BundleWatcher` owns the serving `Bundle`: it loads the first one, then polls the alias on a
daemon thread; when the alias moves it downloads and loads the new version *beside* the old
one, runs smoke queries on it, and only then replaces the reference (a single attribute
store, atomic under the GIL). Requests read `watcher.current` once and keep that bundle for
their whole computation, so none sees a half-loaded model. A bundle that fails to download,
load or pass the smoke queries is refused: the old one keeps serving, the reason is logged
and exported as `plexus_model_last_refusal_info`. While the registry cannot be reached the
loaded bundle keeps serving (and `/readyz` stays ready); the poll interval doubles after each
failed poll, up to `MAX_BACKOFF` seconds, and returns to normal at the first answer.

mlflow is imported lazily (mlflow-skinny is enough): a local folder needs no MLflow at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from plexus.platform.errors import ConfigError, PlexusError, RegistryError, require
from plexus.serving.bundle import Bundle
from plexus.serving.engine import Catalog
from plexus.serving.metrics import ServiceMetrics

__all__ = ["ModelRef", "BundleWatcher", "smoke_test"]

log = logging.getLogger("plexus.serving")
MAX_BACKOFF = 300.0  # seconds between polls at most while the registry is unreachable


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed `--model` value: a registered model with an alias or version, or a folder."""

    name: str = ""
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`NAME@ALIAS`, `NAME` (alias champion), `NAME/VERSION`, `models:/NAME@ALIAS`, or a
        path to a bundle folder (anything that exists on disk or contains an OS separator)."""
        raw = text.strip()
        if not raw.startswith("models:/") and (Path(raw).exists() or raw.startswith((".", "/"))):
            return cls(name=Path(raw).name, path=Path(raw))
        spec = raw.removeprefix("models:/")
        if "@" in spec:
            name, alias = spec.split("@", 1)
            ref = cls(name=name, alias=alias)
        elif "/" in spec:
            name, version = spec.split("/", 1)
            ref = cls(name=name, version=version)
        else:
            ref = cls(name=spec, alias="champion")
        if not ref.name or (ref.alias is not None and not ref.alias) or ref.version == "":
            raise ConfigError(f"serve.model: cannot parse {text!r}; use NAME@ALIAS or NAME/VERSION")
        return ref

    @property
    def polls(self) -> bool:
        """Only an alias can move; a pinned version or a folder is loaded once."""
        return self.alias is not None

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def release_memory() -> None:
    """Give freed heap pages back to the OS after a bundle is dropped.

    glibc keeps freed memory in per-thread arenas: a service that swaps bundles (loaded on the
    watcher's thread, used on the request threads) grew by about a bundle per swap in a soak
    (+142 MiB over 5 swaps of a 100k-item bundle) while an in-process load loop plateaued.
    `malloc_trim(0)` returns it; elsewhere than glibc this is a no-op.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def smoke_test(bundle: Bundle, *, k: int = 10, rounds: int = 3) -> None:
    """Run the query paths the service uses (user, history, batch; both modes) a few times:
    warms onnxruntime and faiss and fails with RegistryError on a bundle that answers badly."""
    users = bundle.user_ids[1 : min(bundle.num_users, 4) + 1].tolist()
    items = bundle.item_ids[1 : min(bundle.num_items, 8) + 1].tolist()
    want = min(k, bundle.num_items)
    for _ in range(rounds):
        for diversify in (True, False):
            answers = bundle.recommend_batch(
                [*users, None], [[]] * len(users) + [items], k=k, diversify=diversify
            )
            answers.append(bundle.recommend(history=items, k=k, diversify=diversify))
            for answer in answers:
                if answer.item_ids.size == 0:
                    raise RegistryError(f"smoke query returned no items (diversify={diversify})")
                if not np.isfinite(answer.scores).all():
                    raise RegistryError(
                        f"smoke query returned non-finite scores (diversify={diversify})"
                    )
                if (
                    answer.item_ids.size > want
                    or np.unique(answer.item_ids).size != answer.item_ids.size
                ):
                    raise RegistryError("smoke query returned duplicate or too many items")


class BundleWatcher:
    """Holds the serving bundle and follows the registry alias (see the module docstring).

    `current` (a `Catalog`: the bundle and its id tables) is None until the first bundle is
    loaded and warmed.
    """

    def __init__(
        self,
        ref: ModelRef,
        *,
        metrics: ServiceMetrics,
        tracking_uri: str | None = None,
        poll_interval: float = 30.0,
        cache_dir: str | Path | None = None,
        threads: int = 1,
        on_swap: Callable[[Catalog], None] | None = None,
    ) -> None:
        self.ref = ref
        self.metrics = metrics
        self.tracking_uri = tracking_uri
        self.poll_interval = poll_interval
        self.threads = threads
        self.on_swap = on_swap
        self.current: Catalog | None = None
        self.refused: dict[str, str] = {}  # version -> reason; not retried until the alias moves
        self._owned_cache = cache_dir is None
        self._cache = Path(cache_dir or tempfile.mkdtemp(prefix="plexus-serve-"))
        self._cache.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._lock = threading.Lock()  # one load at a time
        self.failed_polls = 0  # consecutive polls that could not reach the registry
        self._swapped = False  # a swap happened since the last poll: release the old bundle

    # ---- registry ---------------------------------------------------------------------------
    def _mlflow_client(self):  # -> mlflow.MlflowClient
        if self._client is None:
            require("mlflow", "serve")
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    def resolve(self) -> str:
        """The version the reference points at now (the folder name for a local bundle)."""
        if self.ref.path is not None:
            return self.ref.path.name
        if self.ref.version is not None:
            return self.ref.version
        try:
            mv = self._mlflow_client().get_model_version_by_alias(self.ref.name, self.ref.alias)
        except Exception as exc:  # mlflow raises its own exception types
            raise RegistryError(
                f"cannot resolve {self.ref} in the registry at {self.tracking_uri or 'MLFLOW_TRACKING_URI'}: "
                f"{exc}; check the model name, the alias and the tracking URI"
            ) from exc
        return str(mv.version)

    def _download(self, version: str) -> Path:
        if self.ref.path is not None:
            return self.ref.path
        import mlflow.artifacts

        target = self._cache / f"{self.ref.name}-v{version}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        try:
            # The version's source, asked of this watcher's registry: MLflow resolves a
            # `models:/` URI through the process-wide registry URI, ignoring the one passed.
            source = self._mlflow_client().get_model_version_download_uri(self.ref.name, version)
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(target), tracking_uri=self.tracking_uri
            )
        except Exception as exc:
            raise RegistryError(f"cannot download {self.ref.name} v{version}: {exc}") from exc
        path = Path(folder)
        if not (path / "bundle.json").is_file() and (path / "bundle" / "bundle.json").is_file():
            path = path / "bundle"
        return path

    # ---- load / swap ------------------------------------------------------------------------
    def load(self, version: str) -> Catalog:
        """Download, load and smoke-test `version`; RegistryError (with the cause) if it fails."""
        started = time.perf_counter()
        try:
            bundle = Bundle.load(self._download(version), version=version, threads=self.threads)
            smoke_test(bundle)
            catalog = Catalog(bundle)
        except PlexusError:
            raise
        except Exception as exc:  # a corrupt file can raise anything from numpy/onnxruntime/faiss
            raise RegistryError(f"{type(exc).__name__}: {exc}") from exc
        log.info("loaded %s v%s in %.1f s", self.ref.name, version, time.perf_counter() - started)
        return catalog

    def _switch(self, catalog: Catalog) -> None:
        old = self.current.bundle if self.current is not None else None
        self.current = catalog  # the atomic switch
        bundle = catalog.bundle
        self.metrics.model_info.replace(bundle.name, bundle.version)
        self.metrics.model_loaded_at.set(value=time.time())
        self.metrics.swaps.inc()
        self.metrics.ready.set(value=1.0)
        if self.on_swap is not None:
            self.on_swap(catalog)
        if old is not None:
            log.info("switched %s from v%s to v%s", self.ref.name, old.version, bundle.version)
        self._prune(keep={bundle.path, old.path if old else None})
        self._swapped = True

    def _refuse(self, version: str, reason: str) -> None:
        """Remember why `version` cannot be served (it is not retried) and drop its download."""
        self.refused[version] = reason
        if self.ref.path is None:
            shutil.rmtree(self._cache / f"{self.ref.name}-v{version}", ignore_errors=True)
        self.metrics.refusals.inc(version)
        self.metrics.last_refusal.replace(version, reason[:300], value=time.time())
        serving = self.current.bundle.version if self.current is not None else "none"
        log.error("refused %s v%s: %s (still serving v%s)", self.ref.name, version, reason, serving)

    def _prune(self, keep: set[Path | None]) -> None:
        """Remove downloaded folders other than the serving and the previous one."""
        if self.ref.path is not None:
            return
        for child in self._cache.glob(f"{self.ref.name}-v*"):
            if not any(k is not None and k.is_relative_to(child) for k in keep):
                shutil.rmtree(child, ignore_errors=True)

    def check(self) -> bool:
        """Resolve the reference once; load and switch if it moved. True if a switch happened."""
        with self._lock:
            if self._swapped:  # the requests that held the old bundle have finished by now
                self._swapped = False
                release_memory()
            try:
                version = self.resolve()
            except RegistryError as exc:
                self.failed_polls += 1
                self.metrics.registry_errors.inc()
                log.warning(
                    "%s (poll %d failed; next in %.0f s)", exc, self.failed_polls, self.next_wait()
                )
                return False
            if self.failed_polls:
                log.info("registry reachable again after %d failed polls", self.failed_polls)
                self.failed_polls = 0
            if self.current is not None and self.current.bundle.version == version:
                return False
            if version in self.refused:
                return False
            try:
                catalog = self.load(version)
            except PlexusError as exc:
                self._refuse(version, str(exc))
                return False
            self._switch(catalog)
            return True

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, *, background: bool = True) -> None:
        """Load the first bundle and follow the alias. `background=False` loads before returning
        (RegistryError if nothing can serve); otherwise the service answers /healthz meanwhile
        and /readyz turns 200 once a bundle is warmed."""
        if not background:
            self.check()
            if self.current is None:
                reasons = "; ".join(f"v{v}: {r}" for v, r in self.refused.items()) or "not resolved"
                raise RegistryError(f"no bundle to serve from {self.ref}: {reasons}")
        self._thread = threading.Thread(target=self._run, name="plexus-registry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.current is None or self.ref.polls:
                try:
                    self.check()
                except Exception:  # never let the poller die
                    log.exception("registry poll failed")
            if self.current is not None and not (self.ref.polls and self.poll_interval > 0):
                return
            self._stop.wait(self.next_wait())

    def next_wait(self) -> float:
        """Seconds to the next poll: the interval (at most 2 s until a bundle is loaded),
        doubled for each consecutive failed poll, capped at `MAX_BACKOFF`."""
        base = (
            self.poll_interval if self.current is not None else min(self.poll_interval or 2.0, 2.0)
        )
        if not self.failed_polls:
            return base
        return min(base * 2.0 ** min(self.failed_polls, 16), max(base, MAX_BACKOFF))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owned_cache:
            shutil.rmtree(self._cache, ignore_errors=True)
