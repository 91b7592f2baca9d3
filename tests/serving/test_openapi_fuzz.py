"""The service's own OpenAPI document as the fuzzer: requests drawn from its schemas, answers
checked against its documented responses; and the oversized requests a client can send.

`from_schema` draws bodies from the request schemas that `/openapi.json` serves (what
schemathesis does; hypothesis-jsonschema 0.23 does not run on this hypothesis): every
schema-valid request must get a documented status, 200, 404 (an unknown user, no history) or 422 only for the rules the schema cannot say
(a user id or a history is needed; an unknown user's history must hold a known item), with a
body that matches the documented schema.
The oversized cases run against a real service process: a `k` of 10^12, a history of a million
items and a batch of a hundred thousand queries get a 4xx with a message, and the service's
resident memory stays bounded.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plexus.serving.app import create_app
from plexus.serving.config import ServeConfig
from plexus.serving.process import ServiceProcess

PATHS = ("/v1/retrieve", "/v1/retrieve/batch")


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values valid under `schema`, for the JSON-schema subset the service documents (anyOf,
    object, array, integer, boolean, null). Integers also come from a small range, where the
    tiny bundle's ids are, so that answers are not all 404; arrays are capped at 8 items."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    kind = schema["type"]
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        near = st.integers(max(low if low is not None else -2, -2), min(high or 60, 60))
        return st.integers(low, high) | near
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema["items"]),
            min_size=low,
            max_size=max(low, min(8, schema["maxItems"])),
        )
    assert kind == "object", schema
    required = set(schema.get("required", ()))
    fields = {name: from_schema(sub) for name, sub in schema["properties"].items()}
    return st.fixed_dictionaries(
        {n: f for n, f in fields.items() if n in required},
        optional={n: f for n, f in fields.items() if n not in required},
    )


def _needs_a_user_or_history(body: dict) -> bool:
    queries = body.get("requests", [body])
    return any(q.get("user_id") is None and not q.get("history") for q in queries)


@pytest.fixture(scope="module")
def app(bundle_dirs: dict[str, Path]) -> TestClient:
    with TestClient(create_app(ServeConfig(model=str(bundle_dirs["v1"])))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "bundle never became ready"
            time.sleep(0.05)
        yield client


def _operation(client: TestClient, path: str) -> dict:
    return client.get("/openapi.json").json()["paths"][path]["post"]


def _schemas(bundle_dirs: dict[str, Path], path: str) -> tuple[dict, dict]:
    """(request schema, {status: response schema}) from the app's own OpenAPI document."""
    with TestClient(create_app(ServeConfig(model=str(bundle_dirs["v1"])))) as client:
        operation = _operation(client, path)
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    responses = {
        int(status): spec["content"]["application/json"]["schema"]
        for status, spec in operation["responses"].items()
        if "content" in spec
    }
    return request, responses


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.mark.reliability("input", "requests drawn from the OpenAPI schema: documented answers")
@pytest.mark.parametrize("path", PATHS)
def test_schema_valid_requests_get_documented_answers(
    app: TestClient, bundle_dirs: dict[str, Path], path: str, record_property
) -> None:
    request_schema, responses = _schemas(bundle_dirs, path)
    assert responses[200] and responses[422], "the OpenAPI document lost its responses"
    statuses: list[int] = []

    @FUZZ
    @given(body=from_schema(request_schema))
    def check(body: dict) -> None:
        answer = app.post(path, json=body)
        documented_422 = _needs_a_user_or_history(body) or "is in the catalog" in answer.text
        allowed = {200, 404} | ({422} if documented_422 else set())
        assert answer.status_code in allowed, (body, answer.status_code, answer.text)
        statuses.append(answer.status_code)
        jsonschema.validate(answer.json(), responses[answer.status_code])

    check()
    record_property("inputs", len(statuses))
    record_property("answered_200", statuses.count(200))
    assert 200 in statuses, "no schema-valid request was answered: the generator is off"


@pytest.fixture(scope="module")
def service(bundle_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    # A generous body limit, so that the per-field limits (not only the body size) are tried.
    log = tmp_path_factory.mktemp("oversized") / "service.log"
    with ServiceProcess(
        str(bundle_dirs["v1"]), log=log, poll_interval=0, extra=("--max-body-bytes", "50000000")
    ) as process:
        process.wait_ready(timeout=60)
        yield process


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


OVERSIZED = {
    "k of 10^12": ("/v1/retrieve", {"user_id": 11, "k": 10**12}, 422, "k"),
    "a million history items": (
        "/v1/retrieve",
        {"history": list(range(1, 1_000_001)), "k": 10},
        422,
        "history",
    ),
    "a million excluded items": (
        "/v1/retrieve",
        {"user_id": 11, "exclude": list(range(1_000_000)), "k": 10},
        422,
        "exclude",
    ),
    "a batch of 100,000 queries": (
        "/v1/retrieve/batch",
        {"requests": [{"user_id": 11, "k": 10}] * 100_000},
        422,
        "requests",
    ),
}


@pytest.mark.reliability("input", "oversized request: 422 naming the field, RSS bounded")
@pytest.mark.parametrize("case", list(OVERSIZED))
def test_oversized_requests_get_a_4xx_and_memory_stays_bounded(
    service, case: str, record_property
) -> None:
    path, body, status, field = OVERSIZED[case]
    before = _rss(service.proc.pid)
    for _ in range(3):
        code, answer = service.post(path, body)
        assert code == status, (code, answer)
        assert field in answer["error"], answer
    grown = _rss(service.proc.pid) - before
    record_property("rss_growth_mib", round(grown / 2**20, 1))
    assert grown < 64 << 20, f"{case}: resident memory grew by {grown / 2**20:.0f} MiB"
    code, answer = service.post("/v1/retrieve", {"user_id": 11, "k": 5})
    assert code == 200 and len(answer["items"]) == 5


@pytest.mark.reliability("input", "7 MB declared body: 413 before it is sent")
def test_a_body_over_the_limit_is_refused_before_it_is_read(bundle_dirs, tmp_path) -> None:
    """A 7 MB declared body gets its 413 at once, before the client sends a byte of it."""
    with ServiceProcess(str(bundle_dirs["v1"]), log=tmp_path / "s.log", poll_interval=0) as s:
        s.wait_ready(timeout=60)
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 7000000\r\n\r\n"
            )
            answer = b""
            while b"}" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
        head, body = answer.decode().split("\r\n\r\n", 1)
        assert head.startswith("HTTP/1.1 413") and "bytes" in body, answer
