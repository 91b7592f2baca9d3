"""In-process pieces of the service: model references, smoke test, metrics text, micro-batching,
and a service that waits for its alias to exist before turning ready."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import reseal
from fastapi.testclient import TestClient
from plexus.platform.errors import ConfigError, RegistryError
from plexus.serving.app import create_app
from plexus.serving.bundle import Bundle
from plexus.serving.config import Batching, ServeConfig
from plexus.serving.metrics import ServiceMetrics
from plexus.serving.registry import BundleWatcher, ModelRef, smoke_test


def test_model_ref_parsing(tmp_path: Path) -> None:
    assert ModelRef.parse("retr@staging") == ModelRef(name="retr", alias="staging")
    assert ModelRef.parse("models:/retr@champion").alias == "champion"
    assert ModelRef.parse("retr") == ModelRef(name="retr", alias="champion")
    assert ModelRef.parse("retr/7") == ModelRef(name="retr", version="7")
    assert not ModelRef.parse("retr/7").polls
    assert ModelRef.parse(str(tmp_path)).path == tmp_path
    with pytest.raises(ConfigError, match="NAME@ALIAS"):
        ModelRef.parse("retr@")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="serve.max_k"):
        ServeConfig(model="m", max_k=0)
    with pytest.raises(ConfigError, match="serve.batching"):
        ServeConfig(model="m", batching="sometimes")  # type: ignore[arg-type]
    assert ServeConfig(model="m", batching="loop").batching is Batching.LOOP  # type: ignore[arg-type]


def test_smoke_test_refuses_a_bundle_with_nan_scores(
    bundle_dirs: dict[str, Path], tmp_path: Path
) -> None:
    bundle = Bundle.load(bundle_dirs["v1"])
    smoke_test(bundle)  # a good bundle passes
    bad = tmp_path / "nan"
    shutil.copytree(bundle_dirs["v1"], bad)
    import faiss
    from plexus.serving import index as item_index

    old = faiss.read_index(str(bad / "items.faiss"))
    centroids = faiss.downcast_index(old.quantizer).reconstruct_n(0, old.nlist)
    clusters = np.load(bad / "item_clusters.npy")[1:]
    vectors = np.full((clusters.size, old.d), np.nan, np.float32)  # a model that diverged
    ids = np.arange(1, clusters.size + 1)
    item_index.save_index(
        item_index.build_cluster_index(vectors, clusters, centroids, ids), bad / "items.faiss"
    )
    reseal(bad, "items.faiss")
    with pytest.raises(RegistryError, match="non-finite|no items"):
        smoke_test(Bundle.load(bad))


def test_watcher_refuses_unloadable_folder_with_reason(bundle_dirs: dict[str, Path]) -> None:
    metrics = ServiceMetrics()
    watcher = BundleWatcher(
        ModelRef.parse(str(bundle_dirs["broken"])), metrics=metrics, poll_interval=0
    )
    with pytest.raises(RegistryError, match="no bundle to serve"):
        watcher.start(background=False)
    text = metrics.render()
    assert 'plexus_model_refusals_total{version="broken"} 1' in text
    assert "faiss" in watcher.refused["broken"]
    watcher.stop()


def test_metrics_exposition_format() -> None:
    m = ServiceMetrics()
    m.observe_request("/v1/retrieve", 200, 0.0012)
    m.observe_request("/v1/retrieve", 200, 0.3)
    m.model_info.replace("retr", "3")
    text = m.render()
    assert 'plexus_request_latency_seconds_bucket{endpoint="/v1/retrieve",le="0.001"} 0' in text
    assert 'plexus_request_latency_seconds_bucket{endpoint="/v1/retrieve",le="0.002"} 1' in text
    assert 'plexus_request_latency_seconds_bucket{endpoint="/v1/retrieve",le="+Inf"} 2' in text
    assert 'plexus_requests_total{endpoint="/v1/retrieve",status="200"} 2' in text
    assert 'plexus_model_info{name="retr",version="3"} 1' in text


@pytest.mark.parametrize("batching", [Batching.MICRO, Batching.LOOP, Batching.INLINE])
def test_concurrent_requests_each_get_their_own_answer(
    bundle_dirs: dict[str, Path], batching
) -> None:
    config = ServeConfig(model=str(bundle_dirs["v1"]), batching=batching)
    watcher = BundleWatcher(ModelRef.parse(config.model), metrics=ServiceMetrics(), poll_interval=0)
    watcher.start(background=False)
    app = create_app(config, watcher=watcher)
    bundle = watcher.current.bundle
    users = bundle.user_ids[1:41].tolist()
    bodies = [{"user_id": u, "k": 5 + i % 3, "diversify": i % 2 == 0} for i, u in enumerate(users)]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/v1/retrieve", json=b) for b in bodies))

    responses = asyncio.run(run())
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = bundle.recommend(
            user_id=body["user_id"], k=body["k"], diversify=body["diversify"]
        )
        assert response.json()["items"] == expected.item_ids.tolist()
    calls = app.state.plexus.metrics.batch_size.count()
    if batching is Batching.INLINE:
        assert calls == len(bodies)
    else:
        assert calls < len(bodies)  # concurrent requests shared model calls
    watcher.stop()


def test_service_waits_for_the_alias_then_turns_ready(
    registry, bundle_dirs: dict[str, Path]
) -> None:
    config = ServeConfig(model="late@champion", tracking_uri=registry.uri, poll_interval=0.2)
    with TestClient(create_app(config)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/retrieve", json={"user_id": 11}).status_code == 503
        version = registry.register("late", bundle_dirs["v1"])
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never turned ready"
            time.sleep(0.1)
        assert client.get("/readyz").json()["version"] == version
        assert (
            client.post("/v1/retrieve", json={"user_id": 11, "k": 3}).json()["version"] == version
        )
        assert "plexus_registry_poll_errors_total" in client.get("/metrics").text


def test_synthetic_bundle_meets_its_recall_target(bundle_dirs: dict[str, Path]) -> None:
    """The bench's catalog: clustered items, the recorded nprobe reaches recall@100 >= 0.95."""
    from plexus.serving import index as item_index

    bundle = Bundle.load(bundle_dirs["v1"])
    recall = bundle.manifest["index"]["recall_vs_exact"]["100"]
    assert recall >= 0.95 and 1 <= bundle.nprobe <= bundle.num_clusters
    import faiss

    bundle._index.set_direct_map_type(faiss.DirectMap.Hashtable)
    vectors = np.stack([bundle._index.reconstruct(i) for i in range(1, bundle.num_items + 1)])
    queries = vectors[:50] + 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(1, bundle.num_items + 1)
    measured = item_index.index_recall(
        bundle._index, vectors, ids, queries, 100, nprobe=bundle.nprobe
    )
    assert measured >= 0.9
