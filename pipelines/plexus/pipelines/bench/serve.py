"""`plexus bench serve`: the retrieval service under HTTP load, beside the bare in-process cost.

1. Builds a bundle (`plexus.pipelines.bench.synthetic_bundle`) over a synthetic catalog with
   the clustered structure of real item embeddings: C Gaussian clusters on the unit sphere (unequal sizes), items = centre + noise,
   users with 1-3 interests whose histories are drawn from them. The query model is written
   directly as an ONNX graph (no torch): query = normalize(user + mean(history)), history
   mixture = the cluster histogram of the history, component queries = normalize(query +
   centroid). The user state is built as the export builds it: every user's mixture smoothed
   with its nearest users (here those of the bounded reference sample) and stored as its top-M
   clusters. The single-vector `nprobe` is the smallest whose recall@100 against exact search
   on real queries reaches `target_recall`, measured in the same run.
2. Measures the bare cost (`Bundle.recommend`, one query at a time, no HTTP).
3. Starts `python -m plexus.serving` on loopback and drives it with wrk (a Lua script cycles
   through pre-made POST bodies), at several concurrency levels, for `diversify` false/true
   (known users) and for new users (a history, no id: the reference index), inline vs
   micro-batched, and records the service's resident memory.

Writes DIR/results.json (one row per mode x batching x concurrency, with `users`,
`bundle_bytes` and `service_rss_bytes`) and DIR/results.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from plexus.pipelines.bench.synthetic_bundle import build_synthetic_bundle, synthetic_query_onnx
from plexus.pipelines.runtime import process_memory
from plexus.serving.bundle import Bundle
from plexus.serving.process import ServiceProcess

__all__ = ["build_synthetic_bundle", "synthetic_query_onnx", "bench_serve", "run_wrk"]


# ---- load generation ----------------------------------------------------------------------------
WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("PLEXUS_WRK_BODIES")) do bodies[#bodies + 1] = line end
local limit = tonumber(os.getenv("PLEXUS_WRK_MAX_REQUESTS") or "0")
local i = math.random(#bodies)
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, os.getenv("PLEXUS_WRK_PATH"), nil, bodies[i])
end
response = function(status, headers, body)
  n = n + 1
  if limit > 0 and n >= limit then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PLEXUS_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%.1f,"p95_us":%.1f,"p99_us":%.1f,"max_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def run_wrk(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    duration: float,
    max_requests: int = 0,
    threads: int = 1,
    path: str = "/v1/retrieve",
) -> dict[str, float]:
    """Drive `url` with wrk cycling through `bodies` (POST JSON), `concurrency` connections for
    `duration` seconds (and at most `max_requests` per wrk thread if > 0).
    Returns qps, p50_ms, p95_ms, p99_ms, requests and errors (non-2xx + socket errors)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("wrk is not installed: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "post.lua", Path(tmp) / "bodies.jsonl"
        script.write_text(WRK_SCRIPT)
        data.write_bytes(b"\n".join(bodies) + b"\n")
        env = {
            **os.environ,
            "PLEXUS_WRK_BODIES": str(data),
            "PLEXUS_WRK_PATH": path,
            "PLEXUS_WRK_MAX_REQUESTS": str(max_requests),
        }
        cmd = [
            wrk, f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
            "--timeout", "5s", "-s", str(script), url,
        ]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PLEXUS_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line.removeprefix("PLEXUS_RESULT "))
    seconds = raw["duration_us"] / 1e6
    return {
        "qps": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1e3,
        "p95_ms": raw["p95_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "requests": raw["requests"],
        "errors": raw["status_errors"] + raw["socket_errors"],
    }


def bare_latency(
    bundle: Bundle, queries: Sequence[dict[str, Any]], *, repeat: int = 1
) -> dict[str, float]:
    """In-process cost of the same queries, one at a time (onnxruntime + index + numpy, no HTTP)."""
    times = []
    cpu = time.process_time()
    for _ in range(repeat):
        for q in queries:
            start = time.perf_counter()
            bundle.recommend(
                user_id=q.get("user_id"),
                history=q.get("history"),
                k=q["k"],
                diversify=q["diversify"],
            )
            times.append(time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) * 1e3 / len(times)
    ms = np.asarray(times) * 1e3
    return {
        "bare_p50_ms": float(np.percentile(ms, 50)),
        "bare_p99_ms": float(np.percentile(ms, 99)),
        "bare_cpu_ms": float(cpu_ms),  # CPU time per query: unaffected by other jobs' load
    }


def memory_bytes(pid: int) -> dict[str, int]:
    """Resident memory of a process now (`VmRSS`) and at its peak (`VmHWM`), in bytes."""
    memory = process_memory(pid)
    return {"service_rss_bytes": memory["rss"], "service_rss_peak_bytes": memory["peak"]}


def bundle_bytes(folder: Path) -> dict[str, int]:
    """Size of each file of a bundle folder (its manifest's files) and their total."""
    manifest = json.loads((folder / "bundle.json").read_text())
    sizes = {name: (folder / name).stat().st_size for name in manifest["files"]}
    return {**sizes, "total": sum(sizes.values())}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the benchmark ------------------------------------------------------------------------------
def _service(bundle_dir: Path, batching: str, log: Path) -> ServiceProcess:
    service = ServiceProcess(
        str(bundle_dir),
        log=log,
        poll_interval=0,
        extra=("--batching", batching, "--log-level", "warning"),
    )
    service.wait_ready(timeout=300)
    return service


def bench_serve(
    out: Path,
    *,
    items: int = 1_000_000,
    duration: float = 10.0,
    concurrency: Sequence[int] = (1, 8, 32, 64),
    batching: Sequence[str] = ("inline", "loop", "micro"),
    k: int = 100,
    users: int = 100_000,
    dim: int = 64,
    seed: int = 0,
    keep_bundle: bool = False,
) -> list[dict]:
    """Build the synthetic bundle, measure bare and HTTP cost; write results.json / results.md.

    The bundle is built in DIR/bundle; `keep_bundle` leaves it there, and a later run with the
    same catalog parameters reuses it (the recall figure comes from its build).

    Modes: `single` and `knn_embed` ask for known users by id (stored mixtures); `knn_embed_new`
    sends a history and no id (smoothed through the reference index).
    One row per (mode, batching, concurrency) with mode, concurrency, qps, p50_ms, p95_ms,
    p99_ms, errors, bare_p50_ms, bare_p99_ms, index_recall, users, bundle_bytes and
    service_rss_bytes (the service's resident memory after that load; + its peak, batching,
    load_generator).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import faiss

    faiss.omp_set_num_threads(1)
    params = {"items": items, "users": users, "dim": dim, "seed": seed}
    info_file = out / "bundle" / "bench_info.json"
    if info_file.is_file() and json.loads(info_file.read_text()).get("params") == params:
        bundle_dir, info = out / "bundle", json.loads(info_file.read_text())  # same catalog: reuse
    else:
        shutil.rmtree(out / "bundle", ignore_errors=True)
        bundle_dir, info = build_synthetic_bundle(out / "bundle", **params)
        info_file.write_text(json.dumps({**info, "params": params}))
    sizes = bundle_bytes(bundle_dir)
    print(f"[bench serve] bundle: {info}; bytes {sizes}", flush=True)
    bundle = Bundle.load(bundle_dir, version="bench")
    rng = np.random.default_rng(seed + 1)
    picked = rng.choice(bundle.num_users, min(2000, bundle.num_users), replace=False) + 1
    user_ids = bundle.user_ids[picked].tolist()
    # New users: another sample's stored histories, sent without an id.
    others = rng.choice(bundle.num_users, min(2000, bundle.num_users), replace=False) + 1
    new_histories = [bundle.item_ids[bundle.history.items(int(u))].tolist() for u in others]
    modes = {
        "single": lambda i: {"user_id": user_ids[i], "k": k, "diversify": False},
        "knn_embed": lambda i: {"user_id": user_ids[i], "k": k, "diversify": True},
        "knn_embed_new": lambda i: {"history": new_histories[i], "k": k, "diversify": True},
    }
    bodies_of = {mode: [make(i) for i in range(len(user_ids))] for mode, make in modes.items()}
    bare = {}
    for mode, queries in bodies_of.items():
        bare_latency(bundle, queries[:100])  # warm-up
        bare[mode] = bare_latency(bundle, queries)
        print(f"[bench serve] bare {mode}: {bare[mode]}", flush=True)
    del bundle
    rows: list[dict] = []
    for mode_batching in batching:
        service = _service(bundle_dir, mode_batching, out / f"service-{mode_batching}.log")
        try:
            for mode, queries in bodies_of.items():
                bodies = [json.dumps(q).encode() for q in queries]
                run_wrk(service.url, bodies, concurrency=4, duration=1)  # warm-up
                for conc in concurrency:
                    cpu = _cpu_seconds(service.proc.pid)
                    load = run_wrk(
                        service.url, bodies, concurrency=conc, duration=duration,
                        max_requests=int(duration * 20_000),
                    )  # fmt: skip
                    cpu = _cpu_seconds(service.proc.pid) - cpu
                    row = {
                        "server_cpu_ms_per_request": cpu * 1e3 / max(load["requests"], 1),
                        "load_average_1m": os.getloadavg()[0],
                        "mode": mode,
                        "batching": mode_batching,
                        "concurrency": conc,
                        **{
                            key: load[key]
                            for key in ("qps", "p50_ms", "p95_ms", "p99_ms", "errors")
                        },
                        "requests": load["requests"],
                        "bare_p50_ms": bare[mode]["bare_p50_ms"],
                        "bare_p99_ms": bare[mode]["bare_p99_ms"],
                        "index_recall": info["index_recall"],
                        "load_generator": "wrk",
                        "items": items,
                        "users": users,
                        "k": k,
                        "bundle_bytes": sizes["total"],
                        **memory_bytes(service.proc.pid),
                    }
                    print(f"[bench serve] {row}", flush=True)
                    rows.append(row)
        finally:
            service.stop()
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(_markdown(rows, {**info, "bundle_files": sizes}, bare))
    if not keep_bundle:
        shutil.rmtree(bundle_dir, ignore_errors=True)
    return rows


def _markdown(rows: list[dict], info: dict[str, Any], bare: dict[str, dict[str, float]]) -> str:
    first = rows[0] if rows else {"items": 0, "k": 0}
    loads = [r["load_average_1m"] for r in rows] or [0.0]
    lines = [
        "# Retrieval service benchmark",
        "",
        f"Synthetic clustered catalog: {first['items']:,} items, {info['clusters']} clusters, "
        f"K={first['k']}; index recall@100 vs exact = {info['index_recall']:.3f} at nprobe "
        f"{info['nprobe']} (by nprobe: {info['recall_by_nprobe']}). Load generator: wrk on "
        f"loopback, same machine ({os.cpu_count()} cores); 1-minute load average during the runs "
        f"{min(loads):.1f} to {max(loads):.1f} (other jobs share the cores).",
        "",
        "| mode | bare p50 ms | bare p99 ms | bare CPU ms/query |",
        "|---|---|---|---|",
    ]
    for mode, b in bare.items():
        lines.append(
            f"| {mode} | {b['bare_p50_ms']:.3f} | {b['bare_p99_ms']:.3f} | {b['bare_cpu_ms']:.3f} |"
        )
    users = max(first.get("users", 0), 1)
    files = info.get("bundle_files", {})
    lines += [
        "",
        f"Bundle for {users:,} users: {files.get('total', 0):,} bytes "
        f"({files.get('total', 0) / users:.1f} bytes per user, catalog included); "
        f"service RSS {max((r['service_rss_bytes'] for r in rows), default=0):,} bytes "
        f"(peak {max((r['service_rss_peak_bytes'] for r in rows), default=0):,}).",
        "",
        "| file | bytes | bytes per user |",
        "|---|---|---|",
        *(
            f"| {name} | {size:,} | {size / users:.2f} |"
            for name, size in sorted(files.items())
            if name != "total"
        ),
    ]
    lines += [
        "",
        "| mode | batching | concurrency | QPS | p50 ms | p95 ms | p99 ms | errors "
        "| HTTP overhead p50 ms | server CPU ms/request | service RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batching']} | {r['concurrency']} | {r['qps']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} "
            f"| {r['p50_ms'] - r['bare_p50_ms']:.2f} | {r['server_cpu_ms_per_request']:.3f} "
            f"| {r['service_rss_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"
