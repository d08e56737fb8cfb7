"""Membership admin routes on the health port (issue 14; ``docs/operations.md``, "Membership").

``GET /members``: this node's view of the membership in effect (the latest configuration
entry it appended), 200 ``{"leader_id": int | null, "members": [{"id": int, "address":
"host:port", "voter": bool, "match_index": int | null, "heard_ms_ago": int | null,
"active": bool | null, ...}]}``, from any node (the last three only a leader knows: null
elsewhere; ``active`` says whether the member counts in a quorum now, what decides a
``quorum_at_risk`` refusal).

Changes, each one configuration entry in the log (single-server changes, Raft thesis section
4.1), answered once that entry has committed; a follower forwards them to the leader as it
forwards writes:

- ``POST /members`` ``{"id": int, "address": "host:port", "voter": false, "promote": bool}``:
  add a learner (``voter`` may be left out; ``true`` is refused: a node joins as a learner and
  is promoted once caught up, so that a slow new node never holds up the quorum).
  ``promote`` (default false) asks the leader to promote it by itself once caught up. The
  address is stored in its canonical spelling (``config.canonical_member_address``: port
  without leading zeros, host name in lower case, IPv6 compressed in brackets).
- ``POST /members/{id}/promote``: make the learner ``id`` a voter.
- ``DELETE /members/{id}``: remove the voter or learner ``id`` (the leader included: it hands
  leadership over once the change commits).
- ``POST /leader/transfer`` ``{"to": int}`` (``to`` optional, or no body at all: the most
  caught-up voter): hand leadership over; 200 ``{"leader_id": int}`` once another node leads.

A change answers 200 ``{"index": int, "change": {...}}`` (the configuration entry's index).
Refusals are JSON as on the KV port: 400 ``invalid_json`` / ``invalid_request`` /
``invalid_id`` / ``invalid_address`` / ``bad_request``; 404 ``unknown_member``; 409
``duplicate_id``, ``duplicate_address``, ``last_voter`` (removing the only voter),
``not_learner`` (promoting a voter), ``pending`` (a change is not committed yet, or the
leader has not committed an entry of its term; ``Retry-After: 1``), ``behind`` (promoting a
learner that is not caught up; the body adds ``"lag": entries`` and ``"heard_ms_ago"``, ms
since it last answered the leader, null if never), ``quorum_at_risk`` (removing a voter
would leave fewer active voters than a majority of those left; the body adds ``"active"``,
``"inactive"``, voter ids, and ``"needed"``), ``not_voter`` (a transfer to a
learner); 503 ``transfer_failed`` (no voter took leadership in time), and 503
``not_leader`` / ``no_leader`` and 504 ``timeout`` as for writes (the codes and statuses are
:class:`dengine_trio.errors.MembershipError`'s). Under ``[auth]`` every
route here needs an ``admin`` token (the health port's rule, :mod:`dengine_trio.api.auth`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from dengine_trio import errors
from dengine_trio.api import JSON_CONTENT_TYPE, ApiError, engine_error_response
from dengine_trio.config import canonical_member_address, check_member_address
from dengine_trio.errors import TooLarge

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = ["MAX_ADMIN_BODY_BYTES", "install_member_routes", "member_error_response"]

MAX_ADMIN_BODY_BYTES = 4096
"""The largest body of a membership request (bytes): an id and an address."""


def member_error_response(exc: errors.DengineError) -> Response:
    """The JSON answer to ``exc`` raised by a membership call: a
    :class:`~dengine_trio.errors.MembershipError` gets its ``status`` (404, 409, 400; 503
    ``transfer_failed``) and ``{"error": code, "message": ..., **detail}`` (``detail``: e.g.
    ``{"lag": 1234, "heard_ms_ago": 80}`` for ``behind``); any other engine error is answered
    as for a write (:func:`dengine_trio.api.engine_error_response`: 503 ``not_leader`` ...,
    504 ``timeout``)."""
    if isinstance(exc, errors.MembershipError):
        body: dict[str, Any] = {"error": exc.code, "message": exc.message}
        body.update({k: v for k, v in exc.detail.items() if k not in body})
        return Response(
            json.dumps(body, separators=(",", ":"), default=str),
            status=exc.status,
            content_type=JSON_CONTENT_TYPE,
            headers={"Retry-After": "1"} if exc.code in ("pending", "transfer_failed") else None,
        )
    return engine_error_response(exc)


def _ok(doc: object) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":"), default=str), content_type=JSON_CONTENT_TYPE
    )


def _member_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 19:
        raise ApiError(400, "invalid_id", f"member id {text[:40]!r} is not a positive integer")
    return int(text)


def _positive_int(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if type(value) is not int or value < 1 or value > 2**63 - 1:
        raise ApiError(400, "invalid_id", f'"{key}" must be a positive integer, got {value!r}')
    return value


async def _json_body(allow_empty: bool) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for no body when ``allow_empty``. Raises ApiError
    400 for a body that is not a JSON object (a body over :data:`MAX_ADMIN_BODY_BYTES` never
    gets here: see ``install_member_routes``)."""
    body = await request.get_data(cache=False)
    if not body.strip() and allow_empty:
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if type(doc) is not dict:
        raise ApiError(400, "invalid_request", "expected a JSON object")
    return doc


def install_member_routes(app: Quart, engine: EmbeddedEngine) -> None:
    """Add the routes of the module docstring to the health ``app`` of ``engine``."""
    from dengine_trio.engine import ConfChange, ConfChangeKind

    # The health app takes no other body: bound it here, chunked bodies included (Quart
    # raises RequestEntityTooLarge past it while reading: the one check), so no request makes
    # the node buffer much. Answered like every size limit: TooLarge("body"), 413
    # body_too_large (tests/unit/test_size_limits.py), as the KV port does.
    app.config["MAX_CONTENT_LENGTH"] = MAX_ADMIN_BODY_BYTES

    async def on_body_too_large(_: RequestEntityTooLarge) -> Response:
        return engine_error_response(TooLarge("body", request.content_length, MAX_ADMIN_BODY_BYTES))

    app.register_error_handler(RequestEntityTooLarge, on_body_too_large)

    async def change(conf: ConfChange, described: dict[str, Any]) -> Response:
        try:
            index = await engine.change_membership(conf)
        except errors.DengineError as exc:
            return member_error_response(exc)
        return _ok({"index": index, "change": described})

    @app.get("/members")
    async def list_members() -> Response:
        try:
            return _ok(await engine.members())
        except errors.DengineError as exc:
            return member_error_response(exc)

    @app.post("/members")
    async def add_member() -> Response:
        doc = await _json_body(allow_empty=False)
        unknown = sorted(set(doc) - {"id", "address", "voter", "promote"})
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown member {unknown[0]!r} in the body")
        for key in ("id", "address"):
            if key not in doc:
                raise ApiError(400, "invalid_request", f'missing "{key}"')
        member_id = _positive_int(doc, "id")
        address = doc["address"]
        if type(address) is not str:
            raise ApiError(400, "invalid_address", '"address" must be a string "host:port"')
        problem = check_member_address(address)
        if problem:
            raise ApiError(400, "invalid_address", problem)
        address = canonical_member_address(address)
        voter = doc.get("voter", False)
        promote = doc.get("promote", False)
        if type(voter) is not bool or type(promote) is not bool:
            raise ApiError(400, "invalid_request", '"voter" and "promote" must be booleans')
        if voter:
            raise ApiError(
                400,
                "invalid_request",
                'a node is added as a learner ("voter": false), then promoted: POST '
                f'/members/{member_id}/promote once it has caught up, or add it with "promote": '
                "true for the leader to do so",
            )
        conf = ConfChange(
            kind=ConfChangeKind.ADD_LEARNER, id=member_id, address=address, promote=promote
        )
        described = {"kind": "add_learner", "id": member_id, "address": address}
        return await change(conf, {**described, "promote": promote})

    @app.post("/members/<member>/promote")
    async def promote_member(member: str) -> Response:
        member_id = _member_id(member)
        await _json_body(allow_empty=True)  # nothing to say, but read it whole
        conf = ConfChange(kind=ConfChangeKind.PROMOTE, id=member_id)
        return await change(conf, {"kind": "promote", "id": member_id})

    @app.delete("/members/<member>")
    async def remove_member(member: str) -> Response:
        member_id = _member_id(member)
        conf = ConfChange(kind=ConfChangeKind.REMOVE, id=member_id)
        return await change(conf, {"kind": "remove", "id": member_id})

    @app.post("/leader/transfer")
    async def transfer_leader() -> Response:
        doc = await _json_body(allow_empty=True)
        unknown = sorted(set(doc) - {"to"})
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown member {unknown[0]!r} in the body")
        to = None if doc.get("to") is None else _positive_int(doc, "to")
        try:
            leader_id = await engine.transfer_leadership_to(to)
        except errors.DengineError as exc:
            return member_error_response(exc)
        return _ok({"leader_id": leader_id})
