"""Three real node processes whose Raft links all pass through a :class:`ProxyNetwork`.

Each node binds its Raft listener on its own port, but every node's ``initial_cluster`` names
the proxy's front ports, the same list everywhere (the cluster id hashes it). So every byte
between two nodes crosses the proxy, and the nemesis can cut, delay or black-hole any direction
of any link. Every process binds 127.0.0.1 only (``--host``). The waits are async (the proxy
runs in the same trio loop) and every one is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from dengine_trio.config import ROLE_LEARNER, STATUS_JOINING, load_config, render_toml
from dengine_trio.raft.config import Durability
from tests.e2e.cluster import Node, key_path, node_env
from tests.support.cluster import Settings, free_ports, write_cluster

from . import fsync_probe
from .proxy import ProxyNetwork

__all__ = ["NODE_SETTINGS", "SNAPSHOT_EVERY", "ChaosCluster", "ChaosNode"]

REPO_ROOT = Path(__file__).resolve().parents[2]

HOST = "127.0.0.1"
STATUS_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
EXIT_TIMEOUT_S = 30.0

SNAPSHOT_EVERY = int(os.environ.get("DENGINE_CHAOS_SNAPSHOT_EVERY", "50"))
"""``max_log_entries_before_snapshot`` of the chaos nodes: low, so that under the clients' load
every node snapshots and compacts every second or two, and a node killed, paused or cut off for
a few seconds comes back behind its leader's compacted log and needs an InstallSnapshot."""

NODE_SETTINGS: Settings = {
    # Peers dial each node through the chaos proxy, at its initial_cluster address.
    "cluster.behind_proxy": True,
    "raft.read_consistency.lease_duration_ms": 500,
    "raft.snapshot.max_log_entries_before_snapshot": SNAPSHOT_EVERY,
    "raft.snapshot.retained_log_entries": SNAPSHOT_EVERY // 5,
}
"""Every node's file, over the defaults (LinearizableRead; the durability is the cluster's)."""

_SNAPSHOT_LINES = {
    "written": re.compile(r"node \d+ wrote snapshot "),
    "installed": re.compile(r"node \d+ installed snapshot .* from its leader"),
    "restarted_from": re.compile(r"node \d+ restored its state machine from "),
}


class ChaosNode(Node):
    """A node process bound to 127.0.0.1 only (HTTP too). With ``probe_fsync`` it runs under
    ``tests.chaos.fsync_probe``, its fsyncs recorded in ``fsync_log`` for ``power_cut``."""

    def __init__(
        self,
        node_id: int,
        config_path: Path,
        port: int,
        health_port: int,
        db_dir: Path,
        *,
        probe_fsync: bool = False,
    ) -> None:
        super().__init__(node_id, config_path, port, health_port)
        self.db_dir = db_dir
        self.probe_fsync = probe_fsync
        self.fsync_log = config_path.with_suffix(".fsync")

    def start(self, cwd: Path) -> None:
        env = node_env()
        module = "dengine_trio"
        if self.probe_fsync:
            module = "tests.chaos.fsync_probe"
            env[fsync_probe.LOG_ENV] = str(self.fsync_log)
            path = [str(REPO_ROOT), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", module,
                    "--config-path", str(self.config_path),
                    "--host", HOST,
                    "--port", str(self.port),
                    "--health-port", str(self.health_port),
                ],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def power_cut(self) -> int:
        """Drop what this (stopped) node wrote but never fsynced; return the bytes dropped."""
        assert self.probe_fsync and not self.running()
        return fsync_probe.power_cut(self.db_dir, self.fsync_log)


class ChaosCluster:
    """Nodes 1..size under ``root``, their links behind ``self.network``.

    Use ``async with ChaosCluster(...) as c``: it starts the proxy and the processes, and on the
    way out resumes paused nodes, stops every process (SIGTERM, then SIGKILL after a bound) and
    stops the proxy.
    """

    def __init__(
        self,
        root: Path,
        durability: str = "DiskFirst",
        size: int = 3,
        settings: Settings | None = None,
        *,
        probe_fsync: bool = False,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        ports = free_ports(4 * size)
        raft, front, kv, health = (ports[i * size : (i + 1) * size] for i in range(4))
        ids = list(range(1, size + 1))
        self.network = ProxyNetwork(
            backends={i: (HOST, raft[i - 1]) for i in ids}, fronts={i: front[i - 1] for i in ids}
        )
        configs = write_cluster(
            root,
            raft,
            {
                **NODE_SETTINGS,
                "raft.persistence.strategy": Durability(durability),
                **(settings or {}),
            },
            member_addresses=[self.network.address(i) for i in ids],
            host=HOST,
        )
        self.nodes: dict[int, ChaosNode] = {
            c.cluster.node_id: ChaosNode(
                c.cluster.node_id,
                c.path,
                kv[c.cluster.node_id - 1],
                health[c.cluster.node_id - 1],
                c.db_root_path(),
                probe_fsync=probe_fsync,
            )
            for c in configs
        }
        # Each node's file as written at the start (a voter of the initial cluster), to go
        # back to after it was rewritten as a joining node's.
        self.voter_configs = {i: node.config_path.read_text() for i, node in self.nodes.items()}
        self.wipes = 0  # data directories emptied (membership faults)
        self.paused: set[int] = set()
        self.http = httpx.AsyncClient(trust_env=False, timeout=STATUS_TIMEOUT_S)
        self._nursery_scope: trio.CancelScope | None = None

    @property
    def ids(self) -> list[int]:
        return sorted(self.nodes)

    async def __aenter__(self) -> ChaosCluster:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        self._nursery_scope = nursery.cancel_scope
        await nursery.start(self.network.run)
        for i in self.ids:
            self.start(i)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self.stop_all()
                await self.http.aclose()
        finally:
            assert self._nursery_scope is not None
            self._nursery_scope.cancel()
            await self._nursery_cm.__aexit__(None, None, None)

    # -- processes ---------------------------------------------------------------------------

    def start(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.running():
            node.start(self.root)
            self.paused.discard(node_id)

    def running(self, node_id: int) -> bool:
        return self.nodes[node_id].running()

    async def kill(self, node_id: int) -> None:
        """SIGKILL, and wait for the process to be gone."""
        proc = self.nodes[node_id].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(proc.wait)
        self.paused.discard(node_id)

    async def kill_all(self) -> None:
        """SIGKILL to every live node back to back (no await in between), then reap them."""
        procs = [n.proc for n in self.nodes.values() if n.proc is not None and n.running()]
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            await trio.to_thread.run_sync(proc.wait)
        self.paused.clear()

    async def wipe(self, node_id: int, *, joining: bool) -> None:
        """SIGKILL the node, empty its data directory (log, hard state, snapshots, uuid,
        cluster id: a replaced disk) and rewrite its file: a joining node's (its own entry
        ``role = 3``, ``status = 0``: it asks the members to add it and is promoted once
        caught up) or, with ``joining`` False, its original voter's file (a voter restarted
        with a wiped directory under its old id). Not restarted here."""
        await self.kill(node_id)
        node = self.nodes[node_id]
        shutil.rmtree(node.db_dir, ignore_errors=True)
        self.wipes += 1
        node.config_path.write_text(self.voter_configs[node_id])
        if joining:
            cfg = load_config(node.config_path)
            members = [
                attrs.evolve(p, role=ROLE_LEARNER, status=STATUS_JOINING) if p.id == node_id else p
                for p in cfg.cluster.initial_cluster
            ]
            cfg = attrs.evolve(cfg, cluster=attrs.evolve(cfg.cluster, initial_cluster=members))
            node.config_path.write_text(render_toml(cfg))

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """One admin request (``/members``...) on the health port of the first node that
        answers with something other than a transport error or a 503; returns the status
        (0 if none answered). The leader first (a follower forwards; the follower being
        removed may answer 504 for a removal that commits)."""
        leader = await self.leader()
        for i in sorted(self.ids, key=lambda n: n != leader):
            if not self.running(i) or i in self.paused:
                continue
            url = f"http://{HOST}:{self.nodes[i].health_port}{path}"
            try:
                response = await self.http.request(method, url, json=body, timeout=10.0)
            except httpx.HTTPError:
                continue
            if response.status_code != 503:
                return response.status_code
        return 0

    async def member_view(self, node_id: int) -> dict[str, Any] | None:
        """``GET /members`` of one node, or None."""
        if not self.running(node_id) or node_id in self.paused:
            return None
        url = f"http://{HOST}:{self.nodes[node_id].health_port}/members"
        try:
            response = await self.http.get(url)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        view: dict[str, Any] = json.loads(response.content)
        return view

    def pause(self, node_id: int) -> None:
        proc = self.nodes[node_id].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        proc = self.nodes[node_id].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self.paused.discard(node_id)

    def heal(self) -> None:
        """Every link healthy, every paused node resumed, every dead node restarted."""
        self.network.heal()
        for i in self.ids:
            self.resume(i)
            self.start(i)

    async def stop_all(self) -> None:
        for i in self.ids:
            self.resume(i)
        for node in self.nodes.values():
            node.terminate()
        for node in self.nodes.values():
            proc = node.proc
            if proc is None:
                continue
            with trio.move_on_after(EXIT_TIMEOUT_S):
                await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
            if proc.poll() is None:
                proc.kill()
                await trio.to_thread.run_sync(proc.wait)
            node.close()

    def snapshot_counts(self) -> dict[str, int]:
        """How many snapshots the nodes wrote, installed from a leader and restarted from, as
        their logs tell (so a campaign shows that snapshots happened during its faults)."""
        counts = dict.fromkeys(_SNAPSHOT_LINES, 0)
        for node in self.nodes.values():
            text = node.log_text()
            for kind, pattern in _SNAPSHOT_LINES.items():
                counts[kind] += len(pattern.findall(text))
        return counts

    def logs(self, tail_chars: int = 4000) -> str:
        return "\n".join(
            f"--- node {n.node_id} ---\n{n.log_text()[-tail_chars:]}" for n in self.nodes.values()
        )

    # -- HTTP ------------------------------------------------------------------------------

    def kv_url(self, node_id: int, path: str) -> str:
        return f"http://{HOST}:{self.nodes[node_id].port}{path}"

    def key_url(self, node_id: int, key: str, consistency: str) -> str:
        return self.kv_url(node_id, f"{key_path(key)}?consistency={consistency}")

    async def status(self, node_id: int) -> dict[str, Any] | None:
        """The node's ``/status``, or None if it does not answer in time."""
        if not self.running(node_id) or node_id in self.paused:
            return None
        url = f"http://{HOST}:{self.nodes[node_id].health_port}/status"
        try:
            response = await self.http.get(url)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        result: dict[str, Any] = json.loads(response.content)
        return result

    async def statuses(self) -> dict[int, dict[str, Any] | None]:
        return {i: await self.status(i) for i in self.ids}

    async def leader(self) -> int | None:
        """The node that says it leads in the highest term, if any answers so."""
        best: tuple[int, int] | None = None
        for i, st in (await self.statuses()).items():
            if st is not None and st["role"] == "leader" and (best is None or st["term"] > best[0]):
                best = (st["term"], i)
        return best[1] if best else None

    async def wait_for_leader(self, timeout_s: float) -> int:
        """Every node answers, agrees on one leader, and that node says it leads."""
        with trio.move_on_after(timeout_s):
            while True:
                self._check_exits()
                sts = await self.statuses()
                leaders = {st["leader_id"] if st else None for st in sts.values()}
                if len(leaders) == 1:
                    (leader,) = leaders
                    st = sts.get(leader) if isinstance(leader, int) else None
                    if isinstance(leader, int) and st is not None and st["role"] == "leader":
                        return leader
                await trio.sleep(POLL_INTERVAL_S)
        raise AssertionError(
            f"no leader agreed on by every node within {timeout_s:.0f} s: "
            f"{await self.statuses()}\n{self.logs()}"
        )

    async def wait_converged(self, keys: list[str], timeout_s: float) -> dict[str, str | None]:
        """Wait until every node has applied the same index and holds the same value for
        every key (eventual reads, bracketed by two equal status rounds); return the values."""
        last: object = None
        with trio.move_on_after(timeout_s):
            while True:
                self._check_exits()
                before = await self._applied_indexes()
                if before is not None:
                    views = {i: await self._eventual_view(i, keys) for i in self.ids}
                    after = await self._applied_indexes()
                    last = (before, views)
                    distinct = {json.dumps(v, sort_keys=True) for v in views.values()}
                    if after == before and None not in views.values() and len(distinct) == 1:
                        view = views[self.ids[0]]
                        assert view is not None
                        return view
                await trio.sleep(POLL_INTERVAL_S)
        raise AssertionError(
            f"nodes did not converge within {timeout_s:.0f} s; last look: {last}\n{self.logs()}"
        )

    async def _applied_indexes(self) -> tuple[int, int] | None:
        """(applied_index, commit_index) if every node reports the same pair, else None."""
        sts = await self.statuses()
        pairs = {(st["applied_index"], st["commit_index"]) if st else None for st in sts.values()}
        if len(pairs) != 1:
            return None
        (pair,) = pairs
        return pair

    async def _eventual_view(self, node_id: int, keys: list[str]) -> dict[str, str | None] | None:
        view: dict[str, str | None] = {}
        for key in keys:
            try:
                response = await self.http.get(self.key_url(node_id, key, "eventual"))
            except httpx.HTTPError:
                return None
            if response.status_code == 404:
                view[key] = None
            elif response.status_code == 200:
                view[key] = json.loads(response.content)["value"]
            else:
                return None
        return view

    def _check_exits(self) -> None:
        for node in self.nodes.values():
            proc = node.proc
            if proc is not None and proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                raise AssertionError(
                    f"node {node.node_id} exited with {proc.returncode}\n{self.logs()}"
                )
