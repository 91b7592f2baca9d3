"""Hot swap under concurrent load: the alias moves, no request fails, answers come from the new
version afterwards; a broken bundle is refused and the old one keeps serving."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from plexus.serving.bundle import Bundle


def _load(url: str, body: dict, stop: threading.Event, out: list[tuple[int, str]]) -> None:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                r = client.post("/v1/retrieve", json=body)
                out.append(
                    (r.status_code, r.json().get("version", "") if r.status_code == 200 else r.text)
                )
            except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                out.append((-1, repr(exc)))


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


@pytest.mark.reliability(
    "bundle", "hot swap under load, then a broken version: no failed request, broken one refused"
)
def test_hot_swap_under_load_has_no_failed_request(
    registry, bundle_dirs, start_service, record_property
) -> None:
    registry.register("swap", bundle_dirs["v1"])
    service = start_service(
        "swap@champion", tracking_uri=registry.uri, extra=("--poll-interval", "0.2")
    )
    assert service.wait_ready()["version"] == "1"
    user = int(Bundle.load(bundle_dirs["v1"]).user_ids[1])
    bodies = [{"user_id": user, "k": 20}, {"user_id": user, "k": 20, "diversify": False}]
    stop = threading.Event()
    logs: list[list[tuple[int, str]]] = [[] for _ in range(6)]
    threads = [
        threading.Thread(
            target=_load, args=(service.url, bodies[i % 2], stop, logs[i]), daemon=True
        )
        for i in range(len(logs))
    ]
    for t in threads:
        t.start()
    _wait(lambda: all(len(log) >= 20 for log in logs))
    v2 = registry.register("swap", bundle_dirs["v2"])  # moves the alias
    _wait(lambda: all(log and log[-1][1] == v2 for log in logs))
    after = [len(log) for log in logs]
    _wait(lambda: all(len(log) >= n + 20 for log, n in zip(logs, after, strict=True)))
    # A broken bundle: refused, v2 keeps answering.
    v3 = registry.register("swap", bundle_dirs["broken"])
    metrics = httpx.Client(base_url=service.url, timeout=10.0)
    _wait(
        lambda: f'plexus_model_refusals_total{{version="{v3}"}} 1' in metrics.get("/metrics").text
    )
    refused_at = [len(log) for log in logs]
    _wait(lambda: all(len(log) >= n + 20 for log, n in zip(logs, refused_at, strict=True)))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    text = metrics.get("/metrics").text
    metrics.close()

    results = [r for log in logs for r in log]
    failures = [r for r in results if r[0] != 200]
    record_property("requests", len(results))
    record_property("failed", len(failures))
    assert not failures, failures[:5]
    assert len(results) >= 6 * 60
    for log in logs:  # each client sees v1, then v2 only (atomic switch, no flip-back)
        versions = [v for _, v in log]
        first_new = versions.index(v2)
        assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {v2}
        assert first_new >= 20 and len(versions) - first_new >= 40
    assert v3 not in {v for _, v in results}
    assert f'plexus_model_info{{name="synthetic",version="{v2}"}} 1' in text
    assert "plexus_model_swaps_total 2" in text
    assert f'plexus_model_last_refusal_info{{version="{v3}",reason=' in text
    assert "refused swap v3" in service.log.read_text()
    # The download cache keeps the serving and the previous version, not the refused one.
    cached = {p.name for p in (service.log.parent / "dl").iterdir()}
    assert cached == {"swap-v1", f"swap-v{v2}"}, cached
