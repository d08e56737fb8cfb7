"""Newcomer reproducer (issue 17): the embedded ``Client`` accepts arguments that HTTP refuses
and that its own docs exclude: ``get(min_index=-1)`` and ``get(min_index=1.5)`` read as if no
``min_index`` were given (HTTP: 400 ``invalid_index``), ``put(ttl_ms=True)`` writes a 1 ms TTL
(HTTP: ``"ttl_ms": true`` is 400 ``invalid_ttl``; the client refuses ``prev_index=True``),
``put(idempotency_key="x")`` takes a ``str`` where docs/api.md says bytes, and ``ttl_ms=2**70``
/ ``prev_index=2**70`` raise ``OverflowError`` from msgpack instead of the documented
``ValueError``. One semantics for HTTP and the Client, as issue 17 asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dengine_trio import EmbeddedEngine

from .cluster import write_configs


async def test_the_client_refuses_what_http_refuses(tmp_path: Path) -> None:
    (config,) = write_configs(tmp_path, 1)
    async with EmbeddedEngine.start(config) as engine:
        with trio.fail_after(15):
            await engine.wait_ready(10)
        c: Any = engine.client()  # wrong argument types on purpose
        await c.put(b"a", b"1")
        bad: list[tuple[str, Any]] = [
            ("min_index=-1", lambda: c.get(b"a", min_index=-1)),
            ("min_index=1.5", lambda: c.get(b"a", min_index=1.5)),
            ("ttl_ms=True", lambda: c.put(b"b", b"1", ttl_ms=True)),
            ("idempotency_key=str", lambda: c.put(b"b", b"1", idempotency_key="x")),
            ("ttl_ms=2**70", lambda: c.put(b"b", b"1", ttl_ms=2**70)),
            ("prev_index=2**70", lambda: c.put(b"b", b"1", prev_index=2**70)),
        ]
        accepted = []
        for name, call in bad:
            try:
                await call()
            except (ValueError, TypeError):
                pass
            except Exception as exc:  # e.g. OverflowError from msgpack
                accepted.append(f"{name}: {type(exc).__name__}")
            else:
                accepted.append(name)
        assert accepted == [], f"accepted or not ValueError/TypeError: {accepted}"
        assert await c.get(b"b") is None
