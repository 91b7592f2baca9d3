"""The HTTP app: retrieve, batch retrieve, health, readiness, Prometheus metrics, OpenAPI.

Lean request path: `async` handlers read the raw body, validate it by hand
(`validation.py`), and answer with orjson (numpy arrays serialized natively); no pydantic
model and no thread-pool hop per request. The OpenAPI document is declared from the same
JSON schemas the validator enforces.

Example:
    >>> app = create_app(ServeConfig(model="retrieval@champion"))        # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from plexus.serving.config import Batching, ServeConfig
from plexus.serving.engine import Catalog, MicroBatcher, Result, execute
from plexus.serving.metrics import ServiceMetrics
from plexus.serving.registry import BundleWatcher, ModelRef
from plexus.serving.validation import (
    ERROR_SCHEMA,
    RESPONSE_SCHEMA,
    Limits,
    RequestError,
    RetrieveQuery,
    batch_schema,
    parse_batch,
    parse_retrieve,
    retrieve_schema,
)

__all__ = ["create_app", "ServiceState", "RetrievalASGI"]

log = logging.getLogger("plexus.serving")
JSON = "application/json"
_DUMP = orjson.OPT_SERIALIZE_NUMPY


class ServiceState:
    """What the handlers share: config, metrics, the bundle watcher and the executor."""

    def __init__(self, config: ServeConfig, watcher: BundleWatcher | None = None) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.watcher = watcher or BundleWatcher(
            ModelRef.parse(config.model),
            metrics=self.metrics,
            tracking_uri=config.tracking_uri,
            poll_interval=config.poll_interval,
            cache_dir=config.cache_dir,
            threads=config.threads,
        )
        self.watcher.metrics = self.metrics
        self.limits = Limits(
            max_k=config.max_k,
            default_k=config.default_k,
            max_history=config.max_history,
            max_exclude=config.max_exclude,
        )
        self.batcher: MicroBatcher | None = None
        if config.batching is not Batching.INLINE:
            threaded = config.batching is Batching.MICRO
            self.batcher = MicroBatcher(
                self._compute, max_batch=config.max_batch, threaded=threaded
            )
            self.batcher.on_batch = lambda n: self.metrics.batch_size.observe(n)

    def _compute(self, queries: list[RetrieveQuery]) -> list[Result]:
        catalog = self.watcher.current  # read once: the whole call uses this bundle
        if catalog is None:
            raise RequestError(503, "no bundle is loaded yet; retry when /readyz answers 200")
        return execute(catalog, queries)

    async def run(self, queries: list[RetrieveQuery]) -> list[Result]:
        """Answer queries through the micro-batcher or inline in the event loop."""
        if self.batcher is not None:
            return await self.batcher.submit(queries)
        self.metrics.batch_size.observe(len(queries))
        return self._compute(queries)

    async def retrieve(self, body: bytes) -> tuple[int, bytes]:
        """`POST /v1/retrieve`: raw body -> (status, JSON bytes)."""
        try:
            query = parse_retrieve(body, self.limits)
            (result,) = await self.run([query])
            if isinstance(result, RequestError):
                raise result
            self.record([query], [result])
            return 200, orjson.dumps(result, option=_DUMP)
        except RequestError as exc:
            return exc.status, _error_body(exc.status, exc.message)
        except Exception as exc:  # never crash on a request; report it as a 500 with the cause
            log.exception("retrieve failed")
            return 500, _error_body(500, f"internal error: {type(exc).__name__}: {exc}")

    async def retrieve_batch(self, body: bytes) -> tuple[int, bytes]:
        """`POST /v1/retrieve/batch`: each query answers or fails on its own."""
        try:
            queries = parse_batch(
                body, self.limits, max_batch_request=self.config.max_batch_request
            )
            results = await self.run(queries)
            self.record(queries, results)
            payload = {
                "results": [
                    {"error": r.message, "status": r.status} if isinstance(r, RequestError) else r
                    for r in results
                ]
            }
            return 200, orjson.dumps(payload, option=_DUMP)
        except RequestError as exc:
            return exc.status, _error_body(exc.status, exc.message)
        except Exception as exc:
            log.exception("batch retrieve failed")
            return 500, _error_body(500, f"internal error: {type(exc).__name__}: {exc}")

    def record(self, queries: list[RetrieveQuery], results: list[Result]) -> None:
        for query, result in zip(queries, results, strict=True):
            if isinstance(result, dict):
                self.metrics.candidates.inc("knn_embed" if query.diversify else "single")
                if result["skipped_history"]:
                    self.metrics.skipped_history.inc(amount=len(result["skipped_history"]))


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": message, "status": status})


def _error(status: int, message: str) -> Response:
    return Response(_error_body(status, message), status_code=status, media_type=JSON)


def _check_length(declared: bytes | str | None, limit: int) -> None:
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise RequestError(400, f"bad Content-Length header {declared!r:.40}") from None
    if size > limit:
        raise RequestError(413, f"body of {size} bytes is over the limit of {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes (413) before reading it when possible."""
    _check_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive_body(scope: dict, receive: Any, limit: int, timeout: float) -> bytes:
    """ASGI version of `_read_body`, with a deadline: a client that declares a body and stops
    sending it (a half-open connection) gets a 408 after `timeout` s instead of holding the
    connection and its buffers forever."""
    try:
        return await asyncio.wait_for(_receive_all(scope, receive, limit), timeout)
    except TimeoutError:
        raise RequestError(408, f"request body not received within {timeout:g} s") from None


async def _receive_all(scope: dict, receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            _check_length(value, limit)
    chunks: list[bytes] = []
    total = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class RetrievalASGI:
    """The ASGI entry point. The two retrieval POST routes are answered here directly (no
    routing, no Request object, no dependency solving); everything else (health, metrics,
    OpenAPI, lifespan) goes to the FastAPI app, which also declares the retrieval routes for
    the OpenAPI document and answers them identically if reached."""

    def __init__(self, app: FastAPI, state: ServiceState) -> None:
        self.app = app
        self.state = app.state
        self._service = state
        self._routes = {"/v1/retrieve": state.retrieve, "/v1/retrieve/batch": state.retrieve_batch}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        handler = self._routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            config = self._service.config
            body = await _receive_body(scope, receive, config.max_body_bytes, config.body_timeout)
            status, payload = await handler(body)
        except RequestError as exc:
            status, payload = exc.status, _error_body(exc.status, exc.message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self._service.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


def _openapi_body(schema: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    error = {"content": {JSON: {"schema": ERROR_SCHEMA}}}
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}},
        "responses": {
            200: {
                "description": "Candidates, best first.",
                "content": {JSON: {"schema": response}},
            },
            400: {"description": "Body is not JSON.", **error},
            404: {"description": "Unknown user and no history.", **error},
            408: {"description": "Body not received within the body timeout.", **error},
            413: {"description": "Body too large.", **error},
            422: {
                "description": "A field is missing, of the wrong type or out of range; or the "
                "user is unknown and no history item is in the catalog.",
                **error,
            },
            503: {"description": "No bundle loaded yet.", **error},
        },
    }


def create_app(config: ServeConfig, *, watcher: BundleWatcher | None = None) -> RetrievalASGI:
    """The FastAPI app. The bundle is loaded in the background at startup (`/readyz` is 503
    until it is warmed) and followed on the registry alias every `config.poll_interval` s."""
    state = ServiceState(config, watcher)
    metrics = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not state.watcher.started:
            state.watcher.start(background=True)
        yield
        state.watcher.stop()
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(
        title="Plexus candidate retrieval",
        version="1",
        description="K diverse candidates per user from the bundle the registry alias points at.",
        lifespan=lifespan,
    )
    app.state.plexus = state
    one_schema = retrieve_schema(state.limits)
    many_schema = batch_schema(state.limits, max_batch_request=config.max_batch_request)
    many_response = {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {"anyOf": [RESPONSE_SCHEMA, ERROR_SCHEMA]},
                "description": "One entry per query, in order; an entry with `error` failed alone.",
            }
        },
    }

    async def _answer(request: Request, handler: Any) -> Response:
        start = time.perf_counter()
        try:
            body = await asyncio.wait_for(
                _read_body(request, config.max_body_bytes), config.body_timeout
            )
            status, payload = await handler(body)
        except TimeoutError:
            message = f"request body not received within {config.body_timeout:g} s"
            status, payload = 408, _error_body(408, message)
        except RequestError as exc:
            status, payload = exc.status, _error_body(exc.status, exc.message)
        metrics.observe_request(request.url.path, status, time.perf_counter() - start)
        return Response(payload, status_code=status, media_type=JSON)

    @app.post("/v1/retrieve", **_openapi_body(one_schema, RESPONSE_SCHEMA))
    async def retrieve(request: Request) -> Response:
        """K candidates for one user id and/or history."""
        return await _answer(request, state.retrieve)

    @app.post("/v1/retrieve/batch", **_openapi_body(many_schema, many_response))
    async def retrieve_batch(request: Request) -> Response:
        """Up to `max_batch_request` queries in one call; each answers or fails on its own."""
        return await _answer(request, state.retrieve_batch)

    @app.get("/healthz")
    async def healthz() -> Response:
        """Alive (the process answers), whether or not a bundle is loaded."""
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        """200 once a bundle is loaded and warmed, with its name and version; 503 before."""
        catalog: Catalog | None = state.watcher.current
        if catalog is None:
            refused = state.watcher.refused
            return _error(503, f"no bundle loaded yet from {state.watcher.ref}; refused: {refused}")
        body = {"status": "ready", "model": catalog.bundle.name, "version": catalog.bundle.version}
        return Response(orjson.dumps(body), media_type=JSON)

    @app.get("/v1/model")
    async def model_info() -> Response:
        """The serving bundle's manifest (sizes, index recall, metrics) and refused versions."""
        catalog = state.watcher.current
        if catalog is None:
            return _error(503, "no bundle loaded yet")
        body = {
            "name": catalog.bundle.name,
            "version": catalog.bundle.version,
            "source": str(state.watcher.ref),
            "manifest": catalog.bundle.manifest,
            "refused": state.watcher.refused,
        }
        return Response(orjson.dumps(body, option=_DUMP), media_type=JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return RetrievalASGI(app, state)
