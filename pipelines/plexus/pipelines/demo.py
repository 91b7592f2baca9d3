"""`plexus demo` (what `make demo` runs): the whole mission once, on the embedded defaults.

1. a planted multi-interest interaction log (`data.synth.synth_interactions`, LightGCN layout);
2. `plexus run demo`: ingest -> two towers over Feature Multiplexing tables (Coleman et al.,
   2023: two summed probes into one shared table at half the full bytes) trained on local Ray
   -> kNN-Embed -> ONNX export checked against torch -> a new version in the MLflow registry
   (SQLite next to the working folder) with the alias `@champion`;
3. the service (`python -m plexus.serving`) loads `plexus-demo@champion` on 127.0.0.1;
4. one retrieval request is answered and printed (`[plexus] served: ...`);
5. the service is stopped, and the places to look at are printed.

Every step is the one users run; the demo only chooses the sizes. Rerunning reuses the ingest
and the trained model (same config, same input) and registers a new version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]


def _say(message: str) -> None:
    print(f"[plexus] {message}", flush=True)


def _held_out(log: Path, user: int) -> list[int]:
    """The user's items in the log's `test.txt` (external ids)."""
    for line in (log / "test.txt").read_text().splitlines():
        ids = [int(x) for x in line.split()]
        if ids and ids[0] == user:
            return ids[1:]
    return []


def run_demo(
    *,
    interactions: int = 90_000,
    folder: Path = Path("runs/demo"),
    k: int = 10,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the demo; returns what was served (request, candidates, version, places to look)."""
    from plexus.pipelines import tracking
    from plexus.pipelines.config import config_path
    from plexus.pipelines.data.synth import synth_interactions
    from plexus.pipelines.retrieval import load_retrieval_config, run_retrieval_job
    from plexus.serving.process import ServiceProcess

    start = time.perf_counter()
    folder = Path(folder)
    log = synth_interactions(folder / "log", interactions=interactions)
    _say(f"1/5 log: {log} (about {interactions:,} planted multi-interest interactions)")

    _say("2/5 ingest -> train on local Ray -> kNN-Embed -> ONNX -> MLflow registry")
    config = load_retrieval_config(config_path("demo"), [f"data.path={log}", *overrides])
    outcome = run_retrieval_job(config)
    model_ref = f"{outcome['model_name']}@{config.export.alias or 'champion'}"
    tower = outcome["tower"]
    _say(
        f"trained and registered {outcome['model_name']} version {outcome['version']}: "
        f"Recall@20 {tower.get('recall@20', float('nan')):.4f}, "
        f"NDCG@20 {tower.get('ndcg@20', float('nan')):.4f}"
    )

    uri = tracking.configure(config.tracking.uri)
    _say(f"3/5 service: python -m plexus.serving --model {model_ref} on 127.0.0.1")
    user = int((log / "test.txt").read_text().split(maxsplit=1)[0])
    request = {"user_id": user, "k": k}
    with ServiceProcess(
        model_ref,
        log=folder / "service.log",
        tracking_uri=uri,
        cache_dir=folder / "service-cache",
        poll_interval=0,
    ) as service:
        ready = service.wait_ready(timeout=300)
        status, answer = service.post("/v1/retrieve", request)
        if status != 200:
            raise RuntimeError(f"the service answered {status}: {answer}; see {service.log}")
        _say(f"4/5 answered by {ready['model']} version {ready['version']} at {service.url}")
        candidates = [int(item) for item in answer["items"]]
        hits = sorted(set(candidates) & set(_held_out(log, user)))
        _say(
            f"served: POST /v1/retrieve {json.dumps(request)} -> {candidates}"
            f" ({len(hits)} of the user's held-out items among them: {hits})"
        )
    _say(f"5/5 service stopped; the demo took {time.perf_counter() - start:.0f} s")
    store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    ui = f"mlflow ui --backend-store-uri {uri}" if store else f"open {uri}"
    _say(f"look at the runs and the registry: {ui}  (then http://127.0.0.1:5000)")
    _say(f"the bundle (ONNX, item index, arrays, manifest): {outcome['bundle']}")
    _say(f"the kNN-Embed report: {Path(outcome['output']) / 'results.md'}")
    _say(f"the service's log: {folder / 'service.log'}")
    return {
        "request": request,
        "candidates": candidates,
        "held_out_hits": hits,
        "version": str(ready["version"]),
        "model": outcome["model_name"],
        "bundle": outcome["bundle"],
        "tracking_uri": uri,
    }
