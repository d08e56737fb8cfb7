"""Every Raft scenario transcript replays to exactly its recorded output.

One test per file of ``tests/scenarios/`` and of the directories in ``DENGINE_SCENARIOS_DIR``.
``DENGINE_REWRITE=1`` writes the new output into the files instead of failing (review the diff).
How to write one: ``docs/testing.md``, "Scenario transcripts".
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from dengine_trio.raft import Entry

from .transcript import (
    Interaction,
    TranscriptError,
    parse,
    rewrite_requested,
    run_transcript,
    transcript_id,
    transcript_paths,
)

PATHS = transcript_paths()


@pytest.mark.parametrize("path", PATHS, ids=[transcript_id(p) for p in PATHS])
def test_transcript(path: Path) -> None:
    before, after = run_transcript(path)
    if before == after:
        return
    if rewrite_requested():
        path.write_text(after)
        return
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            f"{path} (expected)",
            f"{path} (this run)",
        )
    )
    pytest.fail(
        f"transcript differs from its recorded output (DENGINE_REWRITE=1 to accept):\n{diff}",
        pytrace=False,
    )


def test_there_are_transcripts() -> None:
    assert len(PATHS) >= 10


def test_a_changed_output_is_reported(tmp_path: Path) -> None:
    """The comparison can fail: a transcript whose recorded output is wrong differs."""
    path = tmp_path / "t.txt"
    path.write_text("start 3\n----\nnot what start prints\n")
    before, after = run_transcript(path)
    assert before != after
    assert "1: Follower term=0" in after


def test_a_command_without_output_gets_one_on_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("# a new transcript\nstart 1\n\ncampaign 1\n")
    _, after = run_transcript(path)
    blocks, _ = parse(after)
    assert [b.command for b in blocks] == ["start 1", "campaign 1"]
    assert all(b.expected for b in blocks)
    assert "role Leader term=1 leader=1" in after


def test_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("start 3\n----\nx\n\nfrobnicate 2\n----\n")
    with pytest.raises(TranscriptError, match=r"t.txt:5: frobnicate 2: unknown command"):
        run_transcript(path)


def test_a_second_leader_in_one_term_is_refused() -> None:
    interaction = Interaction()
    interaction.run("start 3")
    interaction.leaders[1] = 3  # as if node 3 had already led term 1
    interaction.run("campaign 1")
    with pytest.raises(TranscriptError, match="election safety"):
        interaction.run("stabilize")


def test_more_directories_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "one.txt").write_text("start 1\n----\n1: Follower\n")
    monkeypatch.setenv("DENGINE_SCENARIOS_DIR", str(mine))
    paths = transcript_paths()
    assert paths[-1] == mine / "one.txt"
    assert transcript_id(paths[-1]) == "mine/one"
    assert transcript_id(paths[0]) == paths[0].stem  # tests/scenarios keeps bare names
    monkeypatch.setenv("DENGINE_SCENARIOS_DIR", str(tmp_path / "absent"))
    with pytest.raises(TranscriptError, match="is not a directory"):
        transcript_paths()


def test_a_stale_read_is_refused() -> None:
    """The runner's linearizability guard can fail: a read served from a state that misses a
    write applied elsewhere before the read began stops the run."""
    interaction = Interaction()
    for line in ("start 3", "output off", "run 700", "propose 1 k=old", "stabilize"):
        interaction.run(line)
    interaction.run("read 2 k")  # a follower read, waiting for its read index
    interaction.read_floor[interaction.next_request] = 3  # as if k=new had been applied at 3
    interaction.applied_log[3] = Entry(1, 3, b"k=new")
    with pytest.raises(TranscriptError, match="linearizability: read #2 of k"):
        interaction.run("stabilize")
