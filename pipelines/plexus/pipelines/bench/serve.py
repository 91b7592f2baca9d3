"""`plexus bench serve`: the retrieval service under HTTP load, beside the bare in-process cost.

1. Builds a bundle over a synthetic catalog with the clustered structure of real item
   embeddings: C Gaussian clusters on the unit sphere (unequal sizes), items = centre + noise,
   users with 1-3 interests whose histories are drawn from them. The query model is written
   directly as an ONNX graph (no torch): query = normalize(user + mean(history)), mixture =
   the cluster histogram of the history, component queries = normalize(query + centroid).
   The single-vector `nprobe` is the smallest whose recall@100 against exact search on real
   queries reaches `target_recall`, measured in the same run.
2. Measures the bare cost (`Bundle.recommend`, one query at a time, no HTTP).
3. Starts `python -m plexus.serving` on loopback and drives it with wrk (a Lua script cycles
   through pre-made POST bodies), at several concurrency levels, for `diversify` false/true
   and for inline vs micro-batched execution.

Writes DIR/results.json (one row per mode x batching x concurrency) and DIR/results.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from plexus.serving import index as item_index
from plexus.serving.bundle import Bundle, write_bundle
from plexus.serving.knn_embed import AllocationConfig

__all__ = ["build_synthetic_bundle", "synthetic_query_onnx", "bench_serve", "run_wrk"]


# ---- synthetic bundle ---------------------------------------------------------------------------
def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def synthetic_query_onnx(
    path: Path,
    *,
    user_table: np.ndarray,
    item_table: np.ndarray,
    item_clusters: np.ndarray,
    centroids: np.ndarray,
    component_mix: float = 0.3,
) -> Path:
    """Write the bundle's query model as a plain ONNX graph (Gather, ReduceSum, MatMul).

    Tables: user (U+1, D), item (N+1, D) with row 0 = 0, item_clusters (N+1,), centroids (C, D).
    Inputs user (B,), history (B, L), history_mask (B, L); outputs query (B, D), mixture
    (B, C) and component_queries (B, C, D), as `plexus.serving.bundle.ONNX_OUTPUTS` requires.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    num_clusters, dim = centroids.shape
    init = [
        numpy_helper.from_array(np.ascontiguousarray(user_table, np.float32), "U"),
        numpy_helper.from_array(np.ascontiguousarray(item_table, np.float32), "I"),
        numpy_helper.from_array(np.maximum(item_clusters, 0).astype(np.int64), "IC"),
        numpy_helper.from_array(np.ascontiguousarray(centroids, np.float32), "CENT"),
        numpy_helper.from_array(np.ascontiguousarray(centroids.T, np.float32), "CENT_T"),
        numpy_helper.from_array(np.arange(num_clusters, dtype=np.int64), "CIDS"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([-1], np.int64), "axl"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
        numpy_helper.from_array(np.array(20.0, np.float32), "sharp"),
        numpy_helper.from_array(np.array(1.0 - component_mix, np.float32), "keep"),
        numpy_helper.from_array(np.array(component_mix, np.float32), "mix"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["U", "user"], ["ue"]),
        n("Gather", ["I", "history"], ["hv"]),
        n("Unsqueeze", ["history_mask", "axl"], ["m3"]),
        n("Mul", ["hv", "m3"], ["hvm"]),
        n("ReduceSum", ["hvm", "ax1"], ["hs"], keepdims=0),
        n("ReduceSum", ["history_mask", "ax1"], ["cnt"], keepdims=1),
        n("Max", ["cnt", "one"], ["cnt1"]),
        n("Div", ["hs", "cnt1"], ["hmean"]),
        n("Add", ["ue", "hmean"], ["q0"]),
        n("ReduceL2", ["q0"], ["qn"], axes=[-1], keepdims=1),
        n("Max", ["qn", "eps"], ["qn1"]),
        n("Div", ["q0", "qn1"], ["query"]),
        # Own interest distribution: the cluster histogram of the (masked) history.
        n("Gather", ["IC", "history"], ["hc"]),
        n("Unsqueeze", ["hc", "axl"], ["hc3"]),
        n("Equal", ["hc3", "CIDS"], ["eq"]),
        n("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
        n("Mul", ["onehot", "m3"], ["ohm"]),
        n("ReduceSum", ["ohm", "ax1"], ["counts"], keepdims=0),
        n("ReduceSum", ["counts", "axl"], ["total"], keepdims=1),
        n("Max", ["total", "one"], ["total1"]),
        n("Div", ["counts", "total1"], ["own"]),
        # No history: a sharp softmax over the centroids.
        n("MatMul", ["query", "CENT_T"], ["sims"]),
        n("Mul", ["sims", "sharp"], ["sims20"]),
        n("Softmax", ["sims20"], ["soft"], axis=-1),
        n("Greater", ["total", "zero"], ["has"]),
        n("Where", ["has", "own", "soft"], ["mixture"]),
        # Component queries: the query pulled towards each centroid. (B, 1, D) + (C, D)
        n("Unsqueeze", ["query", "ax1"], ["q3"]),
        n("Mul", ["q3", "keep"], ["q3k"]),
        n("Mul", ["CENT", "mix"], ["centm"]),
        n("Add", ["q3k", "centm"], ["c0"]),
        n("ReduceL2", ["c0"], ["cn"], axes=[-1], keepdims=1),
        n("Max", ["cn", "eps"], ["cn1"]),
        n("Div", ["c0", "cn1"], ["component_queries"]),
    ]
    graph = helper.make_graph(
        nodes,
        "plexus_synthetic_query",
        [
            helper.make_tensor_value_info("user", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("history", TensorProto.INT64, ["B", "L"]),
            helper.make_tensor_value_info("history_mask", TensorProto.FLOAT, ["B", "L"]),
        ],
        [
            helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", dim]),
            helper.make_tensor_value_info("mixture", TensorProto.FLOAT, ["B", num_clusters]),
            helper.make_tensor_value_info(
                "component_queries", TensorProto.FLOAT, ["B", num_clusters, dim]
            ),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    hits = sum(np.intersect1d(t, f).size for t, f in zip(truth, found, strict=True))
    return float(hits / truth.size)


def build_synthetic_bundle(
    directory: str | Path,
    *,
    items: int = 1_000_000,
    users: int = 100_000,
    dim: int = 64,
    clusters: int | None = None,
    history_len: int = 20,
    noise: float = 1.0,
    target_recall: float = 0.95,
    recall_queries: int = 1000,
    seed: int = 0,
    name: str = "synthetic",
) -> tuple[Path, dict[str, Any]]:
    """Write a bundle over a clustered synthetic catalog; returns (folder, info).

    `clusters` defaults to ~sqrt(items)/4 (256 at 1M): the IVF lists are the interest
    clusters. Item i (internal 1..N) has external id 10 * i; user u has 10 * u + 1.
    info: {"nprobe", "index_recall" (recall@100 vs exact at that nprobe), "recall_by_nprobe",
    "build_seconds"}.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    c = clusters or max(4, int(np.sqrt(items) / 4))
    centers = _normalize(rng.standard_normal((c, dim), dtype=np.float32))
    sizes = rng.multinomial(items - c, rng.dirichlet(np.full(c, 5.0))) + 1
    item_cluster = rng.permutation(np.repeat(np.arange(c), sizes))
    vectors = centers[item_cluster] + rng.standard_normal((items, dim), dtype=np.float32) * (
        noise / np.sqrt(dim)
    )
    vectors = _normalize(vectors).astype(np.float32)
    centroids = _normalize(np.stack([vectors[item_cluster == j].mean(0) for j in range(c)]))
    # Users: 1-3 interests, histories drawn from them (internal item ids 1..N).
    by_cluster = np.argsort(item_cluster, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    interests = rng.integers(0, c, size=(users, 3))
    n_int = rng.integers(1, 4, size=users)
    slot = np.floor(rng.random((users, history_len)) * n_int[:, None]).astype(np.int64)
    cl = np.take_along_axis(interests, slot, axis=1)
    pick = starts[cl] + np.floor(rng.random((users, history_len)) * sizes[cl]).astype(np.int64)
    seen = (by_cluster[pick] + 1).astype(np.int64)  # (U, L) internal ids
    user_table = np.zeros((users + 1, dim), np.float32)
    user_table[1:] = _normalize(rng.standard_normal((users, dim), dtype=np.float32)) * 0.2
    item_table = np.zeros((items + 1, dim), np.float32)
    item_table[1:] = vectors
    clusters_full = np.concatenate([[-1], item_cluster]).astype(np.int64)
    arrays = {
        "item_ids": np.concatenate([[-1], np.arange(1, items + 1) * 10]).astype(np.int64),
        "item_clusters": clusters_full,
        "item_popularity": np.bincount(seen.ravel(), minlength=items + 1).astype(np.float32),
        "user_ids": np.concatenate([[-1], np.arange(1, users + 1) * 10 + 1]).astype(np.int64),
        "seen_indptr": np.concatenate([[0], np.arange(users + 1) * history_len]).astype(np.int64),
        "seen_items": seen.ravel(),
    }
    ids = np.arange(1, items + 1, dtype=np.int64)
    index = item_index.build_cluster_index(vectors, item_cluster, centroids, ids)
    out = Path(directory)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = synthetic_query_onnx(
            Path(tmp) / "query.onnx",
            user_table=user_table,
            item_table=item_table,
            item_clusters=clusters_full,
            centroids=centroids,
        )
        # Real queries for the recall check: the model's own output for sampled users.
        import onnxruntime as ort

        sample = rng.choice(users, min(recall_queries, users), replace=False) + 1
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        hist = seen[sample - 1]
        (queries,) = session.run(
            ["query"],
            {"user": sample, "history": hist, "history_mask": np.ones(hist.shape, np.float32)},
        )
        del session
        k = min(100, items)
        truth = np.concatenate(
            [
                item_index.exact_search(vectors, ids, queries[lo : lo + 64], k)
                for lo in range(0, len(queries), 64)
            ]
        )
        recall_by_nprobe: dict[str, float] = {}
        nprobe = 1
        while True:
            _, found = item_index.search(index, queries, k, nprobe=nprobe)
            recall_by_nprobe[str(nprobe)] = _recall(truth, found)
            if recall_by_nprobe[str(nprobe)] >= target_recall or nprobe >= c:
                break
            nprobe = min(nprobe * 2, c)
        recall = recall_by_nprobe[str(nprobe)]
        manifest = {
            "name": name,
            "bundle_id": f"synthetic-{items}-{dim}-{seed}",
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dim": dim,
            "history_len": history_len,
            "num_clusters": c,
            "scoring": "cosine",
            "retrieval": {"nprobe": nprobe, "allocation": dataclasses.asdict(AllocationConfig())},
            "index": {"kind": "ivf_flat_clusters", "nlist": c, "recall_vs_exact": {str(k): recall}},
            "metrics": {},
            "synthetic": {"noise": noise, "seed": seed, "users": users},
        }
        write_bundle(out, onnx_model=onnx_path, index=index, arrays=arrays, manifest=manifest)
    info = {
        "nprobe": nprobe,
        "index_recall": recall,
        "recall_by_nprobe": recall_by_nprobe,
        "clusters": c,
        "build_seconds": time.perf_counter() - started,
    }
    return out, info


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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the benchmark ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Service:
    def __init__(self, bundle_dir: Path, batching: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        cmd = [
            sys.executable, "-m", "plexus.serving", "--model", str(bundle_dir), "--port", str(self.port),
            "--poll-interval", "0", "--batching", batching, "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not ready after 300 s; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


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

    One row per (mode, batching, concurrency) with mode, concurrency, qps, p50_ms, p95_ms,
    p99_ms, errors, bare_p50_ms, bare_p99_ms, index_recall (+ batching, load_generator).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import faiss

    faiss.omp_set_num_threads(1)
    params = {"items": items, "users": min(users, items), "dim": dim, "seed": seed}
    info_file = out / "bundle" / "bench_info.json"
    if info_file.is_file() and json.loads(info_file.read_text()).get("params") == params:
        bundle_dir, info = out / "bundle", json.loads(info_file.read_text())  # same catalog: reuse
    else:
        shutil.rmtree(out / "bundle", ignore_errors=True)
        bundle_dir, info = build_synthetic_bundle(out / "bundle", **params)
        info_file.write_text(json.dumps({**info, "params": params}))
    print(f"[bench serve] bundle: {info}", flush=True)
    bundle = Bundle.load(bundle_dir, version="bench")
    rng = np.random.default_rng(seed + 1)
    user_ids = bundle.user_ids[1:][rng.choice(bundle.num_users, 2000, replace=False)].tolist()
    modes = {"single": False, "knn_embed": True}
    bare = {}
    for mode, diversify in modes.items():
        queries = [{"user_id": u, "k": k, "diversify": diversify} for u in user_ids]
        bare_latency(bundle, queries[:100])  # warm-up
        bare[mode] = bare_latency(bundle, queries)
        print(f"[bench serve] bare {mode}: {bare[mode]}", flush=True)
    del bundle
    rows: list[dict] = []
    for mode_batching in batching:
        service = _Service(bundle_dir, mode_batching, out / f"service-{mode_batching}.log")
        try:
            for mode, diversify in modes.items():
                bodies = [
                    json.dumps({"user_id": u, "k": k, "diversify": diversify}).encode()
                    for u in user_ids
                ]
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
                        "k": k,
                    }
                    print(f"[bench serve] {row}", flush=True)
                    rows.append(row)
        finally:
            service.stop()
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(_markdown(rows, info, bare))
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
    lines += [
        "",
        "| mode | batching | concurrency | QPS | p50 ms | p95 ms | p99 ms | errors "
        "| HTTP overhead p50 ms | server CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batching']} | {r['concurrency']} | {r['qps']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} "
            f"| {r['p50_ms'] - r['bare_p50_ms']:.2f} | {r['server_cpu_ms_per_request']:.3f} |"
        )
    return "\n".join(lines) + "\n"
