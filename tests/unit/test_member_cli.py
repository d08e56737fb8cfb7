"""``dengine-trio member ...`` and ``leader transfer`` against scripted HTTP servers on loopback:
what each sends, which endpoint serves, how each answer is printed and the exit status. The
same commands against real nodes: tests/e2e/test_membership_cli.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dengine_trio.ctl import main
from dengine_trio.ctl.members import render_members

MEMBERS = {
    "leader_id": 1,
    "cluster_id": "dengine-0123456789abcdef",
    "index": 7,
    "members": [
        {"id": 1, "address": "127.0.0.1:9081", "voter": True, "promote": False, "match_index": 40},
        {"id": 2, "address": "127.0.0.1:9082", "voter": True, "promote": False, "match_index": 40},
        {"id": 4, "address": "127.0.0.1:9084", "voter": False, "promote": True, "match_index": 12},
    ],
}


class Scripted:
    """A health port that answers each request with the next scripted (status, body) and
    records (method, path, JSON body) of what it got."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = list(answers)
        self.got: list[tuple[str, str, Any]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                scripted.got.append((self.command, self.path, json.loads(raw) if raw else None))
                status, body = scripted.answers.pop(0) if scripted.answers else (500, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[list[Scripted]]:
    made: list[Scripted] = []
    yield made
    for server in made:
        server.close()


def serve(made: list[Scripted], *answers: tuple[int, Any]) -> Scripted:
    server = Scripted(list(answers))
    made.append(server)
    return server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def closed_port_url() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()
    return url


def test_member_list_prints_a_table_with_roles_and_the_extra_columns(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    node = serve(servers, (200, MEMBERS))
    code, out, err = run(capsys, "member", "list", "--endpoint", node.url)
    assert (code, err) == (0, "")
    assert node.got == [("GET", "/members", None)]
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE", "MATCH", "PROMOTE"]
    assert lines[1].split() == ["1", "127.0.0.1:9081", "leader", "40", "no"]
    assert lines[2].split() == ["2", "127.0.0.1:9082", "voter", "40", "no"]
    assert lines[3].split() == ["4", "127.0.0.1:9084", "learner", "12", "yes"]
    assert lines[4] == "leader: node 1"


def test_member_list_json_is_the_nodes_answer(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    node = serve(servers, (200, MEMBERS))
    code, out, _ = run(capsys, "member", "list", "--json", "--endpoint", node.url)
    assert code == 0
    assert json.loads(out) == MEMBERS


def test_the_first_endpoint_that_answers_serves(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    electing = serve(servers, (503, {"error": "no_leader", "message": "electing"}))
    node = serve(servers, (200, {"index": 9, "change": {}}))
    code, out, err = run(
        capsys, "member", "remove", "3",
        "--endpoint", closed_port_url(), "--endpoint", f"{electing.url},{node.url}",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "member 3 removed (configuration entry 9)\n"
    assert electing.got == [("DELETE", "/members/3", None)]
    assert node.got == [("DELETE", "/members/3", None)]


def test_member_add_sends_a_learner_and_says_how_to_promote_it(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    node = serve(servers, (200, {"index": 11, "change": {}}), (200, {"index": 12, "change": {}}))
    code, out, _ = run(capsys, "member", "add", "4", "127.0.0.1:9084", "--endpoint", node.url)
    assert code == 0
    assert node.got[0] == (
        "POST",
        "/members",
        {"id": 4, "address": "127.0.0.1:9084", "voter": False, "promote": False},
    )
    assert out == (
        "member 4 (127.0.0.1:9084) added as a learner (configuration entry 11); promote it "
        "with: dengine-trio member promote 4\n"
    )
    code, out, _ = run(
        capsys, "member", "add", "5", "127.0.0.1:9085", "--promote", "--endpoint", node.url
    )
    assert code == 0 and node.got[1][2]["promote"] is True
    assert "the leader promotes it once it has caught up" in out


def test_promote_and_leader_transfer_paths_and_bodies(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    node = serve(
        servers,
        (200, {"index": 13, "change": {}}),
        (200, {"leader_id": 2}),
        (200, {"leader_id": 3}),
    )
    assert run(capsys, "member", "promote", "4", "--endpoint", node.url)[1] == (
        "member 4 promoted to voter (configuration entry 13)\n"
    )
    assert run(capsys, "leader", "transfer", "--to", "2", "--endpoint", node.url)[1] == (
        "node 2 leads now\n"
    )
    assert run(capsys, "leader", "transfer", "--endpoint", node.url)[1] == "node 3 leads now\n"
    assert node.got == [
        ("POST", "/members/4/promote", {}),
        ("POST", "/leader/transfer", {"to": 2}),
        ("POST", "/leader/transfer", {}),
    ]


def test_a_refusal_is_one_line_with_its_detail_and_exit_2(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    behind = {"error": "behind", "message": "learner 4 is 5000 entries behind", "lag": 5000}
    node = serve(servers, (409, behind))
    code, out, err = run(capsys, "member", "promote", "4", "--endpoint", node.url)
    assert (code, out) == (2, "")
    assert err == (
        "dengine-trio member promote: HTTP 409 behind: learner 4 is 5000 entries behind, lag 5000\n"
    )


def test_a_kv_port_is_named_as_the_wrong_port(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    kv_port = serve(servers, (404, {"error": "not_found", "message": "Not Found"}))
    code, _, err = run(capsys, "member", "list", "--endpoint", kv_port.url)
    assert code == 3
    assert "not a health port (--endpoint takes the health ports" in err


def test_no_endpoint_answering_is_exit_3_naming_the_last_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(
        capsys, "member", "list", "--timeout", "0.3", "--endpoint", closed_port_url()
    )
    assert code == 3
    assert err.startswith("dengine-trio member list: no node answered in 0.3 s (http://")
    assert "unreachable" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["member", "promote", "four"],
        ["member", "remove", "0"],
        ["member", "add", "4"],
        ["leader", "transfer", "--to", "-1"],
        ["member", "list", "--endpoint", "ftp://x:1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip()


def test_render_members_with_no_leader_known() -> None:
    text = render_members({"leader_id": None, "members": [MEMBERS["members"][2]]})
    assert text.splitlines()[1].split()[2] == "learner"
    assert text.endswith("leader: none known")


def test_a_change_answered_pending_is_tried_again_until_it_is_made(
    servers: list[Scripted], capsys: pytest.CaptureFixture[str]
) -> None:
    """409 ``pending`` (a new leader's first entry, or another change, not committed yet: the
    change was not made) is retried like a 503; the docs' procedure met it right after a
    failover and the command failed with exit 2."""
    pending = {"error": "pending", "message": "the new leader has not committed an entry"}
    node = serve(servers, (409, pending), (409, pending), (200, {"index": 9, "change": {}}))
    code, out, err = run(capsys, "member", "remove", "3", "--endpoint", node.url)
    assert (code, err) == (0, "")
    assert out.startswith("member 3 removed")
    assert [got[:2] for got in node.got] == [("DELETE", "/members/3")] * 3
    # Still a refusal for member list (nothing to retry there) and at the timeout.
    again = serve(servers, *[(409, pending)] * 40)
    code, _, err = run(
        capsys, "member", "promote", "4", "--endpoint", again.url, "--timeout", "0.5"
    )
    assert code == 3 and "409 pending" in err
