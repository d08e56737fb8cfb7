"""Every command in README.md and docs/*.md that runs the project's Python works as written on a
fresh clone after the documented install (``make start-cluster`` / ``make install``): it names
``.venv/bin/`` (README's convention), since a bare ``python`` or ``pytest`` is the system's, which
has none of the dependencies (``ModuleNotFoundError: cattrs``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A command whose first word would be looked up on PATH instead of in .venv/bin.
BARE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(python3?|pytest|dengine-trio|ruff|mypy|pip3?)(\s|$)")
FENCE = re.compile(r"^\s*```")
INLINE = re.compile(r"`([^`\n]+)`")


def bare_commands(text: str) -> list[str]:
    """The lines of fenced blocks, and the inline code spans with arguments, that start with a
    bare interpreter or tool. An inline span naming only the program (``python -m dengine_trio``
    as the name of the node process) is prose, not a command."""
    found = []
    in_block = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            if BARE.match(line.strip()):
                found.append(line.strip())
            continue
        for span in INLINE.findall(line):
            words = span.split()
            args = words[3:] if words[:2] in (["python", "-m"], ["python3", "-m"]) else words[2:]
            if BARE.match(span) and args:
                found.append(span)
    return found


def test_the_check_finds_the_reported_bare_commands() -> None:
    reported = "```bash\npython -m dengine_trio --port 8081 --config-path config/n1\n```\n"
    assert bare_commands(reported) == ["python -m dengine_trio --port 8081 --config-path config/n1"]
    assert bare_commands("Options: `python -m bench.suite --help` (counts)") == [
        "python -m bench.suite --help"
    ]
    assert bare_commands("the node process (`python -m dengine_trio`) itself") == []
    assert bare_commands("```bash\n.venv/bin/python -m dengine_trio --port 8081\n```") == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_use_the_venv(doc: Path) -> None:
    assert bare_commands(doc.read_text()) == [], f"{doc.name}: use .venv/bin/ for these"
