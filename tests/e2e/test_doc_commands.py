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


# ---------------------------------------------------------------------------------------------
# The README's Business API examples, run as written against a real cluster (issue 17).

README = ROOT / "README.md"


def business_api_examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, documented answer lines) for every ``curl`` of the README's "Business API"
    section, in order; a command spans continuation lines and open quotes."""
    section = text.split("### Business API", 1)[1].split("### Health check API", 1)[0]
    examples: list[tuple[str, list[str]]] = []
    in_block = False
    pending = ""
    for line in section.splitlines():
        if FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            continue
        stripped = line.strip()
        if pending.endswith("\x00"):
            pending = pending[:-1] + line.strip()
        elif pending:
            pending += "\n" + line
        elif stripped.startswith("curl "):
            pending = line
        elif stripped.startswith("# ") and examples:
            answer = stripped[2:].removeprefix("Response: ")
            examples[-1][1].append(answer)
            continue
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " \x00"  # joined to the next line by a space
            continue
        if pending.count("'") % 2:
            continue  # a quoted body goes on
        command = pending.split("  #", 1)[0].strip()  # drop a trailing comment
        examples.append((command, []))
        pending = ""
    return examples


def test_the_example_parser_joins_continuations_and_collects_answers() -> None:
    text = (
        "### Business API\n```bash\ncurl -X POST http://localhost:8081/kv \\\n  -d '{\n"
        '  "key": "k"}\'\n# Response: {"index":3}\ncurl http://localhost:8082/kv/k   # note\n'
        "```\n### Health check API\n"
    )
    assert business_api_examples(text) == [
        ('curl -X POST http://localhost:8081/kv -d \'{\n  "key": "k"}\'', ['{"index":3}']),
        ("curl http://localhost:8082/kv/k", []),
    ]


_INDEXES = re.compile(
    r'("(?:index|create_index|mod_index)":|at index |\b(?:prev|min)_index=|"prev_index": |^id: )'
    r"(\d+)",
    re.M,
)
_TTL = re.compile(r'"ttl_ms":\d+')


def _shifted(text: str, offset: int) -> str:
    """``text`` with every log index moved by ``offset`` and remaining TTLs as N: the
    documented indexes are a fresh cluster's, whose first entries (the leader's no-op,
    membership) may differ by a constant."""
    moved = _INDEXES.sub(lambda m: m.group(1) + str(int(m.group(2)) + offset), text.strip())
    return _TTL.sub('"ttl_ms":N', moved)


STREAM_TIMEOUT_S = 30.0
"""Bound on a watch example's wait for its documented events (a loaded machine may take
seconds to start curl and answer); the stream is cut as soon as they are there."""


def _first_events(command: str, count: int) -> str:
    """The output of the streaming ``command`` (run in bash) once it holds ``count`` event
    lines (SSE comments, the heartbeats, not counted), or at ``STREAM_TIMEOUT_S``; then it is
    stopped. AssertionError if curl exited before that (a watch stays open)."""
    import subprocess
    import threading

    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    enough = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            events = [x for x in lines if x.strip() and not x.startswith(":")]
            if len(events) >= count:
                enough.set()
        enough.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    enough.wait(STREAM_TIMEOUT_S)
    exited = proc.poll()
    proc.kill()
    _, stderr = proc.communicate(timeout=10)
    reader.join(10)
    assert exited is None, (command, exited, stderr)
    return "".join(lines)


def test_readme_business_api_examples_run_as_written(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every curl of the README's Business API section, in order, against three nodes (its
    ports 8081-8083 moved to theirs): each exits 0 and prints what the README says after it,
    the log indexes of commands and answers moved by one constant (see ``_shifted``), remaining
    TTLs compared as numbers."""
    import subprocess

    from tests.e2e.cluster import running_cluster

    examples = business_api_examples(README.read_text())
    assert len(examples) >= 20, examples
    with running_cluster(tmp_path_factory.mktemp("readme")) as cluster:
        cluster.wait_for_leader()
        ports = {f"localhost:808{n.node_id}": f"127.0.0.1:{n.port}" for n in cluster.nodes}
        offset: int | None = None
        for command, answer in examples:
            if "https://" in command or "Authorization" in command:
                continue
            runnable = re.sub(r"localhost:808[123]", lambda m: ports[m.group(0)], command)
            runnable = _shifted(runnable, offset or 0)
            streaming = command.startswith("curl -N ")  # a watch: its first events
            runnable += " --silent --show-error --noproxy '*'"
            if streaming:
                out = _first_events(runnable, len(answer))
            else:
                result = subprocess.run(
                    ["bash", "-c", runnable],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert result.returncode == 0, (command, result.stderr)
                out = result.stdout
            if not answer:
                continue
            out = out.replace("\r\n", "\n")
            if offset is None:  # the first write: how far this cluster's indexes are moved
                found = re.fullmatch(r'\{"index":(\d+)\}', out.strip())
                documented = re.fullmatch(r'\{"index":(\d+)\}', answer[0])
                assert found and documented, (command, out, answer)
                offset = int(found.group(1)) - int(documented.group(1))
            if streaming:
                events = [
                    line
                    for line in out.splitlines()
                    if line.strip() and not line.startswith(":")  # SSE comments: heartbeats
                ]
                documented = [_shifted(line, offset) for line in answer]
                assert [_shifted(line, 0) for line in events[: len(answer)]] == documented, (
                    command,
                    out,
                )
            elif answer[0].startswith("HTTP/1.1 "):
                head, _, body = out.partition("\n\n")
                status = answer[0].split()[1]
                assert head.startswith(f"HTTP/1.1 {status}"), (command, out)
                for header in answer[1:-1]:
                    assert header.lower() in head.lower(), (command, header, out)
                assert _shifted(body, 0) == _shifted(answer[-1], offset), (command, out)
            else:
                assert _shifted(out, 0) == _shifted(answer[0], offset), (command, out)


API = ROOT / "docs" / "api.md"


def documented_example(text: str, heading: str) -> tuple[str, str]:
    """(the first ``python`` block after ``heading``, the plain block after "Output:")."""
    section = text.split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    output = re.search(r"Output:\n\n```\n(.*?)```", section, re.S)
    assert code is not None and output is not None, heading
    return code.group(1), output.group(1)


def test_api_kv2_example_runs_as_written(tmp_path: Path) -> None:
    """docs/api.md's issue-17 example (a one-node cluster of its own) prints what it says."""
    import subprocess
    import sys

    code, output = documented_example(
        API.read_text(), "## Example: indexes, compare-and-swap, TTL, a transaction"
    )
    script = tmp_path / "kv2_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output
