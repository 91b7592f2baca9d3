"""`plexus bench serve --soak S`: the service under steady load for S seconds, the registry alias
moved every `swap_every` seconds, resident memory sampled every second.

Two synthetic bundles (`bench.synthetic_bundle`, different seeds) are registered in a real
MLflow store (SQLite under DIR) the way the retrieval job registers them; the service follows
`soak@champion` and polls every second. `concurrency` client threads send known users' queries
over keep-alive HTTP connections as fast as the service answers; each answer's `version` is
checked against the registered ones. The figures: requests, failed requests (anything but 200:
the target is 0), QPS and latency percentiles, alias moves and the swaps the clients saw, and
the service's RSS at the start (after a warm-up), at the end and at its peak.

Writes DIR/results.json and DIR/results.md.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from plexus.pipelines.bench.serve import memory_bytes
from plexus.pipelines.bench.synthetic_bundle import build_synthetic_bundle
from plexus.pipelines.files import write_json
from plexus.serving.process import ServiceProcess

__all__ = ["bench_soak"]

MODEL = "soak"


def _rss(pid: int) -> int:
    return memory_bytes(pid)["service_rss_bytes"]


def _client(
    port: int, bodies: list[bytes], stop: threading.Event, log: list[tuple[int, str, float]]
) -> None:
    """Send `bodies` in turn until `stop`; append (status, version, seconds) per request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        try:
            connection.request("POST", "/v1/retrieve", bodies[i % len(bodies)], headers)
            answer = connection.getresponse()
            payload = answer.read()
            version = json.loads(payload).get("version", "") if answer.status == 200 else ""
            log.append((answer.status, str(version), time.perf_counter() - start))
        except (OSError, http.client.HTTPException, ValueError):
            log.append((0, "", time.perf_counter() - start))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i += 1
    connection.close()


def bench_soak(
    out: Path,
    *,
    seconds: float = 300.0,
    swap_every: float = 60.0,
    items: int = 200_000,
    users: int = 50_000,
    concurrency: int = 8,
    k: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the soak; returns the figures (also in DIR/results.json)."""
    import mlflow
    from plexus.pipelines.retrieval.job import register_bundle

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.set_experiment("bench-soak").experiment_id
    versions = []
    for which in range(2):
        folder, _ = build_synthetic_bundle(
            out / f"bundle-{which}", items=items, users=users, seed=seed + which, name=MODEL
        )
        with mlflow.start_run(experiment_id=experiment):
            versions.append(register_bundle(folder, MODEL, alias="champion" if not which else None))
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(MODEL, "champion", versions[0])

    rng = np.random.default_rng(seed)
    user_ids = 10 * rng.integers(1, users + 1, 2_000) + 1  # the synthetic bundle's external ids
    bodies = [json.dumps({"user_id": int(u), "k": k}).encode() for u in user_ids]
    service = ServiceProcess(
        f"{MODEL}@champion",
        log=out / "service.log",
        tracking_uri=uri,
        cache_dir=out / "service-cache",
        poll_interval=1,
        extra=("--log-level", "warning"),
    )
    try:
        service.wait_ready(timeout=600, version=versions[0])
        stop = threading.Event()
        logs: list[list[tuple[int, str, float]]] = [[] for _ in range(concurrency)]
        threads = [
            threading.Thread(target=_client, args=(service.port, bodies, stop, log), daemon=True)
            for log in logs
        ]
        for thread in threads:
            thread.start()
        time.sleep(min(5.0, seconds / 10))  # warm-up, not counted
        warm = [len(log) for log in logs]
        rss = [_rss(service.proc.pid)]
        started = time.monotonic()
        moves, serving = 0, 0
        next_swap = started + swap_every
        while (now := time.monotonic()) < started + seconds:
            if now >= next_swap:
                serving = 1 - serving
                client.set_registered_model_alias(MODEL, "champion", versions[serving])
                moves += 1
                next_swap += swap_every
            time.sleep(1.0)
            rss.append(_rss(service.proc.pid))
        elapsed = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        service.stop()
    answers = [entry for log, skip in zip(logs, warm, strict=True) for entry in log[skip:]]
    latencies = np.array([seconds_ for _, _, seconds_ in answers]) * 1e3
    served = sorted({version for status, version, _ in answers if status == 200})
    seen_swaps = [  # version changes each client saw (atomic swaps: one per alias move)
        sum(1 for a, b in zip(log[skip:], log[skip + 1 :], strict=False) if a[1] != b[1])
        for log, skip in zip(logs, warm, strict=True)
    ]
    result = {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "items": items,
        "users": users,
        "requests": len(answers),
        "failed_requests": sum(1 for status, _, _ in answers if status != 200),
        "qps": round(len(answers) / max(elapsed, 1e-9), 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if answers else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if answers else None,
        "alias_moves": moves,
        "swaps_seen_per_client": f"{min(seen_swaps)}-{max(seen_swaps)}",
        "versions_registered": versions,
        "versions_served": served,
        "unknown_versions_served": sorted(set(served) - set(versions)),
        "rss_start_bytes": rss[0],
        "rss_end_bytes": rss[-1],
        "rss_peak_bytes": max(rss),
        "rss_drift_bytes": rss[-1] - rss[0],
    }
    write_json(out / "results.json", result)
    mib = 1 << 20
    (out / "results.md").write_text(
        "# Service soak\n\n| figure | value |\n|---|---|\n"
        + "".join(
            f"| {key} | {value / mib:.1f} MiB |\n"
            if key.endswith("_bytes")
            else f"| {key} | {value} |\n"
            for key, value in result.items()
        )
    )
    print((out / "results.md").read_text())
    return result
