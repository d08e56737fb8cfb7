"""The mission's flows through a real HAProxy running ``deploy/haproxy.cfg``.

HAProxy runs the shipped file itself with only its addresses moved to free ports
(:func:`render_haproxy_config`), so what is tested is what is shipped. The helpers here
(rendering, :class:`HAProxy`, :func:`lb_cluster`) are also what ``bench/failover.py`` runs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.e2e.cluster import (
    EXIT_TIMEOUT_S,
    START_TIMEOUT_S,
    Cluster,
    Node,
    free_ports,
    key_path,
    running_cluster,
    wait_until,
)
from tests.e2e.test_http_connections import burst_of_posts

# Debian puts it in /usr/sbin, which is not on every user's PATH.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin")
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
MISSION_LB_PORT = 8080
MISSION_STATS_PORT = 8404
MISSION_NODES = ((8081, 10001), (8082, 10002), (8083, 10003))
"""(KV port, health port) of nodes 1-3 in the shipped file."""
FAILOVER_TIMEOUT_S = 30.0
WRITES_AFTER_KILL = 20

_LOOPBACK_ADDRESS = re.compile(r"\b127\.0\.0\.1:(\d+)\b")
_CHECK_PORT = re.compile(r"\bport (\d+)\b")


def render_haproxy_config(
    text: str, lb_port: int, stats_port: int, nodes: Sequence[tuple[int, int]]
) -> str:
    """``text`` (the shipped file) with its listen and server ports moved.

    ``nodes`` are the (KV port, health port) of nodes 1..3. Every port of the shipped file
    must be one of the mission's and every one of those must occur, so the rendered file
    cannot silently keep a port or miss a server.
    """
    if len(nodes) != len(MISSION_NODES):
        raise ValueError(f"the shipped file has {len(MISSION_NODES)} nodes, got {len(nodes)}")
    pairs = list(zip(MISSION_NODES, nodes, strict=True))
    address_ports = {MISSION_LB_PORT: lb_port, MISSION_STATS_PORT: stats_port}
    address_ports.update({old[0]: new[0] for old, new in pairs})
    check_ports = {old[1]: new[1] for old, new in pairs}

    def substitute(pattern: re.Pattern[str], ports: Mapping[int, int], text: str) -> str:
        seen: set[int] = set()

        def replace(match: re.Match[str]) -> str:
            old = int(match.group(1))
            if old not in ports:
                raise ValueError(f"unexpected port {old} in {match.group(0)!r}")
            seen.add(old)
            return match.group(0).replace(match.group(1), str(ports[old]))

        rendered = pattern.sub(replace, text)
        if missing := set(ports) - seen:
            raise ValueError(f"ports {sorted(missing)} do not occur in the file")
        return rendered

    text = substitute(_LOOPBACK_ADDRESS, address_ports, text)
    return substitute(_CHECK_PORT, check_ports, text)


class HAProxy:
    """One ``haproxy -f <file> -db`` process and its stats page, for a rendered config."""

    def __init__(self, root: Path, nodes: Sequence[Node], port: int = 0) -> None:
        """``port``: where clients connect (0: a free one)."""
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed")
        free = free_ports(2)
        self.port, self.stats_port = port or free[0], free[1]
        self.config_path = root / "haproxy.cfg"
        self.config_path.write_text(
            render_haproxy_config(
                SHIPPED_CONFIG.read_text(),
                self.port,
                self.stats_port,
                [(n.port, n.health_port) for n in nodes],
            )
        )
        self.log_path = root / "haproxy.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stats = httpx.Client(
            base_url=f"http://127.0.0.1:{self.stats_port}", timeout=5, trust_env=False
        )

    def start(self) -> None:
        assert HAPROXY is not None
        self.proc = subprocess.Popen(
            [HAPROXY, "-f", str(self.config_path), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._copy_output, args=(self.proc.stdout,), daemon=True).start()

    def _copy_output(self, output: IO[bytes]) -> None:
        """Each line of HAProxy's output into the log, after the wall-clock time it came."""
        with open(self.log_path, "ab") as log, output:
            for line in output:
                log.write(f"{time.time():.6f} ".encode() + line)
                log.flush()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def server_states(self) -> dict[str, dict[str, bool]] | None:
        """{backend: {server: UP?}} as HAProxy sees it now, or None if it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"haproxy is not running\n{self.log_text()}")
        try:
            response = self._stats.get("/stats;csv")
        except httpx.TransportError:
            return None
        states: dict[str, dict[str, bool]] = {}
        # The header row starts with "# pxname": drop the "# " so DictReader keys are names.
        for row in csv.DictReader(io.StringIO(response.text.removeprefix("# "))):
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                states.setdefault(row["pxname"], {})[row["svname"]] = row["status"] == "UP"
        return states

    def wait_for_routes(self, leader: Node, followers: Sequence[Node], timeout_s: float) -> None:
        """Until writes go only to ``leader`` and reads to it and exactly ``followers``."""
        expected_write = {f"n{n.node_id}": n is leader for n in (leader, *followers)}
        expected_read = {f"n{leader.node_id}_primary": True, f"n{leader.node_id}_replica": False}
        for node in followers:
            expected_read |= {f"n{node.node_id}_primary": False, f"n{node.node_id}_replica": True}

        def routed() -> bool:
            states = self.server_states()
            if states is None:
                return False
            write, read = states["kv_write"], states["kv_read"]
            return all(write[s] == up for s, up in expected_write.items()) and all(
                read[s] == up for s, up in expected_read.items()
            )

        try:
            wait_until(routed, timeout_s, "HAProxy to route writes to the leader only")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.server_states()}\n{self.log_text()}") from None

    def stop(self) -> None:
        self._stats.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def lb_cluster(root: Path, lb_port: int = 0) -> Iterator[tuple[Cluster, HAProxy]]:
    """Three started nodes and HAProxy in front of them, both stopped on the way out."""
    with running_cluster(root) as cluster:
        lb = HAProxy(root, cluster.nodes, lb_port)
        try:
            lb.start()
            yield cluster, lb
        finally:
            lb.stop()


def lb_client(lb: HAProxy) -> httpx.Client:
    # trust_env=False: a proxy from the environment must not sit between test and HAProxy.
    return httpx.Client(base_url=lb.url, timeout=15, trust_env=False)


pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (sudo apt-get install haproxy; .ci/run installs it)",
)


def test_rendering_moves_every_port_of_the_shipped_file_and_nothing_else() -> None:
    shipped = SHIPPED_CONFIG.read_text()
    assert render_haproxy_config(shipped, 8080, 8404, MISSION_NODES) == shipped

    nodes = [(18081, 20001), (18082, 20002), (18083, 20003)]
    rendered = render_haproxy_config(shipped, 18080, 18404, nodes)
    assert "bind 127.0.0.1:18080" in rendered
    assert "bind 127.0.0.1:18404" in rendered
    for node_id, (port, health_port) in enumerate(nodes, start=1):
        assert f"server n{node_id} 127.0.0.1:{port} check port {health_port}" in rendered
        assert f"server n{node_id}_replica 127.0.0.1:{port} check port {health_port}" in rendered
    for old in (8080, 8404, 8081, 8082, 8083, 10001, 10002, 10003):
        assert not re.search(rf"\b{old}\b", rendered.split("\nglobal", 1)[1]), old
    # Everything but the ports is the shipped text.
    assert re.sub(r"\d+", "N", rendered) == re.sub(r"\d+", "N", shipped)

    with pytest.raises(ValueError, match="9999"):
        render_haproxy_config(shipped + "server x 127.0.0.1:9999\n", 1, 2, nodes)


def backend_lines(text: str, name: str) -> list[str]:
    """The directive lines of ``backend name`` in an HAProxy file, comments left out."""
    section = re.search(rf"^backend {name}\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert section is not None, name
    lines = (line.split("#", 1)[0].strip() for line in section.group(1).splitlines())
    return [line for line in lines if line]


def test_writes_are_retried_only_when_never_sent_and_never_over_a_kept_connection() -> None:
    shipped = SHIPPED_CONFIG.read_text()
    write = backend_lines(shipped, "kv_write")
    # A resent write could apply twice: only failed connects (nothing sent) may be retried.
    assert [line for line in write if line.startswith("retry-on")] == ["retry-on conn-failure"]
    assert "option httpchk GET /primary" in write
    read = backend_lines(shipped, "kv_read")
    assert "option httpchk GET /replica" in read
    # A stopping node would leave a request on a kept-alive connection unanswered for 1 s.
    assert "option http-server-close" in shipped


def test_haproxy_accepts_the_shipped_file() -> None:
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(SHIPPED_CONFIG)],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mission_flows_through_the_load_balancer(tmp_path: Path) -> None:
    with lb_cluster(tmp_path) as (cluster, lb), lb_client(lb) as client:
        leader = cluster.wait_for_leader()
        # Writes to the leader alone; reads to the leader (/primary) and both followers
        # (/replica): the two health checks of the shipped file, as HAProxy applies them.
        lb.wait_for_routes(leader, cluster.followers(leader), START_TIMEOUT_S)

        response = client.post("/kv", json={"key": "username", "value": "alice"})
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["index"]  # the write's log index (issue 17)
        # Round-robin over three servers: six reads visit each node twice.
        for _ in range(6):
            response = client.get(key_path("username"), params={"consistency": "linearizable"})
            assert response.status_code == 200, response.text
            assert response.json() == {"value": "alice"}
        # The default policy (LeaseRead) as the mission's curl uses it.
        assert client.get(key_path("username")).json() == {"value": "alice"}
        for node in cluster.nodes:
            # Replicated to every node, not just stored where HAProxy sent the write.
            response = node.kv.get(key_path("username"), params={"consistency": "linearizable"})
            assert response.json() == {"value": "alice"}

        response = client.delete(key_path("username"))
        assert response.status_code == 200, response.text
        for _ in range(3):
            response = client.get(key_path("username"), params={"consistency": "linearizable"})
            assert response.status_code == 404, response.text
            assert response.json()["value"] is None


class Writer(threading.Thread):
    """Writes distinct keys through the load balancer until stopped; remembers what was acked."""

    def __init__(self, lb: HAProxy) -> None:
        super().__init__(daemon=True)
        self.client = lb_client(lb)
        self.acked: dict[str, str] = {}
        self.failures = 0
        self.stopping = threading.Event()
        self.progress = threading.Condition()

    def run(self) -> None:
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            key, value = f"w{seq}", f"value {seq}"
            try:
                response = self.client.post("/kv", json={"key": key, "value": value})
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                with self.progress:
                    self.acked[key] = value
                    self.progress.notify_all()
            else:
                # 502/503/504 or a dropped connection: the write may or may not have applied,
                # so it is not counted, and the next one uses a new key.
                self.failures += 1
                self.stopping.wait(0.01)

    def wait_for_acks(self, count: int, timeout_s: float) -> None:
        with self.progress:
            if not self.progress.wait_for(lambda: len(self.acked) >= count, timeout_s):
                raise AssertionError(
                    f"only {len(self.acked)} of {count} writes acknowledged in {timeout_s} s "
                    f"({self.failures} failed)"
                )

    def stop(self) -> None:
        self.stopping.set()
        self.join(EXIT_TIMEOUT_S)
        self.client.close()


def test_writes_resume_through_the_load_balancer_after_the_leader_is_killed(
    tmp_path: Path,
) -> None:
    with lb_cluster(tmp_path) as (cluster, lb):
        leader = cluster.wait_for_leader()
        lb.wait_for_routes(leader, cluster.followers(leader), START_TIMEOUT_S)
        writer = Writer(lb)
        writer.start()
        try:
            writer.wait_for_acks(WRITES_AFTER_KILL, FAILOVER_TIMEOUT_S)
            leader.kill()  # SIGKILL: no hand-over, writes in flight are cut off
            acked_at_kill = len(writer.acked)
            writer.wait_for_acks(acked_at_kill + WRITES_AFTER_KILL, FAILOVER_TIMEOUT_S)
        finally:
            writer.stop()
        # Writes resumed through HAProxy: so a new leader exists and HAProxy routes to it.
        new_leader = cluster.wait_for_leader(FAILOVER_TIMEOUT_S)
        assert new_leader is not leader
        (follower,) = cluster.followers(new_leader)
        with lb_client(lb) as client:
            for key, value in writer.acked.items():
                response = client.get(key_path(key), params={"consistency": "linearizable"})
                assert response.status_code == 200, (key, response.text, cluster.logs())
                assert response.json() == {"value": value}, key
        states = lb.server_states()
        assert states is not None
        assert not states["kv_write"][f"n{leader.node_id}"]
        assert not states["kv_read"][f"n{leader.node_id}_replica"]
        lb.wait_for_routes(new_leader, [follower], FAILOVER_TIMEOUT_S)


LB_BURST_WRITES = 600


def test_a_burst_of_writes_through_the_load_balancer_is_queued_not_refused(
    tmp_path: Path,
) -> None:
    with lb_cluster(tmp_path) as (cluster, lb):
        leader = cluster.wait_for_leader()
        lb.wait_for_routes(leader, cluster.followers(leader), START_TIMEOUT_S)
        outcomes = burst_of_posts(lb.port, LB_BURST_WRITES)
        assert outcomes == Counter({200: LB_BURST_WRITES}), (outcomes, lb.log_text()[-2000:])


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_load_balancers_own_errors_are_json_like_the_nodes(tmp_path: Path, method: str) -> None:
    # Nodes configured but never started: HAProxy has no server to send to and answers itself.
    cluster = Cluster(tmp_path)
    lb = HAProxy(tmp_path, cluster.nodes)
    try:
        lb.start()
        with lb_client(lb) as client:
            response = wait_until(
                lambda: _answer(client, method), START_TIMEOUT_S, "HAProxy to answer"
            )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json"), response.text
        body = response.json()
        assert set(body) == {"error", "message"}, body
        assert body["error"] == "no_server", body
        assert "Retry-After" in response.headers
    finally:
        lb.stop()


def _answer(client: httpx.Client, method: str) -> httpx.Response | None:
    try:
        if method == "POST":
            return client.post("/kv", json={"key": "k", "value": "v"})
        return client.get(key_path("k"))
    except httpx.TransportError:  # HAProxy not listening yet
        return None


def test_every_error_haproxy_can_answer_itself_is_a_json_body_in_the_nodes_shape() -> None:
    shipped = SHIPPED_CONFIG.read_text()
    lines = [
        line.strip() for line in shipped.splitlines() if line.strip().startswith("http-error ")
    ]
    statuses = set()
    for line in lines:
        match = re.fullmatch(
            r"http-error status (\d+) content-type application/json (?:hdr \S+ \S+ )?string '(.*)'",
            line,
        )
        assert match, line
        statuses.add(int(match.group(1)))
        body = json.loads(match.group(2))
        assert set(body) == {"error", "message"}, line
        assert re.fullmatch(r"[a-z_]+", body["error"]), line
    # What HAProxy itself may answer in this setup: no server or queue full, a node's bad or
    # missing answer, its timeout, an unparsable or too slow request, an internal error.
    assert statuses == {400, 408, 500, 502, 503, 504}
