"""Typed errors of the embedded client API. Every one derives from ``DengineError``."""

from __future__ import annotations

from typing import Literal

SizeLimit = Literal["key", "value", "body", "command", "txn_ops", "txn", "txn_read"]
"""Which size limit a request exceeded (``TooLarge.limit``)."""

_LIMIT_NAMES: dict[str, str] = {
    "key": "the key exceeds limits.max_key_bytes",
    "value": "the value exceeds limits.max_value_bytes",
    "body": "the request body exceeds limits.max_body_bytes",
    "command": "the command exceeds what one transport frame carries",
    "txn_ops": "the transaction's compares and operations exceed limits.max_txn_ops",
    "txn": "the transaction's keys and values exceed limits.max_txn_bytes",
    "txn_read": "the keys and values the transaction's gets read exceed limits.max_txn_bytes",
}


class DengineError(Exception):
    """Base of every error the engine raises to its callers."""


class NotLeader(DengineError):
    """This node cannot serve the request; ``leader_id`` (None if unknown) can."""

    def __init__(self, leader_id: int | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


class NoLeader(DengineError):
    """No leader is known or reachable right now; retry after an election timeout."""


class Timeout(DengineError):
    """The request did not complete in time. A write may or may not have been applied."""


class Stopped(DengineError):
    """The engine is stopping or stopped."""


class NodeRemoved(DengineError):
    """This node was removed from its cluster (its log holds its removal, or a member told
    it at the handshake): it serves nothing, neither reads (not even eventual ones: its
    state machine no longer follows the cluster) nor writes (issue 14). HTTP: 503
    ``removed``."""


class TooLarge(DengineError):
    """A request exceeds a size limit, in bytes: ``limit`` names which (``"key"``:
    ``limits.max_key_bytes``, ``"value"``: ``limits.max_value_bytes``, ``"body"``: an HTTP
    body over ``limits.max_body_bytes``, ``"command"``: a command over the transport frame
    limit less the envelope headroom; ``"txn_ops"``: a transaction's compares and operations
    over ``limits.max_txn_ops``, a count; ``"txn"``: its keys and values over
    ``limits.max_txn_bytes``; ``"txn_read"``: the keys and values its gets would read over
    ``limits.max_txn_bytes``, decided at apply, nothing applied); ``size`` is the
    request's size (None if unknown, e.g. a chunked body cut once over), ``max_bytes`` the limit.
    Each limit is checked in one place (key and value by ``Client``, the command by the runtime's
    ``propose``, the body by the HTTP app) and raises this; the HTTP layer maps ``limit`` to its 413
    error code."""

    def __init__(self, limit: SizeLimit, size: int | None, max_bytes: int) -> None:
        unit = "" if limit == "txn_ops" else " bytes"  # a count, not a size
        of = "" if size is None else f" ({size}{unit})"
        super().__init__(f"{_LIMIT_NAMES[limit]}{of}: at most {max_bytes}{unit}")
        self.limit = limit
        self.size = size
        self.max_bytes = max_bytes


class Overloaded(DengineError):
    """Too many requests are pending on this node (backpressure); retry later."""


class CompareFailed(DengineError):
    """A conditional write (``prev_value``, ``prev_index``) found the key changed: nothing
    was written. ``value`` is the key's current value (None: absent), ``index`` its current
    modification index (0: absent), as of the write's log entry ``at_index`` (the index the
    failed compare was decided at; a duplicate of an idempotent retry reports the original's).
    """

    def __init__(
        self, value: bytes | None, index: int, at_index: int, duplicate: bool = False
    ) -> None:
        state = "absent" if value is None else f"modified at index {index}"
        super().__init__(f"compare failed: the key is {state}")
        self.value = value
        self.index = index
        self.at_index = at_index
        self.duplicate = duplicate
        """The stored outcome of an earlier request with the same idempotency key."""


class IdempotencyKeyReused(DengineError):
    """A write's idempotency key was first used by a different request (another kind of
    write, or another key, value, TTL, compare or operation): nothing was applied, and the
    key keeps the first request's outcome. ``index`` is the first request's log index.
    HTTP 422 ``idempotency_key_reused``, as the IETF draft "The Idempotency-Key HTTP Header
    Field" (section 2.7) answers a key reused with a different payload."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"this Idempotency-Key was first used for a different request (applied at index "
            f"{index}); use a new key for a new request"
        )
        self.index = index


class MembershipError(DengineError):
    """A membership request (``EmbeddedEngine.change_membership``,
    ``transfer_leadership_to``) was refused. ``code`` says why, ``status`` is the HTTP status
    the admin API answers with, ``detail`` a JSON-ready dict (``{"lag": n}`` for ``behind``).

    Codes (the Raft core's, ``raft/membership.py``, plus the runtime's): ``unknown_member``
    (404), ``duplicate_id``, ``duplicate_address``, ``last_voter``, ``not_learner``,
    ``pending`` (a change is not committed yet, or the leader has not committed an entry of
    its term: retry shortly), ``behind`` (a learner too far behind to promote; ``detail``
    ``{"lag": entries}``), ``quorum_at_risk`` (the change would drop a voter, or rebind
    one, leaving fewer active voters than a majority of the new ones: the cluster would lose
    quorum; ``detail`` ``{"active": [ids], "needed": n, "inactive": [ids]}``) (409 each),
    ``bad_request`` (400), ``not_voter`` (a transfer to a learner, 409), ``transfer_failed``
    (no other node took leadership in time, 503).
    """

    STATUS: dict[str, int] = {
        "unknown_member": 404,
        "duplicate_id": 409,
        "duplicate_address": 409,
        "last_voter": 409,
        "not_learner": 409,
        "pending": 409,
        "behind": 409,
        "quorum_at_risk": 409,
        "not_voter": 409,
        "bad_request": 400,
        "transfer_failed": 503,
    }

    def __init__(self, code: str, message: str, detail: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = self.STATUS.get(code, 400)
        self.detail: dict[str, object] = dict(detail or {})
