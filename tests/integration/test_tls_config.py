"""``[tls]``: what loads, and the one line (file, key, problem) for what does not; the node
process exits 2 on it without a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from dengine_trio.config import ConfigError, TlsConfig, load_config
from dengine_trio.runtime.tls import peer_tls_from_config

from .cluster import free_ports
from .test_transport import WAIT_S, Node, hb, heartbeat

NODE = """\
[cluster]
node_id = 1
listen_address = "127.0.0.1:9081"
initial_cluster = [
    { id = 1, address = "127.0.0.1:9081", role = 1, status = 2 },
    { id = 2, address = "127.0.0.1:9082", role = 1, status = 2 },
]
db_root_dir = "db"
"""


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("node-1", "localhost", "127.0.0.1")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "other_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.issue_cert("node-2").private_key_pem.write_to_path(str(paths["other_key"]))
    return paths


def write(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(NODE + "\n[tls]\n" + tls, encoding="utf-8")
    return path


def tls_table(pems: dict[str, Path], **overrides: object) -> str:
    values: dict[str, object] = {
        "enable_tls": True,
        "enable_mtls": True,
        "certificate_authority_root_path": str(pems["ca"]),
        "server_certificate_path": str(pems["cert"]),
        "server_private_key_path": str(pems["key"]),
        **overrides,
    }
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def test_tls_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.tls == TlsConfig()
    assert peer_tls_from_config(config.tls) is None


def test_a_complete_tls_table_loads_and_builds_both_contexts(
    tmp_path: Path, pems: dict[str, Path]
) -> None:
    config = load_config(write(tmp_path, tls_table(pems, peer_name_pattern="server.{id}.dc1")))
    tls = peer_tls_from_config(config.tls)
    assert tls is not None and tls.mutual
    assert tls.peer_name(2) == "server.2.dc1"


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"enable_tls": False}, "tls.enable_mtls", "needs tls.enable_tls = true"),
        ({"server_certificate_path": None}, "tls.server_certificate_path", "must be set"),
        ({"certificate_authority_root_path": "/nonexistent/ca.pem"},
         "tls.certificate_authority_root_path", "cannot read '/nonexistent/ca.pem'"),
        ({"client_certificate_authority_root_path": "/nonexistent/c.pem"},
         "tls.client_certificate_authority_root_path", "no such file"),
        ({"server_private_key_path": "OTHER_KEY"}, "tls.server_private_key_path",
         "cannot load certificate"),
        ({"server_private_key_path": "CA"}, "tls.server_private_key_path",
         "cannot load certificate"),
        ({"certificate_authority_root_path": "KEY"}, "tls.certificate_authority_root_path",
         "cannot load CA certificates"),
        ({"peer_name_pattern": "node"}, "tls.peer_name_pattern", "must contain {id}"),
        ({"peer_name_pattern": "node-{name}"}, "tls.peer_name_pattern", "not a format string"),
    ],
)  # fmt: skip
def test_bad_tls_settings_give_one_line_naming_file_and_key(
    tmp_path: Path, pems: dict[str, Path], overrides: dict[str, object], key: str, problem: str
) -> None:
    named = {"OTHER_KEY": pems["other_key"], "CA": pems["ca"], "KEY": pems["key"]}
    overrides = {k: named.get(str(v), v) for k, v in overrides.items()}
    path = write(tmp_path, tls_table(pems, **overrides))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_an_unreadable_key_file_stops_the_node_with_exit_2_and_one_line(
    tmp_path: Path, pems: dict[str, Path]
) -> None:
    pems["key"].write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n", encoding="utf-8")
    path = write(tmp_path, tls_table(pems))
    result = subprocess.run(
        [sys.executable, "-m", "dengine_trio", "--config-path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}: tls.server_private_key_path: cannot load certificate" in lines[0]


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="make certs needs openssl")
async def test_make_certs_makes_what_the_shipped_tls_configs_need_and_the_nodes_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make certs`` (run in a scratch directory) and config/tls/n1..n3.toml: each file loads,
    and nodes 1 and 2 with those certificates link over mutual TLS."""
    subprocess.run(
        ["make", "-s", "-f", str(REPO / "Makefile"), "certs"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.chdir(tmp_path)  # the files name certs/ relative to the working directory
    configs = [load_config(REPO / f"config/tls/n{n}") for n in (1, 2, 3)]
    assert all(c.tls.enable_mtls for c in configs)
    ports = dict(zip((1, 2), free_ports(2), strict=True))
    nodes = [Node(n, ports, tls=peer_tls_from_config(configs[n - 1].tls)) for n in (1, 2)]
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await node.start(nursery)
            nodes[0].transport.send(hb(1, 2, 1))
            nodes[1].transport.send(hb(2, 1, 1))
            await nodes[1].wait_for(heartbeat(1, 1))
            await nodes[0].wait_for(heartbeat(2, 1))
            nursery.cancel_scope.cancel()
