"""Size limits (issue 12 item 4): each is checked once, in one place, with one error type.

Key and value sizes are ``Client``'s, the command size the runtime's ``propose``, the body
size Quart's ``MAX_CONTENT_LENGTH`` in the KV app; each raises ``TooLarge`` naming its
``limit``, and the HTTP layer maps that to its 413 code (README's error table). These tests
pin the three halves: where each limit is raised, that the HTTP layer raises no 413 of its
own, and that every limit has its code. tests/e2e/test_kv_api.py checks the codes end to end.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import get_args

import pytest

import dengine_trio
from dengine_trio.api import _TOO_LARGE_CODES, engine_error_response
from dengine_trio.api.kv import create_kv_app
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.errors import SizeLimit, TooLarge
from dengine_trio.runtime.operations import MAX_COMMAND_BYTES
from tests.support.cluster import node_config

PACKAGE = Path(dengine_trio.__file__).parent

# Where each limit may be raised. The forwarding relay passes on a leader's verdict (a leader
# of another version): it checks nothing.
RAISED_IN = {
    "key": {"engine.py", "api/watch.py"},  # /watch checks its key before a stream opens
    "value": {"engine.py"},
    "command": {"runtime/operations.py", "runtime/forwarding.py"},
    "body": {"api/kv.py", "api/members.py"},  # the KV app's and the health app's bodies
    "txn_ops": {"engine.py"},
    "txn": {"engine.py"},
    "txn_read": {"kvbridge.py"},  # decided at apply (the gets' read bytes)
}


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called == name:
                    found.append((path.relative_to(PACKAGE).as_posix(), node))
    return found


def test_each_limit_is_raised_in_its_one_place_as_too_large() -> None:
    raised: dict[str, set[str]] = {}
    for where, call in _calls("TooLarge"):
        assert call.args and isinstance(call.args[0], ast.Constant), (where, ast.dump(call))
        raised.setdefault(str(call.args[0].value), set()).add(where)
    assert raised == RAISED_IN


def test_the_http_layer_raises_no_413_of_its_own() -> None:
    """No 413 with a code of its own: the one 413 comes from ``TooLarge.limit``."""
    for where, call in _calls("ApiError") + _calls("json_error"):
        status, code = [*call.args, None, None][:2]
        if isinstance(status, ast.Constant) and isinstance(code, ast.Constant):
            assert status.value != 413, (where, ast.dump(call))


def test_every_limit_has_its_413_code() -> None:
    assert set(_TOO_LARGE_CODES) == set(get_args(SizeLimit))
    for limit in get_args(SizeLimit):
        response = engine_error_response(TooLarge(limit, 10, 5))
        assert response.status_code == 413


def engine(tmp_path: Path) -> EmbeddedEngine:
    """Built, never started: size checks come before anything waits for the cluster."""
    config = node_config(tmp_path / "n1.toml", 1, "127.0.0.1:1", {1: "127.0.0.1:1"}, tmp_path)
    return EmbeddedEngine(config)


async def test_the_client_refuses_keys_and_values_over_the_limits(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    limits = eng.config.limits
    client = eng.client()
    long_key = b"k" * (limits.max_key_bytes + 1)
    for operation in (
        lambda: client.put(long_key, b"v"),
        lambda: client.delete(long_key),
        lambda: client.get(long_key),
        lambda: client.get_linearizable(long_key),
        lambda: client.get_lease(long_key),
        lambda: client.get_eventual(long_key),
    ):
        with pytest.raises(TooLarge) as caught:
            await operation()
        assert (caught.value.limit, caught.value.size) == ("key", limits.max_key_bytes + 1)
        assert caught.value.max_bytes == limits.max_key_bytes
    with pytest.raises(TooLarge) as caught:
        await client.put(b"k", b"v" * (limits.max_value_bytes + 1))
    assert caught.value.limit == "value"
    with pytest.raises(TooLarge) as caught:
        await eng.propose(b"x" * (MAX_COMMAND_BYTES + 1))
    assert (caught.value.limit, caught.value.max_bytes) == ("command", MAX_COMMAND_BYTES)


async def test_a_malformed_request_is_400_whatever_its_sizes(tmp_path: Path) -> None:
    """The HTTP layer parses, the client checks sizes: a request both malformed and over a
    limit is told what is malformed."""
    eng = engine(tmp_path)
    app = create_kv_app(eng)
    http = app.test_client()
    long_key = "k" * (eng.config.limits.max_key_bytes + 1)
    cases = [
        ({"key": long_key}, 400, "invalid_request"),
        ({"key": long_key, "value": 5}, 400, "invalid_value"),
        ({"key": long_key, "value": "v"}, 413, "key_too_large"),
    ]
    for doc, status, code in cases:
        response = await http.post("/kv", data=json.dumps(doc))
        assert response.status_code == status, doc
        assert (await response.get_json())["error"] == code, doc
    response = await http.get(f"/kv/{long_key}", query_string={"consistency": "strong"})
    assert (await response.get_json())["error"] == "invalid_consistency"
    response = await http.get(f"/kv/{long_key}")
    assert (response.status_code, (await response.get_json())["error"]) == (413, "key_too_large")
