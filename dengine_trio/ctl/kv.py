"""``dengine-trio kv get|put|del``: one KV request, following the leader.

Any node answers a read, and a follower forwards a write to its leader, so the first endpoint
that answers usually serves. While the cluster has no leader (an election, a node restarting)
nodes answer 503 (``not_leader``, ``no_leader``, ``stopped``, ``overloaded``) or do not answer
at all: the request then moves to the next endpoint, and after a round over all of them waits
(0.1 s, doubling up to 1 s) and starts again, until ``--timeout`` seconds have passed. Only
those answers are retried: a put or delete sets a state (retrying one is harmless), and any
other answer, a 504 ``timeout`` included (the write may still apply), is final.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TextIO
from urllib.parse import quote, urlencode

from dengine_trio.ctl._http import Answer, Credentials, Unreachable, request_json

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_REFUSED", "run_kv"]

EXIT_NOT_FOUND = 1
"""``get`` of a key that is absent."""
EXIT_REFUSED = 2
"""The node refused the request as invalid (a 4xx, e.g. an empty or oversized key)."""
EXIT_FAILED = 3
"""No node served it within the timeout, or one answered an error that is not retried."""

RETRYABLE_CODES = frozenset({"not_leader", "no_leader", "stopped", "overloaded"})
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0


def key_path(key: str) -> str:
    """``/kv/<key>`` with every character escaped (dots too: ``/..`` must stay a key)."""
    return "/kv/" + quote(key, safe="").replace(".", "%2E")


def send(
    method: str,
    path: str,
    endpoints: Sequence[str],
    timeout_s: float,
    payload: object = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    credentials: Credentials | None = None,
    retried_conflicts: frozenset[str] = frozenset(),
) -> tuple[Answer | None, list[str]]:
    """The first final answer from ``endpoints`` (see the module docstring), or None once
    ``timeout_s`` seconds passed; with the reasons each retried attempt gave. A 409 whose
    error code is in ``retried_conflicts`` is retried as a 503 is (the membership commands:
    ``pending``, a change that was not made yet)."""
    deadline = clock() + timeout_s
    backoff = FIRST_BACKOFF_S
    tried: list[str] = []
    while True:
        for endpoint in endpoints:
            left = deadline - clock()
            if left <= 0:
                return None, tried
            try:
                answer = request_json(method, endpoint + path, left, payload, credentials)
            except Unreachable as exc:
                tried.append(f"{endpoint}: unreachable: {exc}")
                continue
            if (answer.status == 503 and answer.error_code() in RETRYABLE_CODES) or (
                answer.status == 409 and answer.error_code() in retried_conflicts
            ):
                tried.append(f"{endpoint}: {answer.status} {answer.error_code()}")
                continue
            return answer, tried
        left = deadline - clock()
        if left <= 0:
            return None, tried
        sleep(min(backoff, left))
        backoff = min(MAX_BACKOFF_S, backoff * 2)


def run_kv(
    action: str,
    key: str,
    value: str | None,
    endpoints: Sequence[str],
    *,
    consistency: str | None,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
    credentials: Credentials | None = None,
) -> int:
    """Run ``get``/``put``/``del`` of ``key``; print the value (get) or nothing (put, del).

    Returns 0, :data:`EXIT_NOT_FOUND`, :data:`EXIT_REFUSED` or :data:`EXIT_FAILED`; errors
    go to ``err`` as one line each.
    """
    if action == "get":
        path = key_path(key)
        if consistency:
            path += "?" + urlencode({"consistency": consistency})
        answer, tried = send("GET", path, endpoints, timeout_s, credentials=credentials)
    elif action == "put":
        payload = {"key": key, "value": value}
        answer, tried = send("POST", "/kv", endpoints, timeout_s, payload, credentials=credentials)
    else:
        answer, tried = send("DELETE", key_path(key), endpoints, timeout_s, credentials=credentials)
    if answer is None:
        last = tried[-1] if tried else "no endpoint tried"
        err.write(f"dengine-trio kv: no node served the request in {timeout_s:g} s ({last})\n")
        return EXIT_FAILED
    body = answer.body if isinstance(answer.body, dict) else None
    # The KV API answers JSON objects only; a get's answer (200 or 404) names "value". A
    # health port answers an unknown route 404 not_found too: that is not an absent key.
    if body is None or (action == "get" and answer.status in (200, 404) and "value" not in body):
        err.write(
            f"dengine-trio kv: {answer.endpoint} answered HTTP {answer.status} without the KV "
            "API's body: not a KV port (--endpoints takes the KV ports, e.g. 8081)?\n"
        )
        return EXIT_FAILED
    if answer.status == 200:
        if action == "get":
            out.write(f"{body['value']}\n")
        return 0
    code = answer.error_code() or "error"
    message = body.get("message", "")
    if answer.status == 404 and action == "get":
        err.write(f"dengine-trio kv: {key!r} not found\n")
        return EXIT_NOT_FOUND
    err.write(f"dengine-trio kv: HTTP {answer.status} {code}: {message}\n")
    return EXIT_REFUSED if 400 <= answer.status < 500 else EXIT_FAILED
