"""A role is spelt one way wherever a person or a program reads it: lower-case snake
(``leader``, ``follower``, ``candidate``, ``pre_candidate``), as ``/status`` and ``/primary``
give it. The newcomer pass found the log saying ``PreCandidate`` and the cluster page
``pre-candidate`` for the ``pre_candidate`` of ``/status``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dengine_trio.api import page
from dengine_trio.raft import Role, RoleChanged
from dengine_trio.runtime.observe import NodeLog

SPELLINGS = {
    Role.LEADER: "leader",
    Role.FOLLOWER: "follower",
    Role.CANDIDATE: "candidate",
    Role.PRE_CANDIDATE: "pre_candidate",
}


def test_every_role_has_its_snake_case_spelling() -> None:
    # node.py renders /status and the metrics sink's role with role.name.lower().
    assert {role: role.name.lower() for role in Role} == SPELLINGS


@pytest.mark.parametrize("role", [Role.CANDIDATE, Role.PRE_CANDIDATE], ids=lambda r: r.name)
def test_the_campaign_log_line_names_the_role_as_status_does(
    role: Role, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.INFO, logger="dengine_trio.node"):
        NodeLog(2, tmp_path).role_changed(RoleChanged(role, 3, 0), planned=False)
    assert caplog.messages == [f"node 2 term 3: {SPELLINGS[role]}, campaigning"]


def test_the_cluster_page_shows_the_role_as_status_gives_it() -> None:
    script = page.CLUSTER_PAGE
    assert "st.role" in script
    assert "st.role.replace" not in script  # no second spelling (pre-candidate)
