"""``dengine-trio member ...``'s one-line refusals (ctl/members.py), without a cluster."""

from __future__ import annotations

import io

from dengine_trio.ctl._http import Answer
from dengine_trio.ctl.kv import EXIT_REFUSED
from dengine_trio.ctl.members import _fail


def test_a_refusal_prints_its_details_but_not_null_ones() -> None:
    body = {"error": "behind", "message": "node 4 has not answered", "lag": 7, "heard_ms_ago": None}
    err = io.StringIO()
    status = _fail(
        "member promote", Answer(409, body, "http://h:10001/members/4/promote"), [], 5, err
    )
    assert status == EXIT_REFUSED
    assert err.getvalue() == (
        "dengine-trio member promote: HTTP 409 behind: node 4 has not answered, lag 7\n"
    )
