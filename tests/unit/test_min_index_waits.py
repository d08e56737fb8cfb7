"""``min_index`` waits (``EmbeddedEngine.wait_applied``) sit in the request table's heap of
reads by index. One for an index that never applies times out, and must not stay there: a
client asking for far-off indexes would otherwise grow the heap without bound."""

from __future__ import annotations

from dengine_trio.errors import Timeout
from dengine_trio.runtime.requests import RequestTable


def test_timed_out_waits_for_a_far_index_do_not_pile_up() -> None:
    table = RequestTable(node_id=1, max_pending=4, first_id=1)
    for _ in range(1000):
        request_id, waiter = table.new_read()
        table.read_ready(request_id, 10**12, applied_index=5)
        waiter.fail(Timeout("not applied in time"))  # what the deadline sweep does
    assert len(table._reads_by_index) <= 2 * 4 + 64 + 1


def test_a_wait_resolves_once_its_index_applies() -> None:
    table = RequestTable(node_id=1, max_pending=4, first_id=1)
    request_id, waiter = table.new_read()
    table.read_ready(request_id, 7, applied_index=5)
    table.reads_applied(6)
    assert not waiter.done
    table.reads_applied(7)
    assert waiter.done and waiter.error is None
