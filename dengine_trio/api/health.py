"""The health app, for load balancer probes on the health port.

``GET /primary``: 200 on a leader that holds a quorum, else 503 (route writes here).
``GET /replica``: 200 on a follower (or learner) that heard from a leader within an election
timeout and has caught up (``EmbeddedEngine.caught_up``: applied, once, as far as a leader
had committed when first asked, and to within ``max_promote_lag_entries`` of what its leader
committed), else 503 (a follower cut off from
the cluster, or a joining node still receiving the snapshot or log, ``catching_up``, stays out
of the read pool; a node removed from its cluster, ``removed``, serves nothing); with
``?max_lag=N`` (entries)
also 503 ``lagging`` while the follower has more than N committed entries still to apply
(``EmbeddedEngine.applied_lag``), so a load balancer can drop a replica that is behind.
``GET /status``: the engine's view (role, term, indexes, peers) as JSON. ``GET /metrics``: the
node's metrics in the Prometheus text format (``docs/monitoring.md``), 404 ``metrics_disabled`` when
the engine's sink keeps none. ``GET /``: the live cluster page (:mod:`dengine_trio.api.page`), which
polls
``/status`` and ``/metrics`` of every node from the browser; those two answer with
``Access-Control-Allow-Origin: *`` for it (both are read-only). Probes only read engine
state: they never wait. ``GET /snapshot``: a fresh snapshot file, for backups
(:mod:`dengine_trio.api.snapshot`). ``/members`` and ``/leader/transfer``: membership admin
(:mod:`dengine_trio.api.members`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from quart import Response, request

from dengine_trio.api import (
    JSON_CONTENT_TYPE,
    ApiError,
    App,
    install_error_handlers,
    json_error,
    plain_get_fast_path,
)
from dengine_trio.api.auth import health_role_needed, install_auth
from dengine_trio.api.members import install_member_routes
from dengine_trio.api.page import CLUSTER_PAGE, CLUSTER_PAGE_CSP
from dengine_trio.api.snapshot import install_snapshot_route

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = ["create_health_app"]

_CORS = {"Access-Control-Allow-Origin": "*"}


def create_health_app(engine: EmbeddedEngine) -> App:
    """The health app of ``engine``: ``GET /primary``, ``/replica`` (200 or 503, body
    ``{"node_id": int, "role": str, "leader_id": int | null}``) and ``/status`` (200, the
    engine's status as JSON, plus ``has_quorum`` and ``leader_contact_recent`` (bool, what
    ``/primary`` and ``/replica`` go by), ``address`` (this node's Raft address) and
    ``members`` (``[{"id": int, "address": "host:port"}]``, the membership in effect; a node
    that is no member yet: its ``initial_cluster``)); see
    the module docstring for when each is 200. ``GET /`` serves the cluster page. With
    ``[auth] enable = true`` all but ``/primary`` and ``/replica`` need an ``admin`` token."""
    app = App(
        __name__,
        body_timeout_s=engine.config.http.body_timeout_ms / 1000,
        max_header_bytes=engine.config.http.max_header_bytes,
    )
    install_error_handlers(app)
    install_auth(app, engine.config.auth, health_role_needed)
    node_id = engine.node_id

    def ok(role: str) -> Response:
        info = {"node_id": node_id, "role": role, "leader_id": engine.leader_id()}
        body = json.dumps(info, separators=(",", ":"))
        return Response(body, content_type=JSON_CONTENT_TYPE)

    def primary_response() -> Response:
        if engine.is_leader():
            if engine.has_quorum():
                return ok("leader")
            return json_error(503, "no_quorum", f"node {node_id} leads but lost its quorum")
        leader = engine.leader_id()
        return json_error(503, "not_primary", f"node {node_id} is not the leader ({leader=})")

    def replica_response() -> Response:
        if engine.removed():
            return json_error(
                503, "removed", f"node {node_id} was removed from its cluster and serves nothing"
            )
        if engine.is_leader():
            return json_error(503, "not_replica", f"node {node_id} is the leader")
        if not engine.leader_contact_recent():
            return json_error(
                503, "no_leader_contact", f"node {node_id} has not heard from a leader recently"
            )
        if not engine.caught_up():
            # E.g. a learner that joined and is still receiving the snapshot or the log.
            return json_error(
                503, "catching_up", f"node {node_id} is still catching up with its leader"
            )
        return ok("follower")

    @app.get("/primary")
    async def primary() -> Response:
        return primary_response()

    @app.get("/replica")
    async def replica() -> Response:
        response = replica_response()
        text = request.args.get("max_lag")
        if text is None:
            return response
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise ApiError(
                400, "invalid_max_lag", "max_lag must be a non-negative integer (log entries)"
            )
        if response.status_code != 200:
            return response
        max_lag = int(text)
        lag = engine.applied_lag()
        if lag > max_lag:
            return json_error(
                503,
                "lagging",
                f"node {node_id} has {lag} committed entries still to apply (max_lag={max_lag})",
            )
        return response

    # Load balancers call the probes every second or so per node: past Quart, like the KV
    # app's hot routes. They need no token, so [auth] does not change them.
    app.fast_path = plain_get_fast_path(
        app,
        {"/primary": primary_response, "/replica": replica_response},
        query_routes=frozenset({"/replica"}),
    )

    @app.get("/metrics")
    async def metrics() -> Response:
        exposition = engine.metrics.exposition()
        if exposition is None:
            return json_error(
                404, "metrics_disabled", f"node {node_id} runs without a metrics sink"
            )
        body, content_type = exposition
        return Response(body, content_type=content_type, headers=_CORS)

    members = [{"id": p.id, "address": p.address} for p in engine.config.cluster.initial_cluster]
    address = next((m["address"] for m in members if m["id"] == node_id), None)

    @app.get("/status")
    async def status() -> Response:
        info = engine.status()
        # No await in between: one instant, as the probes see it.
        info["has_quorum"] = engine.has_quorum()
        info["leader_contact_recent"] = engine.leader_contact_recent()
        info["address"] = address
        # The membership in effect (issue 14), for the cluster page; a joining node that is
        # no member yet shows the nodes its file lists.
        listed = (await engine.members()).get("members")
        current = [
            {"id": m["id"], "address": m["address"]}
            for m in (listed if isinstance(listed, list) else [])
        ]
        info["members"] = current or members
        # default=str: enum roles and similar render readably instead of failing the probe.
        body = json.dumps(info, default=str, separators=(",", ":"))
        # Read-only and credential-free: any origin may read it, so the cluster page served
        # by one node can poll the others' health ports (other origins) from the browser.
        return Response(body, content_type=JSON_CONTENT_TYPE, headers=_CORS)

    install_snapshot_route(app, engine)  # GET /snapshot: backups (api/snapshot.py)
    install_member_routes(app, engine)  # /members, /leader/transfer (api/members.py)

    @app.get("/")
    async def cluster_page() -> Response:
        return Response(
            CLUSTER_PAGE,
            content_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": CLUSTER_PAGE_CSP, "Cache-Control": "no-cache"},
        )

    return app
