"""The HTTP stack's ceiling: the KV API's routes with no engine behind them.

A QuartTrio app served by Hypercorn with the node's own settings
(``dengine_trio.api.hypercorn_config`` on a socket from ``bind_listener``), whose handlers do
the KV app's request work and nothing else: ``POST /kv`` reads the body, parses the JSON and
checks and encodes ``key`` and ``value`` as the KV app does, then answers ``{}``; ``GET /kv/<key>``
answers ``{"value": ...}`` from a dictionary (the 100 keys ``g-00000000``..``g-00000099``, each
holding 256 bytes). What our API serves below this is the price of the engine.

With ``--raw``, the stack's own ceiling instead (issue 18): a raw ASGI app on the same
Hypercorn settings that answers every request with a fixed body (a GET the size of the KV
app's answer for a 256-byte value; a POST after reading its body, ``{}``), so nothing above
Hypercorn costs anything. What the KV app serves below this is the price of everything ours.
Both run with the garbage collector set as a node's process sets it
(:mod:`dengine_trio.gc_tuning`).

With ``--raw --beside-leader``, the same raw app served from a process that also runs the
leader of a three-node cluster (node 1 here, as ``bench.costs`` runs it; nodes 2 and 3 as
processes), idle but for its heartbeats: what any app served from a node's process can reach.
Between the two raw figures is the price of sharing a process (and its core) with an engine,
which no change to the HTTP path can remove.

    python -m bench.ceiling --port 8090 [--raw [--beside-leader]] [--max-seconds 1800]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from dengine_trio import gc_tuning
from dengine_trio.api import JSON_CONTENT_TYPE, bind_listener, hypercorn_config

GET_KEYS = [f"g-{i:08d}" for i in range(100)]
VALUE_TEXT = "v" * 256


def create_ceiling_app() -> QuartTrio:
    app = QuartTrio(__name__)
    store = {key: VALUE_TEXT for key in GET_KEYS}
    loads = json.loads
    dumps = json.dumps
    compact = (",", ":")
    response_class = app.response_class

    def bad(message: str) -> Response:
        body = dumps({"error": "invalid_request", "message": message}, separators=compact)
        return response_class(body, status=400, content_type=JSON_CONTENT_TYPE)

    @app.post("/kv")
    async def put_kv() -> Response:
        body = await request.get_data(cache=False)
        try:
            doc = loads(body)
        except ValueError:
            return bad("the body is not valid JSON")
        if type(doc) is not dict:
            return bad("expected an object")
        key = doc.get("key")
        value = doc.get("value")
        if type(key) is not str or not key or type(value) is not str:
            return bad('"key" and "value" must be strings')
        key.encode()
        value.encode()
        return response_class(b"{}", content_type=JSON_CONTENT_TYPE)

    @app.get("/kv/<path:key>")
    async def get_kv(key: str) -> Response:
        value = store.get(key)
        if value is None:
            return response_class(b'{"value":null}', status=404, content_type=JSON_CONTENT_TYPE)
        text = dumps({"value": value}, separators=compact)
        return response_class(text, content_type=JSON_CONTENT_TYPE)

    return app


_RAW_GET_BODY = json.dumps({"value": VALUE_TEXT}, separators=(",", ":")).encode()
_RAW_POST_BODY = b"{}"


def _raw_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", JSON_CONTENT_TYPE.encode()), (b"content-length", b"%d" % len(body))]


_RAW_GET = {"type": "http.response.start", "status": 200, "headers": _raw_headers(_RAW_GET_BODY)}
_RAW_POST = {"type": "http.response.start", "status": 200, "headers": _raw_headers(_RAW_POST_BODY)}


async def raw_ceiling_app(scope: Any, receive: Any, send: Any) -> None:
    """The raw ASGI ceiling: fixed answers, the request body read (and dropped) first."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body", False):
            pass
        await send(_RAW_POST)
        await send({"type": "http.response.body", "body": _RAW_POST_BODY})
    else:
        await send(_RAW_GET)
        await send({"type": "http.response.body", "body": _RAW_GET_BODY})


async def run(
    port: int, max_seconds: float, raw: bool = False, beside_leader: bool = False
) -> None:
    if beside_leader:
        await _beside_leader(partial(run, port, max_seconds, raw))
        return
    config = hypercorn_config(bind_listener("127.0.0.1", port))
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                with trio.move_on_after(max_seconds):
                    async for _ in signals:
                        break
                stop.set()

            nursery.start_soon(watch)
            app: Any = raw_ceiling_app if raw else create_ceiling_app()
            gc_tuning.freeze_startup()
            await serve(app, config, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()


async def _beside_leader(serve_app: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve_app()`` in this process beside node 1 of a three-node cluster, leading."""
    from bench.write import follower_processes, wait_until_leader, write_configs
    from dengine_trio import EmbeddedEngine, load_config

    with tempfile.TemporaryDirectory(prefix="dengine-ceiling-") as tmp:
        root = Path(tmp)
        configs = write_configs(root, "MemFirst")
        async with follower_processes(root, configs[1:]):
            async with EmbeddedEngine.start(load_config(configs[0])) as engine:
                await wait_until_leader(engine, [root / "n2.log", root / "n3.log"])
                await serve_app()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--raw", action="store_true", help="the raw ASGI ceiling")
    parser.add_argument(
        "--beside-leader",
        action="store_true",
        help="serve it from a process that also runs a three-node cluster's leader",
    )
    args = parser.parse_args(argv)
    gc_tuning.tune_for_serving()  # as a node's process is (same process settings)
    trio.run(run, args.port, args.max_seconds, args.raw, args.beside_leader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
