"""Request validation for the retrieval endpoints: raw JSON -> typed queries, or a 4xx that says why.

Hand-written rather than pydantic: the request path stays a few microseconds, every message
names the offending field (`requests[3].k: ...`), and the JSON schemas below are both the
OpenAPI document and the contract the fuzz tests check the validator against.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

__all__ = [
    "RequestError",
    "Limits",
    "RetrieveQuery",
    "parse_retrieve",
    "parse_batch",
    "retrieve_schema",
    "batch_schema",
    "RESPONSE_SCHEMA",
    "ERROR_SCHEMA",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FIELDS = ("user_id", "history", "k", "exclude", "diversify", "exclude_seen")


class RequestError(Exception):
    """A client error: HTTP `status` and a message that says what was wrong and what to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """What one query may ask for (from `ServeConfig`)."""

    max_k: int = 1000
    default_k: int = 100
    max_history: int = 1000
    max_exclude: int = 10_000


@dataclasses.dataclass(frozen=True)
class RetrieveQuery:
    """One validated query; ids are external int64 ids (history most recent last)."""

    user_id: int | None
    history: tuple[int, ...] | None
    k: int
    exclude: tuple[int, ...]
    diversify: bool
    exclude_seen: bool


def loads(body: bytes) -> Any:
    """Parse JSON or raise a 400 that quotes the parser's reason."""
    if not body:
        raise RequestError(400, 'empty body: send a JSON object, e.g. {"user_id": 42, "k": 100}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def _int(value: Any, where: str) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise RequestError(
            422, f"{where}: expected an integer id, got {type(value).__name__} {value!r:.40}"
        )
    if not INT64_MIN <= value <= INT64_MAX:
        raise RequestError(422, f"{where}: {value} does not fit in int64")
    return value


def _ids(value: Any, where: str, limit: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RequestError(
            422, f"{where}: expected a list of integer ids, got {type(value).__name__}"
        )
    if len(value) > limit:
        raise RequestError(422, f"{where}: {len(value)} ids is more than the limit of {limit}")
    for pos, item in enumerate(value):
        if type(item) is not int or not INT64_MIN <= item <= INT64_MAX:
            _int(item, f"{where}[{pos}]")
    return tuple(value)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise RequestError(422, f"{where}: expected true or false, got {value!r:.40}")
    return value


def parse_query(obj: Any, limits: Limits, *, where: str = "body") -> RetrieveQuery:
    """Validate one query object (see `retrieve_schema`)."""
    if not isinstance(obj, dict):
        raise RequestError(422, f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = [key for key in obj if key not in FIELDS]
    if unknown:
        raise RequestError(422, f"{where}: unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    prefix = "" if where == "body" else f"{where}."
    user = obj.get("user_id")
    user_id = None if user is None else _int(user, f"{prefix}user_id")
    raw_history = obj.get("history")
    history = (
        None if raw_history is None else _ids(raw_history, f"{prefix}history", limits.max_history)
    )
    if user_id is None and not history:
        raise RequestError(
            422,
            f"{where}: give a user_id and/or a non-empty history (recent item ids, most recent last)",
        )
    k = obj.get("k", limits.default_k)
    if type(k) is not int or not 1 <= k <= limits.max_k:
        raise RequestError(
            422, f"{prefix}k: must be an integer in [1, {limits.max_k}], got {k!r:.40}"
        )
    raw_exclude = obj.get("exclude")
    exclude = (
        () if raw_exclude is None else _ids(raw_exclude, f"{prefix}exclude", limits.max_exclude)
    )
    diversify = _bool(obj.get("diversify", True), f"{prefix}diversify")
    exclude_seen = _bool(obj.get("exclude_seen", True), f"{prefix}exclude_seen")
    return RetrieveQuery(user_id, history, k, exclude, diversify, exclude_seen)


def parse_retrieve(body: bytes, limits: Limits) -> RetrieveQuery:
    """`POST /v1/retrieve` body -> query (400 bad JSON, 422 bad fields)."""
    return parse_query(loads(body), limits)


def parse_batch(body: bytes, limits: Limits, *, max_batch_request: int) -> list[RetrieveQuery]:
    """`POST /v1/retrieve/batch` body {"requests": [...]} -> queries; errors name the index."""
    obj = loads(body)
    if not isinstance(obj, dict) or set(obj) != {"requests"}:
        raise RequestError(422, 'body: expected {"requests": [query, ...]} and no other field')
    queries = obj["requests"]
    if not isinstance(queries, list) or not queries:
        raise RequestError(422, "requests: expected a non-empty list of query objects")
    if len(queries) > max_batch_request:
        raise RequestError(
            422,
            f"requests: {len(queries)} queries is more than the limit of {max_batch_request}; split the batch",
        )
    return [parse_query(q, limits, where=f"requests[{i}]") for i, q in enumerate(queries)]


def retrieve_schema(limits: Limits) -> dict[str, Any]:
    """JSON schema of one query (the OpenAPI request body of `/v1/retrieve`)."""
    int64 = {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "user_id": {"anyOf": [int64, {"type": "null"}], "description": "External user id."},
            "history": {
                "anyOf": [
                    {"type": "array", "items": int64, "maxItems": limits.max_history},
                    {"type": "null"},
                ],
                "description": "Recent external item ids, most recent last; unknown ids are skipped.",
            },
            "k": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.max_k,
                "default": limits.default_k,
            },
            "exclude": {
                "anyOf": [
                    {"type": "array", "items": int64, "maxItems": limits.max_exclude},
                    {"type": "null"},
                ]
            },
            "diversify": {
                "type": "boolean",
                "default": True,
                "description": "true: kNN-Embed over the user's interests; false: single-vector ANN.",
            },
            "exclude_seen": {"type": "boolean", "default": True},
        },
        "example": {"user_id": 42, "k": 100, "diversify": True},
    }


def batch_schema(limits: Limits, *, max_batch_request: int) -> dict[str, Any]:
    """JSON schema of `/v1/retrieve/batch`."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["requests"],
        "properties": {
            "requests": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch_request,
                "items": retrieve_schema(limits),
            }
        },
    }


RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "items", "scores", "clusters", "skipped_history"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string", "description": "The registry version that answered."},
        "items": {"type": "array", "items": {"type": "integer"}, "description": "Best first."},
        "scores": {"type": "array", "items": {"type": "number"}},
        "clusters": {"type": "array", "items": {"type": "integer"}},
        "skipped_history": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "History ids not in the catalog (ignored).",
        },
    },
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}
