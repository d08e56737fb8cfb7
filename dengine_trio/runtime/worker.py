"""One long-lived thread that runs blocking calls (the log's fsyncs) for a trio task.

``trio.to_thread.run_sync`` costs ~120 µs of CPU per call on the dev machine even for a call
that does nothing (a thread-cache hand-off, a capacity limiter, context copies and a portal
for ``trio.from_thread``), more than the fsync it wraps (~75 µs here). Under DiskFirst every
write waits for one fsync on the leader and one on a follower, so the hand-off is on the
critical path twice. This thread takes a call from a queue, runs it and hands the outcome back
with ``TrioToken.run_sync_soon``: the same two thread switches, without the rest.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import trio


class _Call:
    __slots__ = ("error", "fn", "task", "value")

    def __init__(self, fn: Callable[[], Any], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.task = task
        self.value: Any = None
        self.error: BaseException | None = None

    def finished(self) -> None:
        """In the trio thread, once the worker is done with the call."""
        trio.lowlevel.reschedule(self.task)


class WorkerThread:
    """Runs one call at a time in a dedicated thread; ``run`` awaits its result.

    A call cannot be interrupted once it is queued, so a cancelled ``run`` still waits for it
    to finish (as ``trio.to_thread.run_sync`` does by default) and the cancellation arrives
    at the caller's next checkpoint. Use as ``async with WorkerThread(name) as worker``;
    leaving the block lets the call in progress finish and ends the thread.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def __aenter__(self) -> WorkerThread:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._calls.put(None)
        thread = self._thread
        if thread is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)

    def _serve(self) -> None:
        token = self._token
        assert token is not None
        while True:
            call = self._calls.get()
            if call is None:
                return
            try:
                call.value = call.fn()
            except BaseException as exc:  # handed to the awaiting task, which raises it
                call.error = exc
            try:
                token.run_sync_soon(call.finished)
            except trio.RunFinishedError:
                return  # trio has exited: nobody waits any more

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the worker thread: its result, or its exception raised here. Raises
        ``RuntimeError`` outside the ``async with`` block (no thread running)."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"worker thread {self._name!r} is not running")
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(fn, trio.lowlevel.current_task())
        self._calls.put(call)
        await trio.lowlevel.wait_task_rescheduled(_wait_for_the_call)
        if call.error is not None:
            raise call.error
        return call.value


def _wait_for_the_call(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the call runs on in its thread: wait for it
