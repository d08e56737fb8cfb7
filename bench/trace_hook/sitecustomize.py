"""Where one request's time goes inside a node: a measurement hook, not part of the product.

Put this directory first on ``PYTHONPATH`` and set ``DENGINE_TRACE=1`` for the node processes;
Python imports ``sitecustomize`` at start-up, and this one wraps a few of the runtime's
functions with timestamps. For each ``propose`` or ``read_barrier`` it records when the call
began, when the first AppendEntries or Heartbeat left for a follower, when the first reply
was read, when the request's waiter resolved and when the call returned; a follower records
how long it takes from reading a Heartbeat to sending its answer. At exit, each process
writes the medians to ``$DENGINE_TRACE_DIR/trace-<pid>.txt`` (default: the system's temp
directory). One request at a time (wrk at one connection), or the timestamps mix.

    PYTHONPATH=bench/trace_hook DENGINE_TRACE=1 python -m dengine_trio --config-path ...

It wraps private functions, so it may need updating when they change.
"""

from __future__ import annotations

import atexit
import itertools
import os
import statistics
import tempfile
import time
from typing import Any


def _install() -> None:
    from dengine_trio.raft.messages import AppendEntries, Heartbeat, HeartbeatResponse
    from dengine_trio.runtime import node, transport
    from dengine_trio.runtime import requests as request_table

    clock = time.perf_counter
    current: dict[str, float] = {}
    requests: list[dict[str, float]] = []
    follower_answers: list[float] = []
    heartbeat_read: list[float] = []

    def timed(name: str) -> None:
        if name not in current:
            current[name] = clock()

    def wrap_request(cls: Any, attr: str) -> None:
        original = getattr(cls, attr)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            current.clear()
            current["enter"] = clock()
            try:
                return await original(*args, **kwargs)
            finally:
                current["exit"] = clock()
                requests.append(dict(current))

        setattr(cls, attr, wrapper)

    wrap_request(node.NodeRuntime, "propose")
    wrap_request(node.NodeRuntime, "read_barrier")

    send = transport.Transport.send
    receive = transport.Transport._receive
    resolve = request_table.Waiter.resolve

    def traced_send(self: Any, msg: object) -> bytes:
        if "enter" in current and type(msg) in (AppendEntries, Heartbeat):
            timed("send")
        if type(msg) is HeartbeatResponse and heartbeat_read:
            follower_answers.append(clock() - heartbeat_read.pop())
        return send(self, msg)

    def traced_receive(self: Any, peer_id: int, payload: bytes) -> None:
        if "enter" not in current:
            heartbeat_read[:] = [clock()]
        receive(self, peer_id, payload)
        if "send" in current:
            timed("reply")

    def traced_resolve(self: Any, value: Any = None) -> None:
        if "reply" in current:
            timed("resolve")
        resolve(self, value)

    transport.Transport.send = traced_send  # type: ignore[method-assign]
    transport.Transport._receive = traced_receive  # type: ignore[method-assign]
    request_table.Waiter.resolve = traced_resolve  # type: ignore[method-assign]

    def report() -> None:
        lines = []
        complete = [r for r in requests if len(r) == 5]
        if complete:
            steps = ["enter", "send", "reply", "resolve", "exit"]
            parts = [
                f"{a}->{b} {statistics.median(r[b] - r[a] for r in complete) * 1e6:.0f} us"
                for a, b in itertools.pairwise(steps)
            ]
            total = statistics.median(r["exit"] - r["enter"] for r in complete) * 1e6
            lines.append(f"requests {len(complete)}: {', '.join(parts)}; total {total:.0f} us")
        if follower_answers:
            median = statistics.median(follower_answers) * 1e6
            lines.append(
                f"heartbeats answered {len(follower_answers)}: read -> answer sent {median:.0f} us"
            )
        if lines:
            directory = os.environ.get("DENGINE_TRACE_DIR", tempfile.gettempdir())
            with open(os.path.join(directory, f"trace-{os.getpid()}.txt"), "w") as out:
                out.write("\n".join(lines) + "\n")

    atexit.register(report)


if os.environ.get("DENGINE_TRACE") == "1":
    _install()
