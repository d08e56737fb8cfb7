"""``dengine-trio member list|add|promote|remove`` and ``dengine-trio leader transfer``.

Each is one request to a node's health port (:mod:`dengine_trio.api.members`), tried on each
``--endpoint`` in order: any node answers ``member list`` from its own view, and a follower
forwards a change to its leader. An endpoint that does not answer, or answers 503 (no leader
yet, stopping, overloaded), passes the request to the next one, and after a round over all of
them the round starts again (0.1 s, doubling up to 1 s, apart) until ``--timeout`` seconds
have passed, as ``dengine-trio kv`` does; so does a change answered 409 ``pending`` (another
change not committed yet, or a new leader's first entry not yet). A change answered 503 or
``pending`` was not made, so trying it again is safe; one whose answer never came may have
been made: a retry then meets 409 ``duplicate_id`` (add), 404 ``unknown_member`` (remove) or
409 ``not_learner`` (promote), and ``member list`` tells.

Output: a table (``member list``) or one line saying what was done; ``--json`` prints the
node's JSON answer instead. Exit status: 0 done; 2 a usage error, or the cluster refused the
change (a 4xx: unknown id, duplicate id or address, last voter, a change still pending at
``--timeout``, a learner too far behind); 3 no node answered in time, or another error (a
504 ``timeout``: the change may still commit).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from typing import Any, TextIO

from dengine_trio.ctl._http import Answer, Credentials
from dengine_trio.ctl.kv import EXIT_FAILED, EXIT_REFUSED, send

__all__ = ["render_members", "run_leader_transfer", "run_member"]

RETRIED_CONFLICTS = frozenset({"pending"})
"""409 answers a change is retried after, as after a 503: ``pending`` (another change is not
committed yet, or a new leader has not committed an entry of its term: the change was not
made, and the server says ``Retry-After: 1``). Right after a failover the new leader answers
it for a few milliseconds; a command run then failed with exit 2 (a CI run of
tests/e2e/test_membership_docs.py)."""

BASE_COLUMNS = (("ID", "id"), ("ADDRESS", "address"), ("ROLE", "role"), ("MATCH", "match_index"))
"""Columns every member row has; members the node reports beyond these (lag, promote, ...)
get a column each, after them, in the order the node gave them."""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _role(member: dict[str, Any], leader_id: Any) -> str:
    if member.get("id") == leader_id and leader_id is not None:
        return "leader"
    return "voter" if member.get("voter") else "learner"


def render_members(doc: dict[str, Any]) -> str:
    """``GET /members``'s answer as aligned columns: ID, ADDRESS, ROLE (``leader``, ``voter``
    or ``learner``), MATCH (the leader's match index for it; ``-`` on a follower's view), then
    one column per further member the node reports."""
    leader_id = doc.get("leader_id")
    members = [m for m in doc.get("members") or [] if isinstance(m, dict)]
    known = {key for _, key in BASE_COLUMNS} | {"voter"}
    extra: list[str] = []
    for member in members:
        extra += [k for k in member if k not in known and k not in extra]
    columns = [*BASE_COLUMNS, *((k.upper(), k) for k in extra)]
    table = [[title for title, _ in columns]]
    for member in members:
        row = {**member, "role": _role(member, leader_id)}
        table.append([_cell(row.get(key)) for _, key in columns])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    lines.append(f"leader: {'none known' if leader_id is None else f'node {leader_id}'}")
    return "\n".join(lines)


def _describe(action: str, body: dict[str, Any], args: dict[str, Any]) -> str:
    index = body.get("index")
    at = f" (configuration entry {index})" if index is not None else ""
    member_id = args.get("id")
    if action == "add":
        then = (
            "the leader promotes it once it has caught up"
            if args.get("promote")
            else f"promote it with: dengine-trio member promote {member_id}"
        )
        return f"member {member_id} ({args.get('address')}) added as a learner{at}; {then}"
    if action == "promote":
        return f"member {member_id} promoted to voter{at}"
    return f"member {member_id} removed{at}"


def _fail(
    command: str, answer: Answer | None, tried: list[str], timeout_s: float, err: TextIO
) -> int | None:
    """Report a missing or refused answer on ``err``; the exit status, or None if it is a
    200 with a JSON object."""
    if answer is None:
        last = tried[-1] if tried else "no endpoint tried"
        err.write(f"dengine-trio {command}: no node answered in {timeout_s:g} s ({last})\n")
        return EXIT_FAILED
    body = answer.body if isinstance(answer.body, dict) else None
    if answer.status == 200 and body is not None:
        return None
    if body is None or (answer.status == 404 and body.get("error") == "not_found"):
        err.write(
            f"dengine-trio {command}: {answer.endpoint} answered HTTP {answer.status} without "
            "a membership answer: not a health port (--endpoint takes the health ports, e.g. "
            "10001)?\n"
        )
        return EXIT_FAILED
    code = answer.error_code() or "error"
    # A null detail (a learner's heard_ms_ago when it never answered) says nothing.
    details = "".join(
        f", {key} {value}"
        for key, value in body.items()
        if key not in ("error", "message") and value is not None
    )
    err.write(
        f"dengine-trio {command}: HTTP {answer.status} {code}: {body.get('message', '')}{details}\n"
    )
    return EXIT_REFUSED if 400 <= answer.status < 500 else EXIT_FAILED


def run_member(
    action: str,
    endpoints: Sequence[str],
    *,
    member_id: int | None = None,
    address: str | None = None,
    promote: bool = False,
    as_json: bool,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
    credentials: Credentials | None = None,
) -> int:
    """``member list`` (``action`` ``"list"``), ``add`` (``member_id``, ``address``,
    ``promote``), ``promote`` or ``remove`` (``member_id``); prints to ``out``, one line per
    error to ``err``; returns the exit status of the module docstring."""
    command = f"member {action}"
    if action == "list":
        answer, tried = send("GET", "/members", endpoints, timeout_s, credentials=credentials)
    else:
        change = partial(send, credentials=credentials, retried_conflicts=RETRIED_CONFLICTS)
        if action == "add":
            payload = {"id": member_id, "address": address, "voter": False, "promote": promote}
            answer, tried = change("POST", "/members", endpoints, timeout_s, payload)
        elif action == "promote":
            path = f"/members/{member_id}/promote"
            answer, tried = change("POST", path, endpoints, timeout_s, {})
        else:
            answer, tried = change("DELETE", f"/members/{member_id}", endpoints, timeout_s)
    failed = _fail(command, answer, tried, timeout_s, err)
    if failed is not None:
        return failed
    assert answer is not None and isinstance(answer.body, dict)
    if action == "list" and not isinstance(answer.body.get("members"), list):
        not_members = Answer(answer.status, None, answer.endpoint)
        return _fail(command, not_members, [], timeout_s, err) or EXIT_FAILED
    if as_json:
        out.write(json.dumps(answer.body, indent=2) + "\n")
    elif action == "list":
        out.write(render_members(answer.body) + "\n")
    else:
        args = {"id": member_id, "address": address, "promote": promote}
        out.write(_describe(action, answer.body, args) + "\n")
    return 0


def run_leader_transfer(
    to: int | None,
    endpoints: Sequence[str],
    *,
    as_json: bool,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
    credentials: Credentials | None = None,
) -> int:
    """``leader transfer [--to ID]``: POST /leader/transfer; prints who leads after it."""
    payload = {} if to is None else {"to": to}
    answer, tried = send(
        "POST", "/leader/transfer", endpoints, timeout_s, payload, credentials=credentials
    )
    failed = _fail("leader transfer", answer, tried, timeout_s, err)
    if failed is not None:
        return failed
    assert answer is not None and isinstance(answer.body, dict)
    if as_json:
        out.write(json.dumps(answer.body, indent=2) + "\n")
    else:
        out.write(f"node {answer.body.get('leader_id')} leads now\n")
    return 0
