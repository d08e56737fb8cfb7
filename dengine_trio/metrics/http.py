"""HTTP request metrics for the node's Quart apps, labelled by route template.

``instrument_app(app, sink)`` adds a ``before_request`` and an ``after_request`` hook: each
answered request is counted in ``sink.http_request`` with the route's template
(``/kv/<key:key>``, never the key itself: one series per route, not per key), the method and
the status. A request that matched no route is labelled ``unmatched``. Error responses made by
the apps' error handlers are counted too; a request Hypercorn rejects before the app sees it
(unparseable HTTP) is not.
"""

from __future__ import annotations

import time

from quart import Quart, Response, g, request

from . import MetricsSink

__all__ = ["UNMATCHED_ROUTE", "instrument_app"]

UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of requests that matched no route (404s, 405s)."""


def instrument_app(app: Quart, sink: MetricsSink) -> None:
    """Count ``app``'s requests in ``sink`` (see the module docstring)."""

    async def started() -> None:
        g.dengine_started = time.perf_counter()

    async def answered(response: Response) -> Response:
        started_at = g.get("dengine_started")
        duration_s = time.perf_counter() - started_at if started_at is not None else 0.0
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        sink.http_request(route, request.method, response.status_code, duration_s)
        return response

    app.before_request(started)
    app.after_request(answered)
    # An app's fast path (dengine_trio.api.App.fast_path) counts what it answers here too.
    if hasattr(app, "metrics_sink"):
        app.metrics_sink = sink
