"""Pieces of the raw ASGI apps the HTTP tests serve with Hypercorn."""

from __future__ import annotations

from typing import Any

__all__ = ["answer_lifespan"]


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI ``lifespan`` scope: complete its startup and shutdown, then return."""
    while True:
        message = await receive()
        kind = message["type"].replace("lifespan.", "")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return
