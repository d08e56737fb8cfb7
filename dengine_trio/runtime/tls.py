"""Peer TLS for the Raft port: the SSL contexts of both ends and the node-name check.

With ``enable_tls`` the dialer verifies the listener's certificate (signed by the configured
CA, valid for the host or IP it dialed) and that it names the node it dialed. With
``enable_mtls`` the listener also requires a client certificate, signed by the client CA,
that names the node its ``Hello`` claims to be. A node's name is ``peer_name_pattern`` with
its id, by default ``node-{id}`` (after Consul's ``server.<dc>.<domain>``): a certificate
issued to one member cannot be used to pose as another.
"""

from __future__ import annotations

import ssl
from typing import Any

import attrs

from dengine_trio.config import TlsConfig

__all__ = ["PeerTls", "certificate_dns_names", "load_peer_tls", "peer_tls_from_config"]


@attrs.frozen
class PeerTls:
    """The peer TLS settings a ``Transport`` needs.

    ``server``: context for accepted connections; ``client``: for dialed ones. ``mutual``:
    the listener requires and checks a client certificate. ``peer_name_pattern``: a format
    string with ``{id}`` giving the DNS name a member's certificate must carry.
    """

    server: ssl.SSLContext
    client: ssl.SSLContext
    mutual: bool
    peer_name_pattern: str = "node-{id}"

    def peer_name(self, node_id: int) -> str:
        """The DNS name node ``node_id``'s certificate must carry, e.g. ``node-2``."""
        return self.peer_name_pattern.format(id=node_id)

    def name_problem(self, cert: Any, node_id: int) -> str:
        """Why ``cert`` (``SSLObject.getpeercert()``) does not identify node ``node_id``,
        or "" if its subject alternative names include that node's name."""
        if not cert:
            return "presented no certificate"
        name = self.peer_name(node_id)
        names = certificate_dns_names(cert)
        if name.lower() in {n.lower() for n in names}:
            return ""
        return f"certificate names {sorted(names) or 'no DNS name'}, not {name!r}"


def certificate_dns_names(cert: Any) -> list[str]:
    """The DNS names among a decoded certificate's subject alternative names."""
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def load_peer_tls(
    *,
    ca_path: str,
    cert_path: str,
    key_path: str,
    client_ca_path: str = "",
    mutual: bool = False,
    peer_name_pattern: str = "node-{id}",
) -> PeerTls:
    """Build both contexts from PEM files. ``client_ca_path`` defaults to ``ca_path``.

    The node presents the same certificate as listener and as dialer (it needs both the
    ``serverAuth`` and ``clientAuth`` uses, or none). TLS 1.2 is the minimum. Raises
    ``OSError`` for an unreadable file and ``ssl.SSLError`` for a malformed one or a key that
    does not match the certificate (configuration loading reports both first, as one line).
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(cert_path, key_path)
    if mutual:
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(cafile=client_ca_path or ca_path)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_path)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    if mutual:
        client.load_cert_chain(cert_path, key_path)
    return PeerTls(server, client, mutual, peer_name_pattern)


def peer_tls_from_config(tls: TlsConfig) -> PeerTls | None:
    """The ``[tls]`` section's peer TLS, or None when ``enable_tls`` is off (plain TCP).
    Raises as ``load_peer_tls`` (loading the configuration has checked the files already)."""
    if not tls.enable_tls:
        return None
    return load_peer_tls(
        ca_path=tls.certificate_authority_root_path,
        cert_path=tls.server_certificate_path,
        key_path=tls.server_private_key_path,
        client_ca_path=tls.client_certificate_authority_root_path,
        mutual=tls.enable_mtls,
        peer_name_pattern=tls.peer_name_pattern,
    )
