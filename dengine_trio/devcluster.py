"""``make start-cluster``: run the three local nodes at once, each output line tagged ``[NodeN]``.

Each node runs in its own session, so a Ctrl+C in the terminal reaches only this launcher, which
passes one SIGTERM to every node still running: each then stops gracefully (leader hand-over,
flush) exactly as it would alone, and the launcher exits once all have. Closing the terminal
(SIGHUP) is the same stop. A launcher that dies without passing anything on (SIGKILL) closes
the pipe on each node's standard input, and each node then stops by itself the same way
(``--stop-on-stdin-close``): no node outlives its launcher. A second stop signal
within :data:`REPEAT_WINDOW_S` of the first is the same stop (``kill`` of a ``make`` job also
reaches make, which forwards its own SIGTERM); one after that kills the nodes.

A node that exits by itself is reported on a ``[devcluster]`` line with its id and how it
ended (see :func:`report_exit`: stopped, failed to start, or died, with how to start it again
unless it failed to start), and the others keep running: the quick start is where a user tries
a failover. The launcher exits by itself only when no node is left.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

import trio

__all__ = [
    "REPEAT_WINDOW_S",
    "STARTUP_WINDOW_S",
    "NodeSpec",
    "describe_exit",
    "main",
    "mission_nodes",
    "report_exit",
    "run_cluster",
]

NodeSpec = tuple[int, str, int, int]
"""(node id, config path, KV port, health port)."""

REPEAT_WINDOW_S = 1.0
"""A stop signal this soon (seconds) after the first one is part of the same stop."""

STARTUP_WINDOW_S = 5.0
"""A node that exits with a non-zero status this soon (seconds) after it was started failed to
start (a taken port, a bad config: it said why on its last lines); restarting it as it was would
fail the same way, so no restart command is suggested."""

_TAG = b"[devcluster] "


def mission_nodes(count: int = 3) -> list[NodeSpec]:
    """The nodes of ``config/n1..nN`` on the mission's ports (8081.., 10001..)."""
    return [(i, f"config/n{i}", 8080 + i, 10000 + i) for i in range(1, count + 1)]


def node_command(spec: NodeSpec, extra_args: Sequence[str] = ()) -> list[str]:
    """The command line that runs the node ``spec`` on its own (the launcher adds
    ``--stop-on-stdin-close``)."""
    _, config_path, port, health_port = spec
    return [
        sys.executable, "-m", "dengine_trio",
        "--config-path", config_path,
        "--port", str(port),
        "--health-port", str(health_port),
        *extra_args,
    ]  # fmt: skip


def restart_hint(spec: NodeSpec, extra_args: Sequence[str] = ()) -> str:
    """How to start ``spec`` again by hand, in another terminal, from the same directory."""
    node_id = spec[0]
    if node_id <= 3 and spec == mission_nodes()[node_id - 1] and not extra_args:
        return f"make start-node{node_id}"
    return shlex.join(node_command(spec, extra_args))


def describe_exit(returncode: int) -> str:
    """``-9`` -> ``killed by SIGKILL (exit 137)``; ``2`` -> ``exit status 2``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} (exit {128 - returncode})"
    return f"exit status {returncode}"


def report_exit(
    spec: NodeSpec,
    returncode: int,
    lived_s: float,
    left: Sequence[int],
    extra_args: Sequence[str] = (),
) -> str:
    """The ``[devcluster]`` line for node ``spec`` that exited by itself after ``lived_s``
    seconds, ``left`` being the ids of the nodes still running.

    Exit status 0 (a ``kill <pid>``: the node stopped gracefully) is "stopped"; a non-zero
    status within :data:`STARTUP_WINDOW_S` of the start is "failed to start" (its own error
    line names the cause, e.g. the port taken); any other non-zero status or a signal is "died".
    Only a stopped or dead node gets a restart command.
    """
    node_id = spec[0]
    if returncode == 0:
        what, restartable = f"stopped ({describe_exit(returncode)})", True
    elif 0 < returncode and lived_s <= STARTUP_WINDOW_S:
        what, restartable = (
            f"failed to start ({describe_exit(returncode)}): see its error above",
            False,
        )
    else:
        what, restartable = f"died: {describe_exit(returncode)}", True
    if not left:
        return f"node {node_id} {what}; no node is left"
    keep = "keeps" if len(left) == 1 else "keep"
    line = f"node {node_id} {what}; {_nodes(left)} {keep} running"
    if restartable:
        line += f". Start it again in another terminal: {restart_hint(spec, extra_args)}"
    return line


class _Output:
    """The launcher's standard output, shared line by line by the nodes and the launcher."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.closed = False

    async def write(self, data: bytes) -> None:
        async with self.lock:
            if self.closed:
                return
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except OSError:
                # The terminal is gone (SIGHUP): the nodes' output is still read and dropped,
                # so that no node blocks on a full pipe while it stops.
                self.closed = True

    async def say(self, text: str) -> None:
        await self.write(_TAG + text.encode() + b"\n")


async def _pump(stream: trio.abc.ReceiveStream, prefix: bytes, out: _Output) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            await out.write(b"".join(prefix + line + b"\n" for line in lines))
    if pending:
        await out.write(prefix + pending + b"\n")


class _Nodes:
    """The node processes, and the stop the launcher was asked for, if any."""

    def __init__(self, out: _Output) -> None:
        self.out = out
        self.procs: dict[int, trio.Process] = {}
        self.stop_requested_at: float | None = None
        self.running_at_stop: list[int] = []
        self.killed = False

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.returncode is None]

    async def stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = trio.current_time()
        if self.stop_requested_at is None:
            # Sent once: a second SIGTERM could reach a node after it put the default handler
            # back and kill it mid-flush.
            self.stop_requested_at = now
            self.running_at_stop = self.running()
            await self.out.say(f"{name}: stopping {_nodes(self.running_at_stop)} gracefully")
            self._signal_all(signal.SIGTERM)
        elif now - self.stop_requested_at <= REPEAT_WINDOW_S:
            await self.out.say(
                f"{name} again within {REPEAT_WINDOW_S:.0f} s: the same stop "
                "(send it again later to kill the nodes)"
            )
        elif not self.killed:
            self.killed = True
            await self.out.say(f"{name} again: killing {_nodes(self.running())}")
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    async def stop_on_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            await self.stop(signum)

    def exit_status(self) -> int:
        """The worst exit status of the nodes the launcher stopped, or of all if none was.

        A node that died before a stop was asked for has been reported already; it does not
        turn a clean Ctrl+C of the others into a failure. Killed by signal N counts as 128 + N.
        """
        ids = self.running_at_stop if self.stop_requested_at is not None else list(self.procs)
        codes = [self.procs[i].returncode for i in ids]
        return max((1 if c is None else c if c >= 0 else 128 - c for c in codes), default=0)


def _nodes(ids: Sequence[int]) -> str:
    """``[3]`` -> ``node 3``; ``[1, 3]`` -> ``nodes 1, 3``; ``[]`` -> ``no node``."""
    if not ids:
        return "no node"
    return ("node " if len(ids) == 1 else "nodes ") + ", ".join(map(str, ids))


async def run_cluster(nodes: Sequence[NodeSpec], extra_args: Sequence[str] = ()) -> int:
    """Run ``nodes`` until SIGINT/SIGTERM or until none is left; return an exit status.

    The worst exit status of the nodes the launcher stopped (of all nodes if none was asked
    to stop): 0 if each exited 0, a node killed by signal N counting as 128 + N. A node that
    died before the stop was reported then and does not turn a clean Ctrl+C into a failure.
    """
    out = _Output()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CONFIG_PATH", None)  # it would override every node's --config-path
    running = _Nodes(out)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as watchers:
            watchers.start_soon(running.stop_on_signals, signals)
            # The pumps end by themselves at EOF, after each node has said its last line.
            async with trio.open_nursery() as nursery:

                async def watch(spec: NodeSpec, proc: trio.Process) -> None:
                    started_at = trio.current_time()
                    code = await proc.wait()
                    if running.stop_requested_at is not None:
                        return
                    lived_s = trio.current_time() - started_at
                    await out.say(report_exit(spec, code, lived_s, running.running(), extra_args))

                for spec in nodes:
                    proc = await trio.lowlevel.open_process(
                        [*node_command(spec, extra_args), "--stop-on-stdin-close"],
                        # Never written: its end closing, when this process ends however it
                        # ends, is what stops the node.
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                    running.procs[spec[0]] = proc
                    assert proc.stdout is not None
                    await out.say(f"node {spec[0]}: pid {proc.pid}")
                    nursery.start_soon(_pump, proc.stdout, f"[Node{spec[0]}] ".encode(), out)
                    nursery.start_soon(watch, spec, proc)
            watchers.cancel_scope.cancel()
    return running.exit_status()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dengine_trio.devcluster [--nodes N | --node ID:CONFIG:PORT:HEALTH_PORT ...]
    [node args]``: run the nodes (see :func:`run_cluster`); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dengine_trio.devcluster",
        description="Run config/n1..nN locally on ports 8081.. and 10001.., output prefixed. "
        "Other arguments are passed to every node.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    parser.add_argument(
        "--node",
        action="append",
        type=_node_spec,
        metavar="ID:CONFIG:PORT:HEALTH_PORT",
        help="run this node instead of config/n1..nN (repeat for each node)",
    )
    args, extra = parser.parse_known_args(argv)
    return trio.run(run_cluster, args.node or mission_nodes(args.nodes), extra)


def _node_spec(text: str) -> NodeSpec:
    try:
        node_id, config_path, port, health_port = text.rsplit(":", 3)
        return int(node_id), config_path, int(port), int(health_port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID:CONFIG:PORT:HEALTH_PORT") from None


if __name__ == "__main__":
    sys.exit(main())
