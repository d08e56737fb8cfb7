"""Write latency and throughput of a three-process cluster (``make bench-write``).

Three nodes on 127.0.0.1, each its own process: this script runs node 1 with
``EmbeddedEngine`` and starts nodes 2 and 3 as ``python -m dengine_trio`` processes. The client
runs in node 1's process and node 1 must lead, so the numbers are those of an application
embedding the leader: one round of replication per batch, no forwarding hop.

Node 1 is made the leader by configuration rather than luck: its election timeout
(600-900 ms, the shipped default) is far shorter than the followers' (3-4 s), so it campaigns
first once a follower is up and, with Raft's leader stickiness, keeps leading. The script
checks that it leads, with the same term, before and after every phase, and aborts otherwise.

For each strategy (MemFirst with the mission's batch flush, and DiskFirst):

* single client: ``--writes`` sequential puts (after ``--warmup`` puts), p50/p99/mean/max;
* ``--writers`` concurrent writers sharing ``--concurrent-writes`` puts: throughput, and the
  per-put latency under that load.

Keys are 10-12 bytes, values 256 bytes. Every loop is bounded in count, every phase in time
(``--phase-timeout``); the temporary directory (configs, logs, data) is removed at the end.
Run from the repository root:

    .venv/bin/python -m bench.write [--strategy both] [--writes 2000] [--writers 64]
        [--concurrent-writes 20000] [--tls]

``--tls`` runs the same cluster with mutual TLS between the nodes (``[tls]``), with a CA and
node certificates made by ``trustme`` in the temporary directory: compare with a run without
it for TLS's cost.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

from dengine_trio import Client, EmbeddedEngine, load_config
from dengine_trio.metrics.prometheus import PrometheusSink
from dengine_trio.raft.config import Durability
from tests.support.cluster import Settings, free_ports, write_cluster

VALUE = bytes(range(256))
"""256 bytes of value for every put."""
STRATEGIES = ("MemFirst", "DiskFirst")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class BenchError(Exception):
    """The cluster did not come up, or node 1 did not (keep) lead."""


@dataclass
class Phase:
    """One measured phase: how many puts, how long, each put's latency (seconds)."""

    name: str
    puts: int
    elapsed_s: float
    cpu_s: float
    latencies_s: list[float]

    def percentile_ms(self, p: int) -> float:
        cuts = statistics.quantiles(self.latencies_s, n=100, method="inclusive")
        return cuts[p - 1] * 1000

    @property
    def throughput(self) -> float:
        return self.puts / self.elapsed_s

    def summary(self) -> str:
        lat = self.latencies_s
        return (
            f"{self.puts} puts in {self.elapsed_s:.2f} s = {self.throughput:,.0f} puts/s; "
            f"latency p50 {self.percentile_ms(50):.2f} ms, p99 {self.percentile_ms(99):.2f} ms, "
            f"mean {statistics.fmean(lat) * 1000:.2f} ms, max {max(lat) * 1000:.2f} ms; "
            f"node 1 process CPU {self.cpu_s:.2f} s ({self.cpu_s / self.elapsed_s:.0%})"
        )


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


FOLLOWER_ELECTION_SETTINGS: Settings = {
    "raft.timing.election_timeout_min_ms": 3000,
    "raft.timing.election_timeout_max_ms": 4000,
}
"""Nodes 2 and 3: far slower to campaign than node 1 (600-900 ms, the shipped default)."""


def write_configs(
    root: Path, strategy: str, tls: bool = False, extra: Settings | None = None
) -> list[Path]:
    """One TOML file per node; node 1 with the shipped election timeout, 2 and 3 slower.
    ``tls``: mutual TLS between the nodes, certificates made by trustme under ``root``.
    ``extra``: more settings for every node (e.g. ``raft.snapshot.enable``)."""
    settings: Settings = {
        "raft.persistence.strategy": Durability(strategy),
        "raft.timing.request_timeout_ms": 10000,
        **(extra or {}),
    }
    tls_settings = tls_node_settings(root) if tls else lambda i: {}

    def node_settings(i: int) -> Settings:
        return {**({} if i == 1 else FOLLOWER_ELECTION_SETTINGS), **tls_settings(i)}

    configs = write_cluster(
        root, free_ports(3), settings, node_settings=node_settings, db_dir=lambda i: root / f"db{i}"
    )
    return [c.path for c in configs]


def tls_node_settings(root: Path) -> Callable[[int], Settings]:
    """``[tls]`` settings per node: a trustme CA and a certificate per node naming
    ``node-<id>`` and 127.0.0.1, as PEM files under ``root/certs``."""
    import trustme  # a test extra, which ``make bench-write`` installs

    certs = root / "certs"
    certs.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))

    def settings(i: int) -> Settings:
        cert = ca.issue_cert(f"node-{i}", "localhost", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(certs / f"node-{i}.pem"))
        cert.private_key_pem.write_to_path(str(certs / f"node-{i}-key.pem"))
        return {
            "tls.enable_tls": True,
            "tls.enable_mtls": True,
            "tls.certificate_authority_root_path": str(certs / "ca.pem"),
            "tls.server_certificate_path": str(certs / f"node-{i}.pem"),
            "tls.server_private_key_path": str(certs / f"node-{i}-key.pem"),
        }

    return settings


@asynccontextmanager
async def follower_processes(
    root: Path, configs: list[Path]
) -> AsyncIterator[list[tuple[int, int]]]:
    """Nodes 2 and 3 as node processes (logs in ``root``); SIGTERM, then SIGKILL, on exit.

    Yields each process's (KV port, health port), in the order of ``configs``.
    """
    processes: list[tuple[trio.Process, Path, IO[bytes]]] = []
    ports: list[tuple[int, int]] = []
    http_ports = free_ports(2 * len(configs))
    try:
        for config, kv_port, health_port in zip(
            configs, http_ports[::2], http_ports[1::2], strict=True
        ):
            log_path = root / f"{config.stem}.log"
            log_file = log_path.open("wb")
            command = [
                sys.executable,
                "-m",
                "dengine_trio",
                "--config-path",
                str(config),
                "--port",
                str(kv_port),
                "--health-port",
                str(health_port),
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
            ]
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
            processes.append((process, log_path, log_file))
            ports.append((kv_port, health_port))
        yield ports
        for process, log_path, _ in processes:
            if process.returncode is not None:
                raise BenchError(
                    f"{log_path.stem} exited with {process.returncode}: {tail(log_path)}"
                )
    finally:
        with trio.CancelScope(shield=True):
            for process, _, _ in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process, _, log in processes:
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                log.close()


def tail(path: Path, lines: int = 5) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_until_leader(engine: EmbeddedEngine, logs: list[Path]) -> int:
    """Wait until node 1 leads and has committed its term; return the term."""
    leader, term = await engine.wait_ready(READY_TIMEOUT_S)
    if leader != engine.node_id:
        raise BenchError(
            f"node {leader} won the election, not node 1 (logs: {[tail(p) for p in logs]})"
        )
    return term


def check_still_leading(engine: EmbeddedEngine, term: int, phase: str) -> None:
    status = engine.status()
    if not engine.is_leader() or status["term"] != term:
        raise BenchError(
            f"node 1 lost leadership during {phase}: now {status['role']} in term "
            f"{status['term']} (was leader in {term}); numbers discarded"
        )


def keys(prefix: str) -> Iterator[bytes]:
    """b"s-00000000", b"s-00000001", ...: 10 bytes each (12 from 10^8 puts on)."""
    for i in itertools.count():
        yield f"{prefix}-{i:08d}".encode()


async def single_client(client: Client, name: str, count: int, *, report: bool = True) -> Phase:
    latencies = []
    every = max(1, count // 4)
    names = keys(name)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(count):
        key = next(names)
        started = time.perf_counter()
        await client.put(key, VALUE)
        latencies.append(time.perf_counter() - started)
        if report and (i + 1) % every == 0:
            progress(f"single client: {i + 1}/{count} puts")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Phase(name, count, elapsed, cpu, latencies)


async def concurrent_writers(client: Client, name: str, total: int, writers: int) -> Phase:
    latencies: list[float] = []
    tickets = iter(range(total))
    names = keys(name)

    async def writer() -> None:
        for _ in tickets:  # shared: the writers together take exactly `total` puts
            key = next(names)
            started = time.perf_counter()
            await client.put(key, VALUE)
            latencies.append(time.perf_counter() - started)

    async def report() -> None:
        while True:
            await trio.sleep(1)
            progress(f"{writers} writers: {len(latencies)}/{total} puts")

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as outer:
        outer.start_soon(report)
        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(writer)
        outer.cancel_scope.cancel()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Phase(name, total, elapsed, cpu, latencies)


async def bench_strategy(strategy: str, args: argparse.Namespace) -> list[Phase]:
    root = Path(tempfile.mkdtemp(prefix=f"dengine-bench-{strategy}-", dir=args.tmp_dir))
    try:
        configs = write_configs(root, strategy, args.tls)
        links = "mutual TLS" if args.tls else "plain TCP"
        print(
            f"{strategy}: node 1 in this process, nodes 2 and 3 as processes ({links})",
            flush=True,
        )
        # With the Prometheus sink the node process uses, so its cost is in the numbers.
        metrics = PrometheusSink()
        async with EmbeddedEngine.start(load_config(configs[0]), metrics=metrics) as engine:
            async with follower_processes(root, configs[1:]):
                term = await wait_until_leader(engine, [root / "n2.log", root / "n3.log"])
                progress(f"node 1 leads in term {term}")
                client = engine.client()
                phases = []
                with trio.fail_after(args.phase_timeout):
                    await single_client(client, "warmup", args.warmup, report=False)
                for name, run in (
                    ("single client", lambda: single_client(client, "s", args.writes)),
                    (
                        f"{args.writers} writers",
                        lambda: concurrent_writers(
                            client, "c", args.concurrent_writes, args.writers
                        ),
                    ),
                ):
                    with trio.fail_after(args.phase_timeout):
                        phase = await run()
                    phase.name = name
                    check_still_leading(engine, term, name)
                    print(f"{strategy:9} {name:14} {phase.summary()}", flush=True)
                    phases.append(phase)
                # A last sanity check: the writes are there, read linearizably.
                if await client.get_linearizable(b"s-00000000") != VALUE:
                    raise BenchError("the first single-client write is not readable")
        return phases
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(results: dict[str, list[Phase]]) -> str:
    rows = [
        "| strategy | phase | puts | time (s) | puts/s | p50 (ms) | p99 (ms) | mean (ms) "
        "| node 1 CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy, phases in results.items():
        for p in phases:
            rows.append(
                f"| {strategy} | {p.name} | {p.puts} | {p.elapsed_s:.2f} | {p.throughput:,.0f} "
                f"| {p.percentile_ms(50):.2f} | {p.percentile_ms(99):.2f} "
                f"| {statistics.fmean(p.latencies_s) * 1000:.2f} | {p.cpu_s / p.elapsed_s:.0%} |"
            )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.write", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--strategy", choices=(*STRATEGIES, "both"), default="both")
    parser.add_argument("--warmup", type=int, default=200, help="puts before measuring")
    parser.add_argument("--writes", type=int, default=2000, help="sequential puts")
    parser.add_argument("--writers", type=int, default=64, help="concurrent writers")
    parser.add_argument(
        "--concurrent-writes", type=int, default=20_000, help="puts shared by the writers"
    )
    parser.add_argument(
        "--tmp-dir",
        help="where the temporary data directories go (default: the system's temp dir); "
        "DiskFirst numbers depend on this file system's fsync",
    )
    parser.add_argument(
        "--tls", action="store_true", help="mutual TLS between the nodes (trustme certificates)"
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=300.0, help="abort a phase after this (s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("warmup", "writes", "writers", "concurrent_writes"):
        if getattr(args, flag) < 1:
            print(f"--{flag.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}",
        flush=True,
    )
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    results: dict[str, list[Phase]] = {}
    try:
        for strategy in strategies:
            results[strategy] = trio.run(bench_strategy, strategy, args)
    except (BenchError, trio.TooSlowError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
