"""Bearer tokens (``[auth]``) on a real node process: 401/403/200 per role on every endpoint
class of both ports, probes left open, the token file checked at load time, and no token
ever written to the node's output (access log and debug logs on)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dengine_trio.api.auth import TokenTable
from tests.e2e.cluster import Cluster, Node, key_path, node_env, run_cli, wait_until

START_TIMEOUT_S = 60.0
TOKENS = {
    "read": "r-7f3a9c1e5b2d4f60a8c9",
    "write": "w-0b6e2d8a4c1f9e7d3a5b",
    "admin": "a-9d1c7e3b5f2a8c4e6d0f",
}
TOKEN_FILE = f"""# role tokens for the e2e test
{TOKENS["read"]} read
{TOKENS["write"]}   write   # trailing comment

{TOKENS["admin"]} admin
"""
WRONG = "x-does-not-exist-anywhere-42"

# (method, port, path, role needed; None: open). Every endpoint class of both ports.
ENDPOINTS = [
    ("GET", "kv", key_path("k"), "read"),
    ("POST", "kv", "/kv", "write"),
    ("DELETE", "kv", key_path("gone"), "write"),
    ("GET", "health", "/status", "admin"),
    ("GET", "health", "/metrics", "admin"),
    ("GET", "health", "/", "admin"),
    ("GET", "health", "/no-such-page", "admin"),
    ("GET", "health", "/snapshot", "admin"),
    ("GET", "health", "/primary", None),
    ("GET", "health", "/replica", None),
]
RANK = {"read": 0, "write": 1, "admin": 2}


def start_node(node: Node, cwd: Path) -> None:
    """The node with its access log and debug logs on: the most a token could leak into."""
    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen(
            [
                sys.executable, "-m", "dengine_trio",
                "--config-path", str(node.config_path),
                "--port", str(node.port),
                "--health-port", str(node.health_port),
                "--access-log", "--log-level", "debug",
            ],
            cwd=cwd, env=node_env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "tokens"
    tokens.write_text(TOKEN_FILE)
    cluster = Cluster(root, size=1, settings={"auth.enable": True, "auth.tokens_path": str(tokens)})
    node = cluster.nodes[0]
    try:
        start_node(node, root)
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}

        def leads() -> bool | None:
            assert node.running(), node.log_text()
            try:
                return node.health.get("/status", headers=admin).json()["role"] == "leader" or None
            except (httpx.TransportError, ValueError, KeyError):
                return None

        wait_until(leads, START_TIMEOUT_S, "the node to lead")
        yield node
    finally:
        cluster.stop()


def call(node: Node, method: str, port: str, path: str, token: str | None) -> httpx.Response:
    client = node.kv if port == "kv" else node.health
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"key": "k", "value": "v"} if method == "POST" else None
    return client.request(method, path, headers=headers, json=body)


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == code
    assert isinstance(response.json()["message"], str)


@pytest.mark.parametrize(("method", "port", "path", "needed"), ENDPOINTS)
def test_each_role_on_each_endpoint(
    node: Node, method: str, port: str, path: str, needed: str | None
) -> None:
    for token in (None, WRONG, *TOKENS.values()):
        role = next((r for r, t in TOKENS.items() if t == token), None)
        response = call(node, method, port, path, token)
        if needed is None or (role is not None and RANK[role] >= RANK[needed]):
            # Served: whatever the endpoint answers, not an auth refusal.
            assert response.status_code not in (401, 403), (role, response.text)
            if path in ("/status", "/metrics", "/", "/primary", "/kv", "/snapshot"):
                assert response.status_code == 200, (role, response.text)
        elif role is None:
            assert_refused(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == 'Bearer realm="dengine"'
        else:
            assert_refused(response, 403, "forbidden")


def test_other_schemes_and_malformed_headers_are_401(node: Node) -> None:
    for value in (
        f"Basic {TOKENS['admin']}",
        TOKENS["admin"],
        "Bearer",
        f"Bearer  x{TOKENS['admin']}",
        f"Bearer {TOKENS['admin']}x",
        f"Bearer {TOKENS['admin'][:-1]}",
    ):
        response = node.health.get("/status", headers={"Authorization": value})
        assert_refused(response, 401, "unauthorized")
    # The scheme is case-insensitive (RFC 9110 section 11.1).
    response = node.health.get("/status", headers={"Authorization": f"bearer {TOKENS['admin']}"})
    assert response.status_code == 200


def test_a_refused_write_keeps_the_connection_usable(node: Node) -> None:
    assert_refused(call(node, "POST", "kv", "/kv", None), 401, "unauthorized")
    assert_refused(call(node, "POST", "kv", "/kv", TOKENS["read"]), 403, "forbidden")
    # Same keep-alive connection: the refused body was read, the next request is answered.
    assert call(node, "POST", "kv", "/kv", TOKENS["write"]).status_code == 200
    assert call(node, "GET", "kv", key_path("k"), TOKENS["read"]).json() == {"value": "v"}


def test_no_token_appears_in_the_node_output(node: Node) -> None:
    for token in (*TOKENS.values(), WRONG):
        for method, port, path, _ in ENDPOINTS:
            call(node, method, port, path, token)
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    node.health.get("/status", headers=admin)
    log = node.log_text()
    assert '"GET /status' in log or "GET /status" in log, log[-2000:]  # the access log is on
    for token in (*TOKENS.values(), WRONG):
        assert token not in log


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("only-one-field-here-xx\n", "tokens:1: expected 'TOKEN ROLE', got 1 fields"),
        ("# c\nabcdefghijklmnopqrstu root\n", "tokens:2: unknown role 'root'"),
        ("short read\n", "tokens:1: token shorter than 16 characters"),
        ("abcdefghijklmnopqrstu read\nabcdefghijklmnopqrstu admin\n", "tokens:2: token repeated"),
        ("# nothing\n", "no tokens"),
    ],
)
def test_bad_token_file_is_one_line_exit_2(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "tokens").write_text(text)
    config = tmp_path / "n1.toml"
    config.write_text(
        '[cluster]\nnode_id = 1\nlisten_address = "127.0.0.1:9"\n'
        'initial_cluster = [{ id = 1, address = "127.0.0.1:9", role = 1, status = 2 }]\n'
        'db_root_dir = "db"\n\n[auth]\nenable = true\ntokens_path = "tokens"\n'
    )
    result = run_cli(["--config-path", str(config)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "n1.toml: auth.tokens_path: " in result.stderr and problem in result.stderr
    for secret in ("abcdefghijklmnopqrstu", "only-one-field-here-xx"):
        assert secret not in result.stderr  # a refused line is named, never echoed


def test_auth_enabled_without_tokens_path_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "n1.toml"
    config.write_text(
        '[cluster]\nnode_id = 1\nlisten_address = "127.0.0.1:9"\n'
        'initial_cluster = [{ id = 1, address = "127.0.0.1:9", role = 1, status = 2 }]\n'
        'db_root_dir = "db"\n\n[auth]\nenable = true\n'
    )
    result = run_cli(["--config-path", str(config)], tmp_path)
    assert result.returncode == 2
    assert "auth.tokens_path: must be set when auth.enable = true" in result.stderr


def test_token_lookup_compares_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: every known token is compared, whichever matches, so the time taken
    does not say which one did (nor how far a guess got: digests are compared whole)."""
    table = TokenTable({t: r for r, t in TOKENS.items()})
    import dengine_trio.api.auth as auth

    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for token, role in ((TOKENS["read"], "read"), (TOKENS["admin"], "admin"), (WRONG, None)):
        calls.clear()
        assert table.role_of(token) == role
        assert len(calls) == len(TOKENS)
        assert all(len(a) == len(b) == 32 for a, b in calls)


def test_ctl_tools_send_the_token(node: Node) -> None:
    kv = ["kv", "--endpoints", f"http://127.0.0.1:{node.port}"]
    status = ["status", "--endpoints", f"http://127.0.0.1:{node.health_port}"]
    cwd = node.config_path.parent
    env = {"DENGINE_TOKEN": TOKENS["write"]}
    assert run_cli([*kv, "put", "ctl", "yes"], cwd, env).returncode == 0
    result = run_cli([*kv, "get", "ctl", "--token", TOKENS["read"]], cwd)
    assert (result.returncode, result.stdout) == (0, "yes\n"), result.stderr
    refused = run_cli([*kv, "put", "ctl", "no", "--token", TOKENS["read"]], cwd)
    assert refused.returncode == 2 and "HTTP 403 forbidden" in refused.stderr, refused.stderr
    missing = run_cli([*kv, "get", "ctl"], cwd)
    assert missing.returncode == 2 and "HTTP 401 unauthorized" in missing.stderr
    assert run_cli([*status, "--token", TOKENS["admin"]], cwd).returncode == 0
    weak = run_cli(status, cwd, {"DENGINE_TOKEN": TOKENS["write"]})
    assert weak.returncode == 1 and "HTTP 403 forbidden" in weak.stdout, weak.stdout
    save = ["snapshot", "save", str(cwd / "backup.snap"), "--endpoint", status[2]]
    saved = run_cli([*save, "--token", TOKENS["admin"]], cwd)
    assert saved.returncode == 0 and saved.stdout.startswith("saved "), saved.stderr
    not_admin = run_cli(save, cwd, {"DENGINE_TOKEN": TOKENS["write"]})
    assert not_admin.returncode == 1 and "HTTP 403 forbidden" in not_admin.stderr
    for result in (refused, missing, weak, saved, not_admin):
        assert not any(t in result.stdout + result.stderr for t in TOKENS.values())


def test_auth_off_adds_no_hook() -> None:
    """The hot path without auth: no per-request code at all."""
    from quart import Quart

    from dengine_trio.api.auth import install_auth, kv_role_needed
    from dengine_trio.config import AuthConfig

    app = Quart(__name__)
    before = {k: list(v) for k, v in app.before_request_funcs.items()}
    install_auth(app, AuthConfig(), kv_role_needed)
    assert {k: list(v) for k, v in app.before_request_funcs.items()} == before
