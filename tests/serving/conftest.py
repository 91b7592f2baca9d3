"""Serving fixtures: tiny real bundles, a real SQLite MLflow registry, the real service on loopback."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from plexus.pipelines.bench.serve import build_synthetic_bundle
from plexus.serving.process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


def tiny_bundle(folder: Path, *, seed: int) -> Path:
    """400 items in 8 clusters, 60 users, dim 8: builds in well under a second."""
    path, _ = build_synthetic_bundle(
        folder, items=400, users=60, dim=8, clusters=8, history_len=6, recall_queries=50, seed=seed
    )
    return path


def broken_bundle(source: Path, folder: Path) -> Path:
    """A copy of `source` whose item index is garbage with a matching checksum (a bad export,
    not a bad download): loading it must fail in faiss."""
    shutil.copytree(source, folder)
    (folder / "items.faiss").write_bytes(b"not a faiss index" * 10)
    return reseal(folder, "items.faiss")


def reseal(folder: Path, name: str) -> Path:
    """Record the current sha256 of `folder/name` in the bundle's manifest (a file changed on
    purpose, as a bad export would write it, rather than damaged in transit)."""
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


class Registry:
    """A real MLflow store (SQLite + local artifacts); bundles are registered by the retrieval
    job's own `register_bundle` (logged under the run's `bundle/`, a version sourced there)."""

    def __init__(self, root: Path) -> None:
        import mlflow

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.experiment = mlflow.create_experiment(
            "serving-tests", artifact_location=(root / "mlartifacts").as_uri()
        )
        self.client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def register(self, name: str, folder: Path, *, alias: str | None = "champion") -> str:
        """Register `folder` the way the retrieval job does (`register_bundle`); moves `alias`."""
        import mlflow
        from plexus.pipelines.retrieval.job import register_bundle

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        with mlflow.start_run(experiment_id=self.experiment):
            return register_bundle(folder, name, alias=alias)

    def set_alias(self, name: str, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(name, alias, version)


@pytest.fixture(scope="session")
def bundle_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    v1 = tiny_bundle(root / "v1", seed=0)
    v2 = tiny_bundle(root / "v2", seed=1)
    return {"v1": v1, "v2": v2, "broken": broken_bundle(v1, root / "broken")}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("mlflow"))


class Service(ServiceProcess):
    """`python -m plexus.serving` in a subprocess on 127.0.0.1, its download cache in `cache`."""

    def __init__(
        self, model: str, *, tracking_uri: str, cache: Path, extra: tuple[str, ...] = ()
    ) -> None:
        super().__init__(
            model,
            log=cache / "service.log",
            tracking_uri=tracking_uri,
            cache_dir=cache / "dl",
            extra=("--log-level", "info", *extra),
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60.0, *, version: str | None = None) -> dict:
        return super().wait_ready(timeout, version=version)


@pytest.fixture(scope="session")
def service(
    registry: Registry, bundle_dirs: dict[str, Path], tmp_path_factory
) -> Iterator[Service]:
    """The service on model `retr@champion` = v1 (polls every 0.2 s; nobody moves the alias)."""
    registry.register("retr", bundle_dirs["v1"])
    svc = Service(
        "retr@champion",
        tracking_uri=registry.uri,
        cache=tmp_path_factory.mktemp("svc"),
        extra=("--poll-interval", "0.2"),
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    """A factory for extra services (stopped at the end of the test)."""
    started: list[Service] = []

    def start(model: str, *, tracking_uri: str, extra: tuple[str, ...] = ()) -> Service:
        svc = Service(
            model, tracking_uri=tracking_uri, cache=tmp_path / f"svc{len(started)}", extra=extra
        )
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()
