"""``deploy/haproxy-tls.cfg``: HAProxy accepts it (``haproxy -c``), and, run in front of a
node whose KV port serves HTTPS, terminates the clients' TLS, re-encrypts to the node
(checking its certificate and name), probes the plain health port, and passes the client's
bearer token through."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import trustme

from tests.e2e.cluster import free_ports, key_path, running_cluster, wait_until
from tests.e2e.test_haproxy import HAPROXY, MISSION_LB_PORT, render_haproxy_config

TLS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy-tls.cfg"
TLS_LB_PORT = 8443
TOKEN = "w-5c0e7b2a9d4f1e8c6b3a"
START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


def write_certs(root: Path) -> trustme.CA:
    """``certs/ca.pem`` and ``certs/haproxy.pem`` (key and chain), as the file expects them,
    plus the node's ``node.crt``/``node.key``: one certificate naming every node-N and
    127.0.0.1, like ``make certs`` gives each node."""
    certs = root / "certs"
    certs.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("node-1", "node-2", "node-3", "localhost", "127.0.0.1")
    (certs / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (certs / "haproxy.pem").write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    (certs / "node.crt").write_bytes(cert.cert_chain_pems[0].bytes())
    (certs / "node.key").write_bytes(cert.private_key_pem.bytes())
    return ca


def test_haproxy_accepts_the_tls_file(tmp_path: Path) -> None:
    assert HAPROXY is not None
    write_certs(tmp_path)
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(TLS_CONFIG)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_tls_haproxy_in_front_of_a_tls_node(tmp_path: Path) -> None:
    assert HAPROXY is not None
    write_certs(tmp_path)
    certs = tmp_path / "certs"
    (tmp_path / "tokens").write_text(f"{TOKEN} write\n")
    settings = {
        "http.tls_certificate_path": str(certs / "node.crt"),
        "http.tls_private_key_path": str(certs / "node.key"),
        "auth.enable": True,
        "auth.tokens_path": str(tmp_path / "tokens"),
    }
    with running_cluster(tmp_path / "cluster", size=1, settings=settings) as cluster:
        node = cluster.nodes[0]
        # /status needs an admin token here; /primary stays open for probes.
        wait_until(
            lambda: node.status_code(node.health, "/primary") == 200 or None,
            START_TIMEOUT_S,
            "the node to lead",
        )
        lb_port, stats_port, *absent = free_ports(6)
        text = TLS_CONFIG.read_text().replace(
            f"127.0.0.1:{TLS_LB_PORT}", f"127.0.0.1:{MISSION_LB_PORT}"
        )
        nodes = [(node.port, node.health_port), (absent[0], absent[1]), (absent[2], absent[3])]
        config = tmp_path / "haproxy.cfg"
        config.write_text(render_haproxy_config(text, lb_port, stats_port, nodes))
        log_path = tmp_path / "haproxy.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [HAPROXY, "-f", str(config), "-db"],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            client = httpx.Client(
                base_url=f"https://127.0.0.1:{lb_port}",
                verify=ssl.create_default_context(cafile=str(certs / "ca.pem")),
                timeout=10,
                trust_env=False,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )

            def written() -> bool | None:
                assert proc.poll() is None, log_path.read_text()
                try:
                    response = client.post("/kv", json={"key": "lb", "value": "tls"})
                except httpx.TransportError:
                    return None
                return response.status_code == 200 or None

            wait_until(written, START_TIMEOUT_S, "a write through HAProxy over TLS")
            assert client.get(key_path("lb")).json() == {"value": "tls"}
            # The token went through HAProxy to the node: without it the node says 401.
            anonymous = client.get(key_path("lb"), headers={"Authorization": ""})
            assert anonymous.status_code == 401
            assert anonymous.json()["error"] == "unauthorized"
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
