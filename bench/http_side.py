"""The HTTP half of ``make bench``: our KV API against its stack's ceiling and against etcd.

Servers, all on 127.0.0.1, all started by this module and ended (with their process groups)
when it is done:

* our three nodes as ``python -m dengine_trio`` processes (``bench.write``'s configs: MemFirst
  with the mission's batch flush; node 1 leads by its shorter election timeout);
* the ceiling (``bench.ceiling``): the same routes on the same Hypercorn settings, no engine;
* an etcd 3-node cluster, if ``etcd`` is installed, through its HTTP JSON gateway.

The load comes from ``wrk`` (a separate process, one thread) with ``bench/kv.lua``: every run
is bounded in time (``-d``) and in count (the script stops after ``max_requests``). Scenarios
are run round-robin, ``rounds`` times, so each side of every comparison alternates with the
other under the same background load.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from bench.ceiling import GET_KEYS, VALUE_TEXT
from bench.measure import Run
from bench.procs import group_process
from bench.write import follower_processes, write_configs
from tests.support.cluster import free_ports

WRK_SCRIPT = Path(__file__).with_name("kv.lua")
READY_TIMEOUT_S = 30.0
ETCD_INSTALL_HINT = "sudo apt-get install etcd-server"
WRK_INSTALL_HINT = "sudo apt-get install wrk"


@dataclass(frozen=True)
class Target:
    """One side of an HTTP scenario: a base URL and what the script sends there."""

    system: str  # "ceiling", "ours (leader)", "ours (follower)", "etcd"
    operation: str  # "POST", "GET linearizable", ...
    url: str
    mode: str
    arg: str = ""

    @property
    def name(self) -> str:
        return f"{self.system} {self.operation}"


@dataclass(frozen=True)
class Servers:
    targets: list[Target]
    notes: list[str]


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


async def wait_http(check: Callable[[httpx.AsyncClient], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (an async callable returning truthy once ready) for READY_TIMEOUT_S."""
    async with httpx.AsyncClient(timeout=1.0) as http:
        with trio.move_on_after(READY_TIMEOUT_S):
            while True:
                try:
                    if await check(http):
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {READY_TIMEOUT_S} s")


@asynccontextmanager
async def our_cluster(root: Path) -> AsyncIterator[list[Target]]:
    configs = write_configs(root, "MemFirst")
    async with follower_processes(root, configs) as ports:
        leader_port: int | None = None
        follower_port: int | None = None

        async def roles(http: httpx.AsyncClient) -> bool:
            nonlocal leader_port, follower_port
            leader_port = follower_port = None
            for kv_port, health_port in ports:
                primary = await http.get(f"http://127.0.0.1:{health_port}/primary")
                replica = await http.get(f"http://127.0.0.1:{health_port}/replica")
                if primary.status_code == 200:
                    leader_port = kv_port
                elif replica.status_code == 200:
                    follower_port = follower_port or kv_port
            return leader_port is not None and follower_port is not None

        await wait_http(roles, "our cluster (a leader and a follower)")
        assert leader_port is not None and follower_port is not None
        async with httpx.AsyncClient(timeout=10.0) as http:
            for key in GET_KEYS:
                reply = await http.post(
                    f"http://127.0.0.1:{leader_port}/kv", json={"key": key, "value": VALUE_TEXT}
                )
                reply.raise_for_status()
        progress(f"our cluster: leader KV on :{leader_port}, a follower on :{follower_port}")
        targets = []
        for system, port in (("ours (leader)", leader_port), ("ours (follower)", follower_port)):
            url = f"http://127.0.0.1:{port}"
            targets.append(Target(system, "POST", url, "kv-post"))
            for policy in ("linearizable", "lease", "eventual"):
                targets.append(
                    Target(system, f"GET {policy}", url, "kv-get", f"?consistency={policy}")
                )
        yield targets


@asynccontextmanager
async def ceiling(root: Path, raw: bool = False) -> AsyncIterator[list[Target]]:
    """The Quart ceiling (``ceiling``), or with ``raw`` the raw ASGI one (``raw ASGI``)."""
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
    name = "raw ASGI" if raw else "ceiling"
    async with group_process(
        [*command, "--raw"] if raw else command, root / f"ceiling{'-raw' if raw else ''}.log"
    ):
        url = f"http://127.0.0.1:{port}"

        async def up(http: httpx.AsyncClient) -> bool:
            return (await http.get(f"{url}/kv/{GET_KEYS[0]}")).status_code == 200

        await wait_http(up, f"the {name} app")
        yield [
            Target(name, "POST", url, "kv-post"),
            Target(name, "GET", url, "kv-get"),
        ]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@asynccontextmanager
async def etcd_cluster(root: Path, etcd: str) -> AsyncIterator[list[Target]]:
    ports = free_ports(6)
    client_ports, peer_ports = ports[:3], ports[3:]
    initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports, 1))
    async with AsyncExitStack() as stack:
        for i, (client_port, peer_port) in enumerate(zip(client_ports, peer_ports, strict=True), 1):
            command = [
                etcd,
                f"--name=e{i}",
                f"--data-dir={root / f'etcd{i}'}",
                f"--listen-client-urls=http://127.0.0.1:{client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster={initial}",
                "--initial-cluster-token=dengine-bench",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ]
            await stack.enter_async_context(group_process(command, root / f"etcd{i}.log"))
        leader_url: str | None = None

        async def leader(http: httpx.AsyncClient) -> bool:
            nonlocal leader_url
            for port in client_ports:
                url = f"http://127.0.0.1:{port}"
                status = (await http.post(f"{url}/v3/maintenance/status", json={})).json()
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    leader_url = url
                    return True
            return False

        await wait_http(leader, "the etcd cluster")
        assert leader_url is not None
        async with httpx.AsyncClient(timeout=10.0) as http:
            for key in GET_KEYS:
                reply = await http.post(
                    f"{leader_url}/v3/kv/put",
                    json={"key": _b64(key), "value": _b64(VALUE_TEXT)},
                )
                reply.raise_for_status()
        progress(f"etcd: leader's client URL {leader_url}")
        yield [
            Target("etcd", "POST put", leader_url, "etcd-put"),
            Target("etcd", "GET range linearizable", leader_url, "etcd-range"),
            Target("etcd", "GET range serializable", leader_url, "etcd-range", "serializable"),
        ]


@asynccontextmanager
async def http_servers(with_etcd: bool = True) -> AsyncIterator[Servers]:
    """Every HTTP server of the comparison, running; the temporary directory removed after."""
    root = Path(tempfile.mkdtemp(prefix="dengine-bench-http-"))
    notes: list[str] = []
    try:
        async with AsyncExitStack() as stack:
            targets = list(await stack.enter_async_context(ceiling(root, raw=True)))
            targets += await stack.enter_async_context(ceiling(root))
            targets += await stack.enter_async_context(our_cluster(root))
            etcd = shutil.which("etcd") if with_etcd else None
            if etcd:
                targets += await stack.enter_async_context(etcd_cluster(root, etcd))
            elif with_etcd:
                notes.append(f"etcd skipped: `etcd` is not installed ({ETCD_INSTALL_HINT})")
                progress(notes[-1])
            yield Servers(targets, notes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def run_wrk(
    wrk: str,
    target: Target,
    *,
    connections: int,
    duration_s: float,
    max_requests: int,
    prefix: str,
) -> Run:
    """One bounded wrk run against ``target``."""
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout=2s",
        "-s",
        str(WRK_SCRIPT),
        target.url,
        "--",
        target.mode,
        prefix,
        str(max_requests),
        target.arg,
    ]
    with trio.fail_after(duration_s + 30):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON ") :])
            return Run(
                ops=data["requests"],
                elapsed_s=data["duration_us"] / 1e6,
                p50_s=data["p50_us"] / 1e6,
                p99_s=data["p99_us"] / 1e6,
                errors=data["failures"] + data["socket_errors"],
            )
    raise RuntimeError(f"wrk printed no result: {done.stdout[-300:]!r} {done.stderr[-300:]!r}")
