"""``POST /txn``: compares, then one of two lists of operations, atomically in one log entry
(etcd's ``Txn``).

Body::

    {"compare": [{"key": "k", "target": "value", "op": "==", "value": "v"},
                 {"key": "k", "target": "mod_index", "op": "<", "index": 7},
                 {"key": "k", "target": "create_index", "index": 0},
                 {"key": "k", "target": "exists", "exists": false}],
     "success": [{"op": "put", "key": "k", "value": "v", "ttl_ms": 1000},
                 {"op": "delete", "key": "j"}, {"op": "get", "key": "k"}],
     "failure": [{"op": "get", "key": "k"}]}

``op`` of a compare defaults to ``==`` (``exists`` takes ``==``/``!=`` only); every list may
be empty or absent. Answer: ``200 {"index", "succeeded", "results": [...]}`` with one result
per operation of the branch that ran (``{"op": "get", "key", "value", "create_index",
"mod_index", "ttl_ms"}``, ``value`` null and indexes 0 for an absent key; ``{"op": "put"|
"delete", "key"}``), ``X-Dengine-Index``; ``Idempotency-Key`` as on ``POST /kv``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quart import Response, request

from dengine_trio.api import ApiError, App
from dengine_trio.api.kvparse import (
    check_members,
    idempotency_key,
    index_member,
    key_member,
    ttl_member,
    value_member,
    write_response,
)
from dengine_trio.client_types import TxnOp
from dengine_trio.kv_commands import Compare

if TYPE_CHECKING:
    from dengine_trio.engine import Client

__all__ = ["install_txn_route"]

_TARGETS = {"value": "value", "exists": "exists", "mod_index": "mod", "create_index": "create"}
_OPS = frozenset({"==", "!=", "<", ">"})
_TXN_MEMBERS = frozenset({"compare", "success", "failure"})
_TXN_SHAPE = '{"compare": [...], "success": [...], "failure": [...]}'
_COMPARE_MEMBERS = frozenset({"key", "target", "op", "value", "index", "exists"})
_OP_MEMBERS = {
    "put": frozenset({"op", "key", "value", "ttl_ms"}),
    "delete": frozenset({"op", "key"}),
    "get": frozenset({"op", "key"}),
}


def _list(doc: dict[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if type(value) is not list:
        raise ApiError(400, "invalid_request", f'"{name}" must be a list')
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise ApiError(400, "invalid_request", f"each {what} must be an object")
    return value


def parse_compare(raw: Any) -> Compare:
    """One compare object as the state machine's ``Compare`` (400 ``invalid_compare``)."""
    doc = _object(raw, "compare")
    check_members(doc, _COMPARE_MEMBERS, "a compare")
    key = key_member(doc)
    target = doc.get("target")
    if target not in _TARGETS:
        raise ApiError(
            400,
            "invalid_compare",
            f'"target" must be one of {", ".join(_TARGETS)}',
        )
    op = doc.get("op", "==")
    if op not in _OPS:
        raise ApiError(400, "invalid_compare", '"op" must be one of ==, !=, <, >')
    operand: bytes | bool | int
    if target == "value":
        operand = value_member(doc)
    elif target == "exists":
        if type(doc.get("exists")) is not bool:
            raise ApiError(400, "invalid_compare", 'an exists compare needs "exists": true|false')
        if op not in ("==", "!="):
            raise ApiError(400, "invalid_compare", "an exists compare takes == or != only")
        operand = doc["exists"]
    else:
        if "index" not in doc:
            raise ApiError(400, "invalid_compare", f'a {target} compare needs "index"')
        operand = index_member(doc, "index")
    return Compare(key, _TARGETS[target], op, operand)  # type: ignore[arg-type]


def parse_op(raw: Any) -> TxnOp:
    """One operation object (400 ``invalid_op`` for an unknown ``op``)."""
    doc = _object(raw, "operation")
    kind = doc.get("op")
    if kind not in _OP_MEMBERS:
        raise ApiError(400, "invalid_op", '"op" must be one of put, delete, get')
    check_members(doc, _OP_MEMBERS[kind], f"a {kind} operation")
    key = key_member(doc)
    if kind == "put":
        return TxnOp.put(key, value_member(doc), ttl_member(doc))
    return TxnOp.delete(key) if kind == "delete" else TxnOp.get(key)


def install_txn_route(
    app: App, client: Client, parse_body: Callable[[str | bytes, str], dict[str, Any]]
) -> None:
    """Add ``POST /txn`` to the KV ``app``. Refusals: 400 ``invalid_json``,
    ``invalid_request`` (not an object, a list that is not one, an unknown member),
    ``invalid_compare``, ``invalid_op``, ``invalid_key``, ``invalid_value``, ``invalid_index``,
    ``invalid_ttl``, ``invalid_txn`` (a key written twice in one branch),
    ``invalid_idempotency_key``; 413 ``too_many_txn_ops`` (over ``[limits] max_txn_ops``),
    ``txn_too_large`` (over ``max_txn_bytes``), ``key_too_large``, ``value_too_large``,
    ``body_too_large``."""

    @app.post("/txn")
    async def txn() -> Response:
        doc = parse_body(await request.get_data(cache=False), _TXN_SHAPE)
        check_members(doc, _TXN_MEMBERS, "a transaction")
        compares = [parse_compare(c) for c in _list(doc, "compare")]
        success = [parse_op(o) for o in _list(doc, "success")]
        failure = [parse_op(o) for o in _list(doc, "failure")]
        key = idempotency_key(request.headers)
        try:
            outcome = await client.txn(compares, success, failure, idempotency_key=key)
        except ValueError as exc:  # the state machine's encoder: e.g. a key written twice
            raise ApiError(400, "invalid_txn", str(exc)) from None
        results: list[dict[str, Any]] = []
        for result in outcome.results:
            entry: dict[str, Any] = {
                "op": result.kind,
                "key": result.key.decode("utf-8", "replace"),
            }
            if result.kind == "get":
                item = result.item
                entry["value"] = None if item is None else item.value.decode("utf-8", "replace")
                entry["create_index"] = 0 if item is None else item.create_index
                entry["mod_index"] = 0 if item is None else item.mod_index
                entry["ttl_ms"] = None if item is None else item.ttl_ms
            results.append(entry)
        return write_response(
            outcome.index,
            outcome.duplicate,
            {"succeeded": outcome.succeeded, "results": results},
        )
