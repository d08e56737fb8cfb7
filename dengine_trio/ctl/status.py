"""``dengine-trio status``: one row per node, from each node's ``GET /status`` (health port).

Rows are dicts (the ``--json`` output, a list of them), with these members:

- ``endpoint``: the health URL asked; ``node_id``, ``address`` (its Raft address), ``role``,
  ``term``, ``leader_id``, ``commit_index``, ``applied_index``, ``snapshot_index`` (the last
  index its newest snapshot covers, 0 for none): the node's own answer, or None for a node
  that did not answer;
- ``lag``: entries the node has yet to apply of what the leader has committed (the leader's
  ``commit_index`` minus the node's ``applied_index``, at least 0; None without a leader);
- ``last_contact_ms``: milliseconds since the leader last heard from this follower, in the
  leader's view (None on the leader itself, or without a leader);
- ``health``: ``ok`` (a leader holding its quorum, a follower in recent contact with its
  leader: what ``/primary`` and ``/replica`` answer 200 for), ``no_quorum``,
  ``no_leader_contact``, ``electing`` (a candidate), ``stopped``, or ``unreachable``;
- ``error``: why a node gave no status (None otherwise).

Exit status: 0 when an answering node leads with a quorum, 1 when none does (no leader among
the nodes that answered), 2 for a usage error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from dengine_trio.ctl._http import Credentials, Unreachable, request_json

__all__ = ["EXIT_NO_LEADER", "collect", "find_leader", "render_table", "run_status"]

EXIT_NO_LEADER = 1
"""Exit status when no answering node leads with a quorum."""

COLUMNS = (
    ("ID", "node_id"),
    ("ENDPOINT", "endpoint"),
    ("ADDRESS", "address"),
    ("ROLE", "role"),
    ("TERM", "term"),
    ("LEADER", "leader_id"),
    ("COMMIT", "commit_index"),
    ("APPLIED", "applied_index"),
    ("LAG", "lag"),
    ("CONTACT_MS", "last_contact_ms"),
    ("HEALTH", "health"),
)


def fetch_status(
    endpoint: str, timeout_s: float, credentials: Credentials | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """``(status, None)`` from ``endpoint``'s ``/status``, or ``(None, why)``."""
    try:
        answer = request_json("GET", endpoint + "/status", timeout_s, None, credentials)
    except Unreachable as exc:
        return None, f"unreachable: {exc}"
    if answer.status != 200 or not isinstance(answer.body, dict) or "role" not in answer.body:
        code = answer.error_code() or "not a status body"
        hint = ": not a health port (--endpoints takes the health ports, e.g. 10001)?"
        return None, f"HTTP {answer.status} {code}" + (hint if answer.status in (200, 404) else "")
    return answer.body, None


def _health(status: dict[str, Any]) -> str:
    role = status.get("role")
    if role == "leader":
        return "ok" if status.get("has_quorum", True) else "no_quorum"
    if role == "follower":
        return "ok" if status.get("leader_contact_recent", True) else "no_leader_contact"
    if role == "stopped":
        return "stopped"
    return "electing"


def find_leader(statuses: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The status of the answering node that leads with a quorum (the highest term if a stale
    leader still answers too), or None."""
    leaders = [
        s
        for s in statuses
        if s is not None and s.get("role") == "leader" and s.get("has_quorum", True)
    ]
    return max(leaders, key=lambda s: int(s.get("term", 0)), default=None)


def collect(
    endpoints: Sequence[str], timeout_s: float, credentials: Credentials | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """The rows for ``endpoints`` (in order; see the module docstring) and whether a leader
    was found. Asks every endpoint at once, each within ``timeout_s`` seconds."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(endpoints)))) as pool:
        answers = list(pool.map(lambda e: fetch_status(e, timeout_s, credentials), endpoints))
    statuses = [status for status, _ in answers]
    leader = find_leader(statuses)
    peers_view: dict[str, Any] = (leader or {}).get("peers") or {}
    rows: list[dict[str, Any]] = []
    for endpoint, (status, error) in zip(endpoints, answers, strict=True):
        row: dict[str, Any] = {"endpoint": endpoint}
        st = status or {}
        for key in ("node_id", "address", "role", "term", "leader_id"):
            row[key] = st.get(key)
        row["commit_index"] = st.get("commit_index")
        row["applied_index"] = st.get("applied_index")
        row["snapshot_index"] = st.get("snapshot_index")
        row["lag"] = None
        row["last_contact_ms"] = None
        if status is not None and leader is not None:
            applied = status.get("applied_index")
            if isinstance(applied, int):
                row["lag"] = max(0, int(leader.get("commit_index", 0)) - applied)
            view = peers_view.get(str(status.get("node_id")))
            if status is not leader and isinstance(view, dict):
                row["last_contact_ms"] = view.get("last_contact_ms")
        row["health"] = "unreachable" if status is None else _health(status)
        row["error"] = error
        rows.append(row)
    return rows, leader is not None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as aligned text columns; a node that did not answer says why after its row."""
    table = [[title for title, _ in COLUMNS]]
    for row in rows:
        table.append([_cell(row.get(key)) for _, key in COLUMNS])
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    notes = [f"{row['endpoint']}: {row['error']}" for row in rows if row.get("error")]
    return "\n".join(lines + notes)


def run_status(
    endpoints: Sequence[str],
    *,
    as_json: bool,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
    credentials: Credentials | None = None,
) -> int:
    """Print the rows for ``endpoints`` to ``out`` (and to ``err`` that no node leads);
    return the exit status (0, or
    :data:`EXIT_NO_LEADER`)."""
    rows, has_leader = collect(endpoints, timeout_s, credentials)
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        out.write(render_table(rows) + "\n")
    if not has_leader:
        err.write("dengine-trio status: no leader among the nodes that answered\n")
    return 0 if has_leader else EXIT_NO_LEADER
