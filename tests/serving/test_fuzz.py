"""Fuzzing the request path in-process: no input makes the service answer 5xx or crash.

Hypothesis draws arbitrary JSON documents, near-valid queries (right keys, any-typed values),
and raw bytes; every answer must be 200 with candidates or a 4xx with an `error` message. The
service must still answer a valid query afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plexus.serving.app import create_app
from plexus.serving.config import Batching, ServeConfig
from plexus.serving.validation import FIELDS

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
IDS = st.lists(st.integers(min_value=-5, max_value=5000) | JSON_SCALARS, max_size=12)
QUERY = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.integers(min_value=-3, max_value=700) | JSON_SCALARS,
        "history": IDS | JSON,
        "k": st.integers(min_value=-2, max_value=1002) | JSON_SCALARS,
        "exclude": IDS | JSON,
        "diversify": st.booleans() | JSON_SCALARS,
        "exclude_seen": st.booleans() | JSON_SCALARS,
    },
)
ALLOWED = {200, 400, 404, 413, 422}


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # stdlib: big ints and Infinity go through as sent


@pytest.fixture(scope="module", params=[Batching.MICRO, Batching.LOOP])
def client(request, bundle_dirs: dict[str, Path]) -> TestClient:
    config = ServeConfig(model=str(bundle_dirs["v1"]), batching=request.param, max_body_bytes=4096)
    with TestClient(create_app(config)) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "bundle never became ready"
            time.sleep(0.05)
        yield c


def _check(response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    body = response.json()
    if response.status_code == 200:
        assert "items" in body or "results" in body
    else:
        assert isinstance(body["error"], str) and body["error"]


FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.reliability("input", "POST /v1/retrieve: near-valid queries (hypothesis)")
@FUZZ
@given(body=QUERY)
def test_near_valid_queries(client: TestClient, body: dict, record_property) -> None:
    record_property("inputs", 1)
    response = client.post("/v1/retrieve", content=_dumps(body))
    _check(response)
    if response.status_code == 200:
        payload = response.json()
        k = body.get("k", 100)
        assert len(payload["items"]) == len(payload["scores"]) == len(payload["clusters"]) <= k
        assert len(set(payload["items"])) == len(payload["items"])
        assert not set(payload["items"]) & set(body.get("exclude") or [])


@pytest.mark.reliability("input", "both endpoints: arbitrary JSON (hypothesis)")
@FUZZ
@given(body=JSON)
def test_arbitrary_json(client: TestClient, body, record_property) -> None:
    record_property("inputs", 1)
    _check(client.post("/v1/retrieve", content=_dumps(body)))
    _check(client.post("/v1/retrieve/batch", content=_dumps({"requests": body})))


@pytest.mark.reliability("input", "POST /v1/retrieve/batch: near-valid batches (hypothesis)")
@FUZZ
@given(queries=st.lists(QUERY, min_size=0, max_size=6))
def test_batch_of_near_valid_queries(client: TestClient, queries: list, record_property) -> None:
    record_property("inputs", 1)
    response = client.post("/v1/retrieve/batch", content=_dumps({"requests": queries}))
    _check(response)
    if response.status_code == 200:
        results = response.json()["results"]
        assert len(results) == len(queries)
        for result in results:
            assert ("items" in result) != ("error" in result)


@pytest.mark.reliability("input", "POST /v1/retrieve: raw bytes (hypothesis)")
@FUZZ
@given(raw=st.binary(max_size=5000))
def test_raw_bytes(client: TestClient, raw: bytes, record_property) -> None:
    record_property("inputs", 1)
    _check(client.post("/v1/retrieve", content=raw))


def test_still_serves_after_fuzzing(client: TestClient) -> None:
    response = client.post("/v1/retrieve", json={"user_id": 11, "k": 7})
    assert response.status_code == 200 and len(response.json()["items"]) == 7
    assert set(FIELDS) == set(
        client.get("/openapi.json").json()["paths"]["/v1/retrieve"]["post"]["requestBody"][
            "content"
        ]["application/json"]["schema"]["properties"]
    )
