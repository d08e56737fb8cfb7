"""Processes the benchmark suite starts, and how it makes sure they all end.

Every process is started in a session of its own, so the suite can end it together with
everything it started in turn (a worker's follower nodes) by signalling the process group: a
worker that is killed cannot leave its followers behind. Workers speak one JSON object a line:
a command on their stdin, ``RESULT {...}`` on their stdout; anything else they print is passed
through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

STOP_TIMEOUT_S = 10.0
RESULT_PREFIX = "RESULT "


class WorkerError(Exception):
    """A worker failed a command, died, or answered something else than a result."""


def _signal_group(process: trio.Process, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def stop_group(process: trio.Process, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process's group, then SIGKILL to what is left of it after ``timeout_s``."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(timeout_s):
                await process.wait()
        # The leader may be gone while its children linger: the group gets SIGKILL anyway.
        _signal_group(process, signal.SIGKILL)
        if process.returncode is None:
            await process.wait()


@asynccontextmanager
async def group_process(
    command: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[trio.Process]:
    """A process with its output in ``log_path``, its whole group ended on exit."""
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        try:
            yield process
        finally:
            await stop_group(process)


class Worker:
    """A worker process that runs one side of the embedded comparison on command."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = bytearray()

    async def _read_line(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line.decode(errors="replace")
            chunk = await self._stdout.receive_some(65536)
            if not chunk:
                raise WorkerError(f"{self.name} exited (status {self._process.returncode})")
            self._buffer += chunk

    async def next_result(self) -> dict[str, Any]:
        """The worker's next result; the lines before it go to stderr."""
        while True:
            line = await self._read_line()
            if not line.startswith(RESULT_PREFIX):
                sys.stderr.write(line)
                continue
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            if "error" in result:
                raise WorkerError(f"{self.name}: {result['error']}")
            return result

    async def call(self, timeout_s: float, **command: Any) -> dict[str, Any]:
        """Send one command and return its result."""
        with trio.fail_after(timeout_s):
            await self._stdin.send_all(json.dumps(command).encode() + b"\n")
            return await self.next_result()

    async def close(self) -> None:
        """Ask the worker to stop (end of its stdin), then end its group."""
        with trio.CancelScope(shield=True):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._stdin.aclose()
            with trio.move_on_after(STOP_TIMEOUT_S):
                await self._process.wait()
            await stop_group(self._process)


@asynccontextmanager
async def worker(
    name: str, command: Sequence[str], *, ready_timeout_s: float
) -> AsyncIterator[Worker]:
    """Start a worker and wait for its first result (``ready``); end its group on exit.

    Its stderr is the suite's, so its progress lines show. Closing its stdin asks it to stop
    cleanly; the group is signalled if it does not.
    """
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    handle = Worker(name, process)
    try:
        with trio.fail_after(ready_timeout_s):
            await handle.next_result()
        yield handle
    finally:
        await handle.close()


def send_result(**result: Any) -> None:
    """A worker's answer to the suite (``error=...`` for a failure)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
