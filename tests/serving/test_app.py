"""The real service on 127.0.0.1 against a real MLflow registry: retrieval, batch, health, metrics, validation."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from plexus.serving.bundle import Bundle


@pytest.fixture(scope="module")
def client(service) -> httpx.Client:
    with httpx.Client(base_url=service.url, timeout=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def v1(bundle_dirs: dict[str, Path]) -> Bundle:
    return Bundle.load(bundle_dirs["v1"], version="1")


def _user(bundle: Bundle, internal: int = 1) -> int:
    return int(bundle.user_ids[internal])


def test_retrieve_by_user_matches_bundle_and_registry_version(client, v1) -> None:
    user = _user(v1)
    r = client.post("/v1/retrieve", json={"user_id": user, "k": 25})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == "1" and body["model"] == "synthetic"
    assert len(body["items"]) == len(body["scores"]) == len(body["clusters"]) == 25
    expected = v1.recommend(user_id=user, k=25, diversify=True)
    assert body["items"] == expected.item_ids.tolist()
    np.testing.assert_allclose(body["scores"], expected.scores, rtol=1e-5)
    # Each candidate's interest cluster is the bundle's cluster of that item.
    internal = np.searchsorted(v1.item_ids[1:], body["items"]) + 1
    assert body["clusters"] == v1.item_clusters[internal].tolist()
    # The user's training items are excluded by default.
    assert not set(body["items"]) & set(v1.item_ids[v1.history.items(1)].tolist())


def test_single_vector_mode_and_exclusions(client, v1) -> None:
    user = _user(v1, 2)
    single = client.post("/v1/retrieve", json={"user_id": user, "k": 10, "diversify": False}).json()
    assert single["items"] == v1.recommend(user_id=user, k=10, diversify=False).item_ids.tolist()
    assert single["scores"] == sorted(single["scores"], reverse=True)
    dropped = single["items"][:3]
    again = client.post(
        "/v1/retrieve", json={"user_id": user, "k": 10, "diversify": False, "exclude": dropped}
    ).json()
    assert not set(dropped) & set(again["items"]) and len(again["items"]) == 10


def test_history_only_request_follows_the_history_cluster(client, v1) -> None:
    # Planted signal: a history from one cluster puts that cluster first.
    cluster = 3
    members = v1.item_ids[1:][v1.item_clusters[1:] == cluster][:5].tolist()
    body = client.post("/v1/retrieve", json={"history": members, "k": 10}).json()
    assert body["clusters"][0] == cluster
    assert sum(c == cluster for c in body["clusters"]) >= 8
    assert body["skipped_history"] == []


def test_unknown_history_items_are_skipped_and_reported(client, v1) -> None:
    known = v1.item_ids[1:4].tolist()
    r = client.post("/v1/retrieve", json={"history": [*known, 7, 123456789], "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["skipped_history"] == [7, 123456789]
    assert r.json()["items"] == v1.recommend(history=known, k=5).item_ids.tolist()


def test_batch_retrieve_answers_each_query_alone(client, v1) -> None:
    queries = [
        {"user_id": _user(v1, 1), "k": 5},
        {"user_id": 999_999_999},  # unknown user, no history: this entry fails alone
        {"history": v1.item_ids[10:13].tolist(), "k": 3, "diversify": False},
    ]
    r = client.post("/v1/retrieve/batch", json={"requests": queries})
    assert r.status_code == 200, r.text
    first, second, third = r.json()["results"]
    assert first["items"] == v1.recommend(user_id=_user(v1, 1), k=5).item_ids.tolist()
    assert second["status"] == 404 and "unknown" in second["error"]
    assert len(third["items"]) == 3 and third["version"] == "1"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"user_id": 999_999_999}, 404, "history"),
        ({"history": [7, 8]}, 422, "catalog"),
        ({}, 422, "user_id and/or"),
        ({"user_id": 11, "k": 0}, 422, "k: must be"),
        ({"user_id": 11, "k": 1001}, 422, "k: must be"),
        ({"user_id": 11, "k": "5"}, 422, "k: must be"),
        ({"user_id": "11"}, 422, "user_id: expected an integer"),
        ({"user_id": True}, 422, "user_id: expected an integer"),
        ({"user_id": 2**63}, 422, "int64"),
        ({"user_id": 2**70}, 422, "user_id: expected an integer"),
        ({"history": [1, "a"]}, 422, "history[1]"),
        ({"history": 5}, 422, "history: expected a list"),
        ({"user_id": 11, "diversify": "yes"}, 422, "diversify"),
        ({"user_id": 11, "kk": 3}, 422, "unknown field"),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_validation_errors_say_what_was_wrong(client, body, status, words) -> None:
    r = client.post("/v1/retrieve", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_and_oversized_bodies(client) -> None:
    r = client.post(
        "/v1/retrieve", content=b'{"user_id": 1', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = b'{"history": [' + b"1," * 600_000 + b"1]}"
    r = client.post("/v1/retrieve", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = client.post("/v1/retrieve/batch", json={"requests": [{"user_id": 11}] * 257})
    assert r.status_code == 422 and "257" in r.json()["error"]


def test_health_readiness_openapi(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "synthetic", "version": "1"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/retrieve", "/v1/retrieve/batch", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["properties"]["k"]["maximum"] == 1000


def test_metrics_count_requests_by_status_and_name_the_version(client, v1) -> None:
    client.post("/v1/retrieve", json={"user_id": _user(v1)})
    client.post("/v1/retrieve", json={"user_id": 11, "k": 0})
    text = client.get("/metrics").text
    ok = _sample(text, 'plexus_requests_total{endpoint="/v1/retrieve",status="200"}')
    bad = _sample(text, 'plexus_requests_total{endpoint="/v1/retrieve",status="422"}')
    assert ok >= 1 and bad >= 1
    assert 'plexus_model_info{name="synthetic",version="1"} 1' in text
    assert (
        _sample(text, 'plexus_request_latency_seconds_count{endpoint="/v1/retrieve"}') >= ok + bad
    )
    assert 'plexus_request_latency_seconds_bucket{endpoint="/v1/retrieve",le="+Inf"}' in text
    assert _sample(text, "plexus_ready") == 1


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")
