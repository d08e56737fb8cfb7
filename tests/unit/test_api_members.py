"""The membership admin routes (api/members.py) over a scripted engine: request validation,
what reaches the engine, and how each refusal is answered. The routes against real nodes:
tests/e2e/test_membership*.py."""

from __future__ import annotations

from typing import Any

import pytest

from dengine_trio import errors
from dengine_trio.api import App, engine_error_response, install_error_handlers
from dengine_trio.api.members import MAX_ADMIN_BODY_BYTES, install_member_routes
from dengine_trio.errors import TooLarge
from dengine_trio.raft.membership import ConfChange, ConfChangeKind

MEMBERS = {
    "leader_id": 1,
    "members": [{"id": 1, "address": "127.0.0.1:9081", "voter": True, "match_index": 5}],
}


class ScriptedEngine:
    """``members``, ``change_membership`` and ``transfer_leadership_to`` as the HTTP layer
    calls them; each raises ``fail`` if set, else answers."""

    def __init__(self) -> None:
        self.changes: list[ConfChange] = []
        self.transfers: list[int | None] = []
        self.fail: errors.DengineError | None = None

    async def members(self) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        return MEMBERS

    async def change_membership(self, change: ConfChange) -> int:
        self.changes.append(change)
        if self.fail:
            raise self.fail
        return 41

    async def transfer_leadership_to(self, to: int | None) -> int:
        self.transfers.append(to)
        if self.fail:
            raise self.fail
        return to or 2


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def client(engine: ScriptedEngine) -> Any:
    app = App(__name__)
    install_error_handlers(app)
    install_member_routes(app, engine)  # type: ignore[arg-type]
    return app.test_client()


async def test_get_members_is_the_engines_view(client: Any) -> None:
    response = await client.get("/members")
    assert response.status_code == 200
    assert await response.get_json() == MEMBERS


async def test_add_a_learner_reaches_the_engine_as_one_change(
    client: Any, engine: ScriptedEngine
) -> None:
    body = {"id": 4, "address": "127.0.0.1:9084", "voter": False}
    response = await client.post("/members", json=body)
    assert response.status_code == 200
    assert await response.get_json() == {
        "index": 41,
        "change": {"kind": "add_learner", "id": 4, "address": "127.0.0.1:9084", "promote": False},
    }
    assert engine.changes == [
        ConfChange(kind=ConfChangeKind.ADD_LEARNER, id=4, address="127.0.0.1:9084")
    ]
    await client.post("/members", json={"id": 5, "address": "h5:9085", "promote": True})
    assert engine.changes[1].promote is True


async def test_promote_remove_and_transfer(client: Any, engine: ScriptedEngine) -> None:
    assert (await client.post("/members/4/promote")).status_code == 200
    assert (await client.delete("/members/3")).status_code == 200
    assert engine.changes == [
        ConfChange(kind=ConfChangeKind.PROMOTE, id=4),
        ConfChange(kind=ConfChangeKind.REMOVE, id=3),
    ]
    response = await client.post("/leader/transfer", json={"to": 3})
    assert await response.get_json() == {"leader_id": 3}
    response = await client.post("/leader/transfer")  # no body: any voter
    assert await response.get_json() == {"leader_id": 2}
    assert engine.transfers == [3, None]


# (method, path, JSON body or raw text, status, error code)
BAD_REQUESTS = [
    ("POST", "/members", "{", 400, "invalid_json"),
    ("POST", "/members", [4], 400, "invalid_request"),
    ("POST", "/members", {"address": "h:1"}, 400, "invalid_request"),
    ("POST", "/members", {"id": 4}, 400, "invalid_request"),
    ("POST", "/members", {"id": "4", "address": "h:1"}, 400, "invalid_id"),
    ("POST", "/members", {"id": 0, "address": "h:1"}, 400, "invalid_id"),
    ("POST", "/members", {"id": True, "address": "h:1"}, 400, "invalid_id"),
    ("POST", "/members", {"id": 2**63, "address": "h:1"}, 400, "invalid_id"),
    ("POST", "/members", {"id": 4, "address": "h"}, 400, "invalid_address"),
    ("POST", "/members", {"id": 4, "address": "h:0"}, 400, "invalid_address"),
    ("POST", "/members", {"id": 4, "address": "a b:1"}, 400, "invalid_address"),
    ("POST", "/members", {"id": 4, "address": 9084}, 400, "invalid_address"),
    ("POST", "/members", {"id": 4, "address": "h:1", "voter": True}, 400, "invalid_request"),
    ("POST", "/members", {"id": 4, "address": "h:1", "voter": "no"}, 400, "invalid_request"),
    ("POST", "/members", {"id": 4, "address": "h:1", "role": 3}, 400, "invalid_request"),
    ("POST", "/members/x/promote", None, 400, "invalid_id"),
    ("POST", "/members/-1/promote", None, 400, "invalid_id"),
    ("DELETE", "/members/0", None, 400, "invalid_id"),
    ("DELETE", "/members/99999999999999999999", None, 400, "invalid_id"),
    ("POST", "/leader/transfer", {"to": "2"}, 400, "invalid_id"),
    ("POST", "/leader/transfer", {"node": 2}, 400, "invalid_request"),
    ("PUT", "/members", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_are_4xx_json_and_reach_no_engine(
    client: Any, engine: ScriptedEngine, method: str, path: str, body: Any, status: int, code: str
) -> None:
    if isinstance(body, str):
        response = await client.open(path, method=method, data=body)
    else:
        response = await client.open(path, method=method, json=body)
    assert response.status_code == status
    assert (await response.get_json())["error"] == code
    assert engine.changes == [] and engine.transfers == []


async def test_an_oversized_body_is_413(client: Any, engine: ScriptedEngine) -> None:
    """The body limit is answered as every size limit is (tests/unit/test_size_limits.py):
    ``TooLarge("body")`` through ``engine_error_response``, the KV port's code and message."""
    body = {"id": 4, "address": "h:1", "pad": "x" * MAX_ADMIN_BODY_BYTES}
    expected = engine_error_response(TooLarge("body", None, MAX_ADMIN_BODY_BYTES))
    for path in ("/members", "/leader/transfer", "/members/4/promote"):
        response = await client.post(path, json=body)
        assert response.status_code == 413
        doc = await response.get_json()
        assert doc["error"] == "body_too_large"
        assert doc["message"].endswith(f"at most {MAX_ADMIN_BODY_BYTES} bytes")
        assert expected.status_code == 413
    assert engine.changes == [] and engine.transfers == []


async def test_another_spelling_of_an_address_reaches_the_engine_canonical(
    client: Any, engine: ScriptedEngine
) -> None:
    for address, canonical in [
        ("127.0.0.1:09084", "127.0.0.1:9084"),
        ("DB4.Example:9084", "db4.example:9084"),
        ("[0:0::1]:9084", "[::1]:9084"),
    ]:
        response = await client.post("/members", json={"id": 4, "address": address})
        assert (await response.get_json())["change"]["address"] == canonical
        assert engine.changes[-1].address == canonical


@pytest.mark.parametrize(
    ("error", "status", "extra"),
    [
        (errors.MembershipError("unknown_member", "no member 9"), 404, {}),
        (errors.MembershipError("duplicate_id", "node 2 is a member"), 409, {}),
        (errors.MembershipError("duplicate_address", "h:1 is node 2's"), 409, {}),
        (errors.MembershipError("last_voter", "node 1 is the last voter"), 409, {}),
        (errors.MembershipError("pending", "a change is pending"), 409, {}),
        (errors.MembershipError("behind", "4 is behind", {"lag": 5000}), 409, {"lag": 5000}),
        (errors.MembershipError("not_learner", "2 is a voter"), 409, {}),
        (
            errors.MembershipError("quorum_at_risk", "3 is down", {"active": [1], "needed": 2}),
            409,
            {"active": [1], "needed": 2},
        ),
        (errors.MembershipError("bad_request", "no"), 400, {}),
    ],
)
async def test_refusals_answer_their_status_with_code_and_detail(
    client: Any, engine: ScriptedEngine, error: errors.MembershipError, status: int, extra: dict
) -> None:
    engine.fail = error
    response = await client.post("/members/4/promote")
    assert response.status_code == status
    assert await response.get_json() == {"error": error.code, "message": error.message, **extra}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.NotLeader(None), 503, "not_leader"),
        (errors.NoLeader("none"), 503, "no_leader"),
        (errors.Timeout("late"), 504, "timeout"),
        (errors.MembershipError("transfer_failed", "nobody took it"), 503, "transfer_failed"),
    ],
)
async def test_engine_errors_are_answered_as_for_writes(
    client: Any, engine: ScriptedEngine, error: errors.DengineError, status: int, code: str
) -> None:
    engine.fail = error
    response = await client.post("/leader/transfer", json={"to": 2})
    assert response.status_code == status
    assert (await response.get_json())["error"] == code
