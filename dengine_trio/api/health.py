"""The health app, for load balancer probes on the health port.

``GET /primary``: 200 on a leader that holds a quorum, else 503 (route writes here).
``GET /replica``: 200 on a follower that heard from a leader within an election timeout, else
503 (a follower cut off from the cluster leaves the read pool). ``GET /status``: the engine's
view (role, term, indexes, peers) as JSON. ``GET /metrics``: the node's metrics in the
Prometheus text format (``docs/monitoring.md``), 404 ``metrics_disabled`` when the engine's
sink keeps none. Probes only read engine state: they never wait.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from quart import Response

from dengine_trio.api import JSON_CONTENT_TYPE, App, install_error_handlers, json_error

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = ["create_health_app"]


def create_health_app(engine: EmbeddedEngine) -> App:
    """The health app of ``engine``: ``GET /primary``, ``/replica`` (200 or 503, body
    ``{"node_id": int, "role": str, "leader_id": int | null}``) and ``/status`` (200, the
    engine's status as JSON); see the module docstring for when each is 200."""
    app = App(__name__)
    install_error_handlers(app)
    node_id = engine.node_id

    def ok(role: str) -> Response:
        info = {"node_id": node_id, "role": role, "leader_id": engine.leader_id()}
        body = json.dumps(info, separators=(",", ":"))
        return Response(body, content_type=JSON_CONTENT_TYPE)

    @app.get("/primary")
    async def primary() -> Response:
        if engine.is_leader():
            if engine.has_quorum():
                return ok("leader")
            return json_error(503, "no_quorum", f"node {node_id} leads but lost its quorum")
        leader = engine.leader_id()
        return json_error(503, "not_primary", f"node {node_id} is not the leader ({leader=})")

    @app.get("/replica")
    async def replica() -> Response:
        if engine.is_leader():
            return json_error(503, "not_replica", f"node {node_id} is the leader")
        if engine.leader_contact_recent():
            return ok("follower")
        return json_error(
            503, "no_leader_contact", f"node {node_id} has not heard from a leader recently"
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        exposition = engine.metrics.exposition()
        if exposition is None:
            return json_error(
                404, "metrics_disabled", f"node {node_id} runs without a metrics sink"
            )
        body, content_type = exposition
        return Response(body, content_type=content_type)

    @app.get("/status")
    async def status() -> Response:
        # default=str: enum roles and similar render readably instead of failing the probe.
        body = json.dumps(engine.status(), default=str, separators=(",", ":"))
        return Response(body, content_type=JSON_CONTENT_TYPE)

    return app
