"""Executing validated queries against the serving bundle, inline or micro-batched.

`execute` checks what only the bundle can check (unknown user, unknown history items), groups
the queries by (k, diversify, exclude_seen) and makes one `Bundle.recommend_batch` call per
group: one onnxruntime run and one faiss search however many queries arrived together.

`MicroBatcher` gathers the queries of concurrent requests into one model call. No timer is
involved, so an idle service answers at once and a busy one batches as much as it needs:
threaded, the model runs on a worker thread and requests arriving meanwhile queue up for the
next call; unthreaded, the model runs in the event loop on every request whose handler ran in
the same loop iteration (those that arrived together while the previous call ran).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import numpy as np
from plexus.serving.bundle import Bundle
from plexus.serving.validation import RequestError, RetrieveQuery

__all__ = ["Catalog", "execute", "MicroBatcher"]

Result: TypeAlias = dict[str, Any] | RequestError


class Catalog:
    """The per-request id checks, answered by the bundle's own id lookups (no second copy of a
    per-user or per-item array)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def known_items(self, ids: Sequence[int]) -> np.ndarray:
        """(n,) bool: which external item ids are in the catalog."""
        return self.bundle.item_lookup(np.asarray(ids, dtype=np.int64)) > 0

    def has_user(self, user_id: int) -> bool:
        return self.bundle.has_user(user_id)


def _prepare(
    catalog: Catalog, query: RetrieveQuery
) -> tuple[tuple[int, ...], list[int]] | RequestError:
    """-> (known history, skipped ids), or the client error for this query."""
    history = query.history or ()
    skipped: list[int] = []
    if history:
        known = catalog.known_items(history)
        if not known.all():
            skipped = [int(i) for i in np.asarray(history)[~known]]
            history = tuple(int(i) for i in np.asarray(history)[known])
    user_known = query.user_id is not None and catalog.has_user(query.user_id)
    if not user_known and not history:
        if query.history:
            return RequestError(
                422,
                f"none of the {len(query.history)} history item ids is in the catalog "
                f"(skipped: {skipped[:10]}) and the user is unknown: nothing to retrieve from",
            )
        return RequestError(
            404,
            f"user {query.user_id} is unknown to model {catalog.bundle.name} "
            f"v{catalog.bundle.version}; send recent item ids in `history`",
        )
    return history, skipped


def execute(catalog: Catalog, queries: Sequence[RetrieveQuery]) -> list[Result]:
    """Answer `queries` with `catalog.bundle`: one result dict or RequestError per query."""
    bundle = catalog.bundle
    results: list[Result | None] = [None] * len(queries)
    groups: dict[tuple[int, bool, bool], list[tuple[int, tuple[int, ...], list[int]]]] = {}
    for pos, query in enumerate(queries):
        prepared = _prepare(catalog, query)
        if isinstance(prepared, RequestError):
            results[pos] = prepared
            continue
        key = (query.k, query.diversify, query.exclude_seen)
        groups.setdefault(key, []).append((pos, *prepared))
    for (k, diversify, exclude_seen), members in groups.items():
        answers = bundle.recommend_batch(
            [queries[pos].user_id for pos, _, _ in members],
            [history for _, history, _ in members],
            k=k,
            diversify=diversify,
            excludes=[queries[pos].exclude for pos, _, _ in members],
            exclude_seen=exclude_seen,
        )
        for (pos, _, skipped), answer in zip(members, answers, strict=True):
            results[pos] = {
                "model": bundle.name,
                "version": answer.version,
                "items": answer.item_ids,
                "scores": answer.scores,
                "clusters": answer.clusters,
                "skipped_history": skipped,
            }
    return results  # type: ignore[return-value]


class MicroBatcher:
    """Runs `compute(queries)` on merged queries of concurrent requests (see the module doc).

    `submit` is called from the event loop; up to `max_batch` queries go into one call.
    """

    def __init__(
        self,
        compute: Callable[[list[RetrieveQuery]], list[Result]],
        *,
        max_batch: int,
        threaded: bool = True,
    ) -> None:
        self._compute = compute
        self._max_batch = max_batch
        self._pending: list[tuple[list[RetrieveQuery], asyncio.Future[list[Result]]]] = []
        self._running = False
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="plexus-model")
            if threaded
            else None
        )
        self.on_batch: Callable[[int], None] | None = None

    async def submit(self, queries: list[RetrieveQuery]) -> list[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Result]] = loop.create_future()
        self._pending.append((queries, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # let the handlers already scheduled in this iteration enqueue
            while self._pending:
                take, size = 0, 0
                while take < len(self._pending) and (
                    take == 0 or size + len(self._pending[take][0]) <= self._max_batch
                ):
                    size += len(self._pending[take][0])
                    take += 1
                batch, self._pending = self._pending[:take], self._pending[take:]
                flat = [q for queries, _ in batch for q in queries]
                if self.on_batch is not None:
                    self.on_batch(len(flat))
                try:
                    if self._executor is None:
                        results = self._compute(flat)
                    else:
                        results = await loop.run_in_executor(self._executor, self._compute, flat)
                except Exception as exc:  # hand the failure to every waiting request
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for queries, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(queries)])
                    start += len(queries)
        finally:
            self._running = False

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
