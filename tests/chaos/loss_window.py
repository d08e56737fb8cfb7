"""Acknowledged writes lost when every node dies at once, measured.

A round: writers put unique keys (key = value) through the leader as fast as it takes them;
after ``load_s`` every node gets SIGKILL back to back; optionally a power cut is imitated
(``fsync_probe.power_cut``: every WAL segment cut back to its last fsync); the nodes restart,
and every acknowledged key is read back linearizably. Lost = acknowledged keys that are gone.

The window is reported as the age, at the kill, of the oldest acknowledged write that was lost:
every write lost had been acknowledged at most that long before the nodes died.
"""

from __future__ import annotations

import json
import time

import attrs
import httpx
import trio

from .cluster import ChaosCluster
from .workload import CLIENT_TIMEOUT_S

__all__ = ["LossRound", "measure_round"]

RESTART_TIMEOUT_S = 90.0
READERS = 16


@attrs.define
class LossRound:
    durability: str
    fault: str  # "SIGKILL all" or "SIGKILL all + power cut"
    acknowledged: int = 0
    lost: int = 0
    unknown: int = 0
    unknown_applied: int = 0
    acknowledged_last_100ms: int = 0
    """Writes acknowledged in the 100 ms before the kill: the ones a 20 ms window can reach."""
    window_ms: float = 0.0
    """Age at the kill of the oldest lost acknowledged write (0 when none was lost)."""
    bytes_cut: int = 0
    writes_per_s: float = 0.0

    def line(self) -> str:
        return (
            f"{self.durability:<9} {self.fault:<24} acknowledged {self.acknowledged:>5} "
            f"({self.writes_per_s:.0f}/s, {self.acknowledged_last_100ms} in the last 100 ms), "
            f"lost {self.lost}, window {self.window_ms:.0f} ms, unknown {self.unknown} "
            f"({self.unknown_applied} applied), WAL bytes cut {self.bytes_cut}"
        )


async def measure_round(
    cluster: ChaosCluster,
    round_no: int,
    *,
    power_cut: bool,
    writers: int = 8,
    load_s: float = 2.0,
) -> LossRound:
    """One round on a running ``cluster`` (started with ``probe_fsync=True`` for a power cut)."""
    fault = "SIGKILL all + power cut" if power_cut else "SIGKILL all"
    result = LossRound(cluster.durability, fault)
    leader = await cluster.wait_for_leader(RESTART_TIMEOUT_S)
    acked: dict[str, float] = {}  # key -> when its 200 arrived
    unknown: list[str] = []
    stopping = False

    async def writer(w: int) -> None:
        n = 0
        async with httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_S) as http:
            while not stopping:
                n += 1
                key = f"r{round_no}.w{w}.{n}"
                try:
                    response = await http.post(
                        cluster.kv_url(leader, "/kv"), json={"key": key, "value": key}
                    )
                except httpx.ConnectError:
                    continue
                except httpx.HTTPError:
                    unknown.append(key)
                    continue
                if response.status_code == 200:
                    acked[key] = time.monotonic()
                elif response.status_code >= 500:
                    unknown.append(key)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)
        # The load's duration is what is being measured under, not a wait for anything.
        await trio.sleep(load_s)
        killed_at = time.monotonic()
        await cluster.kill_all()
        stopping = True
    result.writes_per_s = sum(t <= killed_at for t in acked.values()) / (killed_at - started)
    if power_cut:
        for node in cluster.nodes.values():
            result.bytes_cut += node.power_cut()
    for i in cluster.ids:
        cluster.start(i)
    await cluster.wait_for_leader(RESTART_TIMEOUT_S)

    present = await _read_back(cluster, list(acked) + unknown)
    lost = [k for k in acked if not present[k]]
    result.acknowledged = len(acked)
    result.acknowledged_last_100ms = sum(t >= killed_at - 0.1 for t in acked.values())
    result.lost = len(lost)
    result.window_ms = max(((killed_at - acked[k]) * 1000 for k in lost), default=0.0)
    result.unknown = len(unknown)
    result.unknown_applied = sum(present[k] for k in unknown)
    return result


async def _read_back(cluster: ChaosCluster, keys: list[str]) -> dict[str, bool]:
    """Linearizable reads of ``keys`` (each must answer 200 or 404, retried until then)."""
    present: dict[str, bool] = {}
    send, receive = trio.open_memory_channel[str](len(keys) or 1)
    for key in keys:
        send.send_nowait(key)
    send.close()

    async def reader() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_S) as http:
            async for key in receive:
                node = 0
                while True:
                    node = node % len(cluster.ids) + 1
                    try:
                        response = await http.get(cluster.key_url(node, key, "linearizable"))
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        value = json.loads(response.content)["value"]
                        assert value == key, f"{key} holds {value!r}"
                        present[key] = True
                        break
                    if response is not None and response.status_code == 404:
                        present[key] = False
                        break
                    await trio.sleep(0.05)  # leadership may still be settling: retry soon

    with trio.fail_after(RESTART_TIMEOUT_S + len(keys) * 0.05):
        async with trio.open_nursery() as nursery:
            for _ in range(READERS):
                nursery.start_soon(reader)
    return present
