"""Start the service: `python -m plexus.serving --model NAME@ALIAS` (what `plexus serve` calls).

One uvicorn process with uvloop + httptools when installed (`uvicorn[standard]`), else the
pure-Python asyncio/h11 stack. Access logs are off (the /metrics counters replace them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from plexus.platform.errors import PlexusError
from plexus.serving.config import Batching, ServeConfig
from plexus.serving.registry import ModelRef

__all__ = ["build_parser", "config_from_args", "serve", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `serve` options; pass a sub-parser to graft them onto another CLI (`plexus serve`)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m plexus.serving", description="Plexus candidate-retrieval service."
    )
    env = os.environ.get
    p.add_argument(
        "--model",
        default=env("PLEXUS_SERVE_MODEL"),
        help="NAME@ALIAS (alias 'champion' if omitted), NAME/VERSION, or a bundle folder "
        "[env PLEXUS_SERVE_MODEL]",
    )
    p.add_argument("--host", default=env("PLEXUS_SERVE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("PLEXUS_SERVE_PORT", "8000")))
    p.add_argument(
        "--tracking-uri",
        default=env("MLFLOW_TRACKING_URI"),
        help="MLflow tracking/registry URI [env MLFLOW_TRACKING_URI]",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=float(env("PLEXUS_SERVE_POLL_INTERVAL", "30")),
        help="seconds between registry alias checks; 0 = never (default 30)",
    )
    p.add_argument("--cache-dir", default=env("PLEXUS_SERVE_CACHE_DIR"), help="download folder")
    p.add_argument("--threads", type=int, default=int(env("PLEXUS_SERVE_THREADS", "1")))
    p.add_argument(
        "--batching",
        choices=[b.value for b in Batching],
        default=env("PLEXUS_SERVE_BATCHING", Batching.MICRO.value),
        help="micro: concurrent requests merged into one model call on a worker thread (default); "
        "loop: merged, in the event loop; inline: one request per model call",
    )
    p.add_argument("--max-batch", type=int, default=64, help="queries per micro-batch")
    p.add_argument("--max-k", type=int, default=1000)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request body before it gets a 408 (default 10)",
    )
    p.add_argument("--log-level", default=env("PLEXUS_SERVE_LOG_LEVEL", "info"))
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The parsed options as a validated `ServeConfig`."""
    return ServeConfig(
        model=args.model or "",
        host=args.host,
        port=args.port,
        tracking_uri=args.tracking_uri,
        poll_interval=args.poll_interval,
        cache_dir=args.cache_dir,
        threads=args.threads,
        batching=Batching(args.batching),
        max_batch=args.max_batch,
        max_k=args.max_k,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        log_level=args.log_level,
    )


def serve(config: ServeConfig) -> None:
    """Run the service in this process until interrupted (blocking).

    The first bundle is loaded and smoke-tested before the port opens: a missing bundle,
    version or alias, an unreachable registry or a bundle that fails to load ends the process
    with a `RegistryError` naming the reference, instead of a service that never gets ready.
    Later versions are loaded in the background and a bad one is refused while the loaded one
    keeps serving.
    """
    import uvicorn
    from plexus.serving.app import create_app

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # MLflow's HTTP client retries a refused connection for minutes, which would freeze the
    # poller through a registry outage; the watcher has its own back-off, so fail a poll fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # One thread for faiss: concurrency comes from requests, not from splitting one search. The
    # environment sets it for every thread (omp_set_num_threads only for the calling one: the
    # micro-batcher's worker thread ran faiss with one spinning OpenMP thread per core).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    app = create_app(config)
    watcher = app.state.plexus.watcher
    try:  # fail fast: a service that can never become ready must not sit there unready
        watcher.start(background=False)
    except BaseException:
        watcher.stop()
        raise
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: parse, validate, serve. Returns the exit status (2 on a configuration error)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        ModelRef.parse(config.model)
    except PlexusError as exc:
        print(f"plexus serve: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config)
    except PlexusError as exc:
        print(f"plexus serve: nothing to serve: {exc}", file=sys.stderr)
        return 2
    return 0
