"""HTTPS on the KV port (and, when asked, the health port) of a real node process.

Certificates come from ``trustme`` (a throwaway CA per test module): real X.509 chains that
Python's ``ssl`` verifies, made in memory in milliseconds, with no openssl command line. The
node is ``python -m dengine_trio`` with ``[http] tls_*`` keys naming those files.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.e2e.cluster import Cluster, Node, key_path, run_cli, running_cluster, wait_until

START_TIMEOUT_S = 60.0


class Pki:
    """A CA, the node's server certificate (``127.0.0.1``, ``localhost``) and a client
    certificate, as PEM files under ``root``; plus a second CA nobody trusts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("client@example.test")
        self.ca_path = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.cert_path = self._write("node.crt", server.cert_chain_pems[0].bytes())
        self.key_path = self._write("node.key", server.private_key_pem.bytes())
        self.client_path = self._write("client.pem", client.private_key_and_cert_chain_pem.bytes())
        stranger = trustme.CA().issue_cert("client@elsewhere.test")
        self.stranger_path = self._write(
            "stranger.pem", stranger.private_key_and_cert_chain_pem.bytes()
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def context(self, client_cert: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert))
        return context

    def settings(self, **extra: object) -> dict[str, object]:
        return {
            "http.tls_certificate_path": str(self.cert_path),
            "http.tls_private_key_path": str(self.key_path),
            **{f"http.{k}": v for k, v in extra.items()},
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def https(port: int, context: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10, trust_env=False
    )


def wait_serving(cluster: Cluster, client: httpx.Client) -> None:
    """Until the one node leads and answers over ``client`` (its health port)."""
    node = cluster.nodes[0]

    def primary() -> bool | None:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"node exited with {node.proc.returncode}\n{cluster.logs()}")
        try:
            return client.get("/primary").status_code == 200 or None
        except httpx.TransportError:
            return None

    wait_until(primary, START_TIMEOUT_S, "the node to lead")


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("https")
    with running_cluster(root, size=1, settings=pki.settings()) as cluster:
        wait_serving(cluster, cluster.nodes[0].health)  # the health port stays plain
        yield cluster.nodes[0]


def test_kv_over_https(tls_node: Node, pki: Pki) -> None:
    with https(tls_node.port, pki.context()) as kv:
        response = kv.post("/kv", json={"key": "k", "value": "v"})
        assert response.status_code == 200, response.text
        assert kv.get(key_path("k")).json() == {"value": "v"}
        assert kv.delete(key_path("k")).status_code == 200
        assert kv.get(key_path("k")).status_code == 404
        # No client certificate is asked for without tls_client_ca_path.
        assert kv.get(key_path("k")).extensions["http_version"] == b"HTTP/1.1"


def test_kv_port_refuses_plain_http(tls_node: Node) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_node.port}/kv/x", timeout=10, trust_env=False)


def test_kv_port_is_refused_by_a_client_not_trusting_its_ca(tls_node: Node) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{tls_node.port}/kv/x", timeout=10, trust_env=False)


def test_health_port_stays_plain_by_default(tls_node: Node) -> None:
    assert tls_node.health.get("/primary").status_code == 200
    assert tls_node.health.get("/status").json()["node_id"] == 1


def test_tls_handshake_negotiates_http11_and_tls12_or_later(tls_node: Node, pki: Pki) -> None:
    context = pki.context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", tls_node.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"  # h2 is not offered
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_client_certificate_required(tmp_path: Path, pki: Pki) -> None:
    settings = pki.settings(tls_client_ca_path=str(pki.ca_path), tls_require_client_cert=True)
    with running_cluster(tmp_path, size=1, settings=settings) as cluster:
        node = cluster.nodes[0]
        wait_serving(cluster, node.health)
        with https(node.port, pki.context(pki.client_path)) as kv:
            assert kv.post("/kv", json={"key": "a", "value": "1"}).status_code == 200
            assert kv.get(key_path("a")).json() == {"value": "1"}
        for cert in (None, pki.stranger_path):  # no certificate; one from another CA
            with https(node.port, pki.context(cert)) as kv, pytest.raises(httpx.TransportError):
                kv.get(key_path("a"))
        # The refused handshakes cost the node nothing.
        with https(node.port, pki.context(pki.client_path)) as kv:
            assert kv.get(key_path("a")).status_code == 200


def test_health_port_over_tls_when_asked(tmp_path: Path, pki: Pki) -> None:
    with running_cluster(tmp_path, size=1, settings=pki.settings(health_tls=True)) as cluster:
        node = cluster.nodes[0]
        with https(node.health_port, pki.context()) as health:
            wait_serving(cluster, health)
            assert health.get("/status").json()["node_id"] == 1
        with pytest.raises(httpx.TransportError):
            node.health.get("/primary")
        assert "health API on https://" in node.log_text()
        save = ["snapshot", "save", str(tmp_path / "b.snap"),
                "--endpoint", f"https://127.0.0.1:{node.health_port}"]  # fmt: skip
        saved = run_cli([*save, "--cacert", str(pki.ca_path)], tmp_path)
        assert saved.returncode == 0 and saved.stdout.startswith("saved "), saved.stderr
        untrusted = run_cli(save, tmp_path)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"tls_certificate_path": "node.crt"}, "http.tls_private_key_path", "must be set too"),
        ({"health_tls": True}, "http.health_tls", "needs http.tls_certificate_path"),
        (
            {"tls_certificate_path": "node.crt", "tls_private_key_path": "missing.key"},
            "http.tls_private_key_path",
            "no such file",
        ),
        (
            {"tls_certificate_path": "node.crt", "tls_private_key_path": "ca.pem"},
            "http.tls_private_key_path",
            "cannot load certificate",
        ),
        (
            {
                "tls_certificate_path": "node.crt",
                "tls_private_key_path": "node.key",
                "tls_require_client_cert": True,
            },
            "http.tls_client_ca_path",
            "must be set",
        ),
    ],
)
def test_tls_config_errors_are_one_line_exit_2(
    tmp_path: Path, pki: Pki, settings: dict[str, object], key: str, problem: str
) -> None:
    for name in ("ca.pem", "node.crt", "node.key"):
        (tmp_path / name).write_bytes((pki.root / name).read_bytes())
    config = tmp_path / "n1.toml"
    lines = [f"{k} = {'true' if v is True else repr(v).replace(chr(39), chr(34))}"
             for k, v in settings.items()]  # fmt: skip
    config.write_text(
        '[cluster]\nnode_id = 1\nlisten_address = "127.0.0.1:9"\n'
        'initial_cluster = [{ id = 1, address = "127.0.0.1:9", role = 1, status = 2 }]\n'
        'db_root_dir = "db"\n\n[http]\n' + "\n".join(lines) + "\n"
    )
    result = run_cli(["--config-path", str(config)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"n1.toml: {key}: " in result.stderr and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_ctl_tools_over_https_with_cacert(tls_node: Node, pki: Pki, tmp_path: Path) -> None:
    kv = ["kv", "--endpoints", f"https://127.0.0.1:{tls_node.port}"]
    put = run_cli([*kv, "put", "c", "1", "--cacert", str(pki.ca_path)], tmp_path)
    assert put.returncode == 0, put.stderr
    get = run_cli([*kv, "get", "c"], tmp_path, {"DENGINE_CACERT": str(pki.ca_path)})
    assert (get.returncode, get.stdout) == (0, "1\n"), get.stderr
    untrusted = run_cli([*kv, "get", "c", "--timeout", "1"], tmp_path)
    assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    bad = run_cli([*kv, "get", "c", "--cacert", str(tmp_path / "none.pem")], tmp_path)
    assert bad.returncode == 2 and "--cacert" in bad.stderr and bad.stderr.count("\n") == 1


def test_optional_client_certificate_is_checked_when_sent(tmp_path: Path, pki: Pki) -> None:
    settings = pki.settings(tls_client_ca_path=str(pki.ca_path), health_tls=True)
    with running_cluster(tmp_path, size=1, settings=settings) as cluster:
        node = cluster.nodes[0]
        with https(node.health_port, pki.context()) as health:
            wait_serving(cluster, health)  # no certificate: served (optional)
        for port in (node.port, node.health_port):
            with https(port, pki.context(pki.client_path)) as client:
                assert client.get(
                    "/primary" if port == node.health_port else "/kv/a"
                ).status_code in (200, 404)
            with https(port, pki.context(pki.stranger_path)) as client:
                with pytest.raises(httpx.TransportError):
                    client.get("/primary")
