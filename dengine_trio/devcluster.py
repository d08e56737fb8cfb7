"""``make start-cluster``: run the three local nodes at once, each output line tagged ``[NodeN]``.

Each node runs in its own session, so a Ctrl+C in the terminal reaches only this launcher, which
passes one SIGTERM to every node: each then stops gracefully (leader hand-over, flush) exactly
as it would alone, and the launcher exits once all three have. A second Ctrl+C kills them. If a
node exits by itself (a taken port, a bad config), the others are stopped too, so the failure
cannot scroll by unnoticed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

import trio

__all__ = ["NodeSpec", "main", "mission_nodes", "run_cluster"]

NodeSpec = tuple[int, str, int, int]
"""(node id, config path, KV port, health port)."""


def mission_nodes(count: int = 3) -> list[NodeSpec]:
    """The nodes of ``config/n1..nN`` on the mission's ports (8081.., 10001..)."""
    return [(i, f"config/n{i}", 8080 + i, 10000 + i) for i in range(1, count + 1)]


async def _pump(stream: trio.abc.ReceiveStream, prefix: bytes, out: trio.Lock) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            async with out:
                sys.stdout.buffer.write(b"".join(prefix + line + b"\n" for line in lines))
                sys.stdout.buffer.flush()
    if pending:
        async with out:
            sys.stdout.buffer.write(prefix + pending + b"\n")
            sys.stdout.buffer.flush()


class _Nodes:
    """The node processes, and whether they were already asked to stop."""

    def __init__(self) -> None:
        self.procs: list[trio.Process] = []
        # A second SIGTERM could reach a node after it put the default handler back and kill
        # it mid-flush, so SIGTERM is sent once; only an impatient user escalates to SIGKILL.
        self.stopping = False

    def stop(self) -> None:
        signum = signal.SIGKILL if self.stopping else signal.SIGTERM
        self.stopping = True
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signum)

    async def stop_on_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.stop()

    def exit_status(self) -> int:
        """The worst exit status of the nodes; killed by signal N counts as 128 + N."""
        codes = [p.returncode if p.returncode is not None else 1 for p in self.procs]
        return max((c if c >= 0 else 128 - c for c in codes), default=0)


async def run_cluster(nodes: Sequence[NodeSpec], extra_args: Sequence[str] = ()) -> int:
    """Run ``nodes`` until SIGINT/SIGTERM or until one exits; the worst exit status."""
    out = trio.Lock()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CONFIG_PATH", None)  # it would override every node's --config-path
    running = _Nodes()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as watchers:
            watchers.start_soon(running.stop_on_signals, signals)
            # The pumps end by themselves at EOF, after each node has said its last line.
            async with trio.open_nursery() as nursery:
                one_exited = trio.Event()

                async def watch(proc: trio.Process) -> None:
                    await proc.wait()
                    one_exited.set()

                for node_id, config_path, port, health_port in nodes:
                    command = [
                        sys.executable, "-m", "dengine_trio",
                        "--config-path", config_path,
                        "--port", str(port),
                        "--health-port", str(health_port),
                        *extra_args,
                    ]  # fmt: skip
                    proc = await trio.lowlevel.open_process(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                    running.procs.append(proc)
                    assert proc.stdout is not None
                    nursery.start_soon(_pump, proc.stdout, f"[Node{node_id}] ".encode(), out)
                    nursery.start_soon(watch, proc)

                await one_exited.wait()
                if not running.stopping:  # a node quit on its own: stop the others
                    running.stop()
            watchers.cancel_scope.cancel()
    return running.exit_status()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dengine_trio.devcluster",
        description="Run config/n1..nN locally on ports 8081.. and 10001.., output prefixed.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    args, extra = parser.parse_known_args(argv)
    return trio.run(run_cluster, mission_nodes(args.nodes), extra)


if __name__ == "__main__":
    sys.exit(main())
