"""Peer TLS on the Raft port, with real certificates made in-process by ``trustme``.

A TLS cluster of three engines forms and replicates; a plain-TCP caller, one with a
certificate from another CA and one whose certificate names another node are each refused
at the handshake (logged once) while the cluster keeps committing; the dialer refuses a
listener whose certificate names another node; a silent or stalled TLS handshake is dropped
after the bound; garbage after a good TLS handshake closes that connection only.
"""

from __future__ import annotations

import logging
import ssl
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

import dengine_trio.runtime.inbound as inbound_module
from dengine_trio.config import NodeConfig, TlsConfig
from dengine_trio.runtime.tls import PeerTls, load_peer_tls
from dengine_trio.wire import (
    PROTOCOL_VERSION,
    FrameReader,
    Hello,
    HelloReply,
    decode,
    encode,
    encode_frame,
)

from .cluster import free_ports, wait_until, write_configs
from .test_engine_cluster import start_all, wait_leader
from .test_transport import CLUSTER, WAIT_S, Node, garbage, hb, heartbeat
from .wire_helpers import read_until_closed

HOSTS = ("localhost", "127.0.0.1")


def write_node_files(ca: trustme.CA, root: Path, name: str, *names: str) -> dict[str, str]:
    """CA, certificate and key PEM files for a node whose certificate carries DNS ``name``
    (plus ``names`` and the loopback names); returns load_peer_tls's path arguments."""
    root.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(name, *names, *HOSTS)
    paths = {
        "ca_path": str(root / "ca.pem"),
        "cert_path": str(root / f"{name}.pem"),
        "key_path": str(root / f"{name}-key.pem"),
    }
    ca.cert_pem.write_to_path(paths["ca_path"])
    cert.cert_chain_pems[0].write_to_path(paths["cert_path"])
    cert.private_key_pem.write_to_path(paths["key_path"])
    return paths


def peer_tls(ca: trustme.CA, root: Path, node_id: int, name: str = "") -> PeerTls:
    paths = write_node_files(ca, root / f"n{node_id}", name or f"node-{node_id}")
    return load_peer_tls(**paths, mutual=True)


def tls_config(ca: trustme.CA, root: Path, node_id: int) -> TlsConfig:
    paths = write_node_files(ca, root / f"n{node_id}", f"node-{node_id}")
    return TlsConfig(
        enable_tls=True,
        enable_mtls=True,
        certificate_authority_root_path=paths["ca_path"],
        server_certificate_path=paths["cert_path"],
        server_private_key_path=paths["key_path"],
    )


def client_context(trusted: trustme.CA, issuer: trustme.CA, name: str) -> ssl.SSLContext:
    """A caller trusting ``trusted`` and presenting a certificate from ``issuer`` naming
    ``name``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trusted.configure_trust(context)
    issuer.issue_cert(name, *HOSTS).configure_cert(context)
    return context


async def try_hello(port: int, context: ssl.SSLContext | None, hello: Hello) -> list[object]:
    """Connect (over TLS with ``context``), send ``hello`` and return what the node sent
    back, decoded, until it hung up."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = tcp
    if context is not None:
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    async with stream:
        try:
            await stream.send_all(encode_frame(encode(hello)))
        except trio.BrokenResourceError:
            return []  # refused during the TLS handshake
        received = await read_until_closed(stream)  # type: ignore[arg-type]
    return [decode(payload) for payload in FrameReader().feed(received)]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_a_tls_cluster_forms_replicates_and_refuses_impostors_while_serving(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dengine_trio.transport")
    configs: list[NodeConfig] = [
        attrs.evolve(cfg, tls=tls_config(ca, tmp_path / "certs", cfg.cluster.node_id))
        for cfg in write_configs(tmp_path)
    ]
    port_1 = configs[0].listen_host_port()[1]
    other_ca = trustme.CA()
    impostors: dict[str, tuple[ssl.SSLContext | None, str]] = {
        "plain TCP": (None, "WRONG_VERSION_NUMBER"),
        "another CA": (client_context(ca, other_ca, "node-2"), "certificate verify failed"),
        "names node 3": (client_context(ca, ca, "node-3"), "not 'node-2'"),
    }
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await wait_leader(engines)
        await engines[leader].client().put(b"before", b"1")
        cluster_id = configs[0].cluster_id()
        for seq, (what, (context, problem)) in enumerate(impostors.items()):
            for attempt in range(3):
                hello = Hello(cluster_id, 2, 1, PROTOCOL_VERSION, 1000 + seq)
                with trio.fail_after(WAIT_S):
                    answers = await try_hello(port_1, context, hello)
                assert not any(isinstance(a, HelloReply) and a.ok for a in answers), what
                key = f"{what} {attempt}".encode()
                await engines[leader].client().put(key, b"committed")
                assert await engines[1].client().get_linearizable(key) == b"committed"
            warned = [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING
                and "node 1: TLS: refused connection from" in r.getMessage()
                and problem in r.getMessage()
            ]
            assert len(warned) == 1, (what, [r.getMessage() for r in caplog.records])
        with trio.fail_after(WAIT_S):
            for engine in engines.values():
                while await engine.client().get_eventual(b"names node 3 2") != b"committed":
                    await trio.sleep(0.01)
        assert engines[1].node_status(detail=True).transport["connections_refused"] >= 9


async def test_the_dialer_refuses_a_listener_whose_certificate_names_another_node(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a = Node(1, ports, tls=peer_tls(ca, tmp_path, 1))
    b = Node(2, ports, tls=peer_tls(ca, tmp_path, 2, name="node-3"))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            await wait_until(lambda: a.transport.stats.peers[2].connect_failures >= 3)
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 0
    refused = [
        r for r in caplog.records if "node 1: TLS: refused the link to peer 2" in r.getMessage()
    ]
    assert len(refused) == 1
    assert "not 'node-2'" in refused[0].getMessage()
    assert b.inbox == []


async def test_a_tls_transport_carries_messages_both_ways(tmp_path: Path, ca: trustme.CA) -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    a = Node(1, ports, tls=peer_tls(ca, tmp_path, 1))
    b = Node(2, ports, tls=peer_tls(ca, tmp_path, 2))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            for seq in range(200):
                a.transport.send(hb(1, 2, seq))
                b.transport.send(hb(2, 1, seq))
            await b.wait_for(heartbeat(1, 199))
            await a.wait_for(heartbeat(2, 199))
            nursery.cancel_scope.cancel()
    assert [m.seq for m in b.inbox] == list(range(200))  # type: ignore[attr-defined]
    assert a.transport.stats.peers[2].connects == 1


@pytest.mark.parametrize(
    ("tls", "prefix", "logged"),
    [
        (True, b"", "no TLS handshake within 0.3 s"),
        (True, b"\x16\x03\x01\x02\x00\x01", "no TLS handshake within 0.3 s"),
        (False, b"", "no Hello within 0.3 s"),
        (False, b"\x00\x00\x00\x40\x01", "no Hello within 0.3 s"),
    ],
    ids=["tls-silent", "tls-stalled", "plain-silent", "plain-stalled"],
)
async def test_a_silent_or_stalled_handshake_is_dropped_after_the_bound(
    tmp_path: Path,
    ca: trustme.CA,
    tls: bool,
    prefix: bytes,
    logged: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Says nothing, or the first bytes of a ClientHello (or of a Hello frame) and then
    nothing: dropped, and the node's own link keeps working."""
    monkeypatch.setattr(inbound_module, "HANDSHAKE_TIMEOUT_S", 0.3)
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    options: list[dict[str, Any]] = [
        {"tls": peer_tls(ca, tmp_path, n)} if tls else {} for n in (1, 2)
    ]
    a, b = Node(1, ports, **options[0]), Node(2, ports, **options[1])
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            async with await trio.open_tcp_stream("127.0.0.1", ports[1]) as stream:
                await stream.send_all(prefix)
                received = await read_until_closed(stream)  # node 1 hangs up
            answers = [decode(payload) for payload in FrameReader().feed(received)]
            assert all(isinstance(m, HelloReply) and not m.ok for m in answers)
            b.transport.send(hb(2, 1, 1))
            await a.wait_for(heartbeat(2, 1))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.connections_refused == 1
    assert any(logged in r.getMessage() for r in caplog.records)


async def test_tls_without_mtls_links_without_client_certificates(
    tmp_path: Path, ca: trustme.CA
) -> None:
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    tls = {
        n: load_peer_tls(**write_node_files(ca, tmp_path / f"n{n}", f"node-{n}"), mutual=False)
        for n in (1, 2)
    }
    a, b = Node(1, ports, tls=tls[1]), Node(2, ports, tls=tls[2])
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            a.transport.send(hb(1, 2, 1))
            b.transport.send(hb(2, 1, 1))
            await b.wait_for(heartbeat(1, 1))
            await a.wait_for(heartbeat(2, 1))
            nursery.cancel_scope.cancel()


async def test_the_dialer_refuses_a_certificate_not_valid_for_the_address_dialed(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """Node 2's certificate names node-2 but not 127.0.0.1, the address node 1 dials."""
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    cert = ca.issue_cert("node-2", "db2.example.net")
    root = tmp_path / "n2"
    root.mkdir()
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    b_tls = load_peer_tls(
        ca_path=str(root / "ca.pem"),
        cert_path=str(root / "cert.pem"),
        key_path=str(root / "key.pem"),
        mutual=True,
    )
    a, b = Node(1, ports, tls=peer_tls(ca, tmp_path, 1)), Node(2, ports, tls=b_tls)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            await wait_until(lambda: a.transport.stats.peers[2].connect_failures >= 2)
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 0
    refused = [
        r.getMessage() for r in caplog.records if "refused the link to peer 2" in r.getMessage()
    ]
    assert len(refused) == 1
    assert "IP address mismatch" in refused[0]


@settings(max_examples=15, deadline=None)
@given(blobs=st.lists(garbage, min_size=1, max_size=4))
async def test_garbage_after_a_good_tls_handshake_closes_that_connection_only(
    tmp_path_factory: pytest.TempPathFactory, blobs: list[bytes]
) -> None:
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("tls")
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    a = Node(1, ports, tls=peer_tls(ca, root, 1))
    b = Node(2, ports, tls=peer_tls(ca, root, 2))
    caller = client_context(ca, ca, "node-3")
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            await b.start(nursery)
            for seq, blob in enumerate(blobs):
                tcp = await trio.open_tcp_stream("127.0.0.1", ports[1])
                async with trio.SSLStream(tcp, caller, server_hostname="127.0.0.1") as stream:
                    await stream.send_all(
                        encode_frame(encode(Hello(CLUSTER, 3, 1, PROTOCOL_VERSION)))
                    )
                    reader = FrameReader()
                    frames: list[bytes] = []
                    while not frames:
                        frames = reader.feed(bytes(await stream.receive_some()))
                    reply = decode(frames[0])
                    assert isinstance(reply, HelloReply) and reply.ok
                    await stream.send_all(blob)
                    a.transport.send(hb(1, 2, seq))
                    b.transport.send(hb(2, 1, seq))
                    await tcp.send_eof()  # under TLS: node 1's read ends, it hangs up
                    await read_until_closed(stream)  # type: ignore[arg-type]
                await b.wait_for(heartbeat(1, seq))
                await a.wait_for(heartbeat(2, seq))
            nursery.cancel_scope.cancel()
    assert a.transport.stats.peers[2].connects == 1
    assert b.transport.stats.peers[1].connects == 1
    assert all(m.src in (2, 3) for m in a.inbox)  # type: ignore[attr-defined]
