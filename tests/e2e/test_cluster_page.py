"""The live cluster page (``GET /`` on the health port) in a real headless browser, against a
real three-node cluster: it finds the other nodes by itself, renders the three and marks the
leader, charts the writes, and shows a killed node as down.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it on a
best-effort basis); without a browser the browser tests skip, saying so.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import Cluster, free_ports

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless browser (chromium) installed: apt-get install -y chromium",
)
BROWSER_TIMEOUT_S = 120.0
VIRTUAL_TIME_MS = 8000
"""Page time the browser lets pass (its clock runs fast while nothing is loading): eight
polls, enough for rates over several samples."""
CHART_HEIGHT = 180


def consecutive_free_ports(count: int) -> int:
    """A base port such that ``base + 1 .. base + count`` are free right now."""
    for _ in range(100):
        (base,) = free_ports(1)
        socks: list[socket.socket] = []
        try:
            for port in range(base + 1, base + count + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free ports found")


@pytest.fixture(scope="module")
def page_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes whose health ports are ``base + node_id``, the layout the page assumes
    when it is not told the endpoints (as ``make start-cluster``'s 10001..10003)."""
    c = Cluster(tmp_path_factory.mktemp("page"))
    base = consecutive_free_ports(len(c.nodes))
    for node in c.nodes:
        node.health.close()
        node.health_port = base + node.node_id
        node.health = httpx.Client(base_url=f"http://127.0.0.1:{node.health_port}", timeout=10,
                                   trust_env=False)  # fmt: skip
    try:
        c.start()
        c.wait_for_leader()
        yield c
    finally:
        c.stop()


class Rows(HTMLParser):
    """The node rows (``<tr data-endpoint=...>``) of a dumped page, the banner and the chart."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.lines: dict[str, str] = {}
        self.banner = ""
        self._in_banner = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-endpoint" in a:
            self.rows.append(a)
        elif tag == "polyline" and a.get("id", "").startswith("line-"):
            self.lines[a["id"]] = a.get("points", "")
        self._in_banner = a.get("id") == "banner"

    def handle_data(self, data: str) -> None:
        if self._in_banner:
            self.banner += data


def browse(url: str, tmp_path: Path, *extra: str) -> str:
    """Run headless chromium on ``url``; its ``--dump-dom`` (or '' with ``--screenshot``)."""
    assert BROWSER is not None
    result = subprocess.run(
        [
            BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'browser-profile'}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}", *extra, url,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def dump(url: str, tmp_path: Path) -> Rows:
    parsed = Rows()
    parsed.feed(browse(url, tmp_path, "--dump-dom"))
    return parsed


def endpoints(c: Cluster) -> str:
    return ",".join(f"http://127.0.0.1:{n.health_port}" for n in c.nodes)


def test_the_page_and_status_headers(page_cluster: Cluster) -> None:
    """No browser needed: the page is one self-contained document, /status is readable from
    the page's origin when it is another node's."""
    node = page_cluster.nodes[0]
    page = node.health.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'unsafe-inline'" in page.headers["content-security-policy"]
    # Self-contained: nothing loaded from elsewhere (and the CSP would refuse it).
    assert re.search(r"\b(src|href)\s*=", page.text) is None
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for path in ("/status", "/metrics"):
        assert node.health.get(path).headers["access-control-allow-origin"] == "*"
    status = node.health.get("/status").json()
    assert [m["id"] for m in status["members"]] == [n.node_id for n in page_cluster.nodes]
    assert isinstance(status["has_quorum"], bool)


@needs_browser
def test_the_page_renders_the_three_nodes_and_marks_the_leader(
    page_cluster: Cluster, tmp_path: Path
) -> None:
    c = page_cluster
    leader = c.wait_for_leader()
    # A follower's page, without ?endpoints=: it finds the other nodes by itself.
    follower = c.followers(leader)[0]
    stop = threading.Event()

    def write() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{leader.port}", trust_env=False) as kv:
            for i in range(5000):  # bounded; stopped as soon as the browser is done
                if stop.is_set():
                    return
                kv.post("/kv", json={"key": f"page-{i}", "value": "x"})
                kv.get(f"/kv/page-{i}")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        page = dump(f"http://127.0.0.1:{follower.health_port}/", tmp_path)
    finally:
        stop.set()
        writer.join()

    assert [r.get("data-node-id") for r in page.rows] == ["1", "2", "3"], page.rows
    leaders = [r for r in page.rows if r.get("data-role") == "leader"]
    assert [r["data-node-id"] for r in leaders] == [str(leader.node_id)]
    assert leaders[0].get("class") == "leader"
    assert {r["data-role"] for r in page.rows if r is not leaders[0]} == {"follower"}
    assert page.banner.startswith(f"Leader: node {leader.node_id} (term ")
    # Writes were charted: some point of the writes line is above the zero line.
    points = [p.split(",") for p in page.lines["line-writes"].split()]
    assert points, page.lines
    assert any(float(y) < CHART_HEIGHT for _, y in points), points
    assert "line-reads" in page.lines


@needs_browser
def test_a_killed_node_is_shown_down_and_the_new_leader_marked(
    page_cluster: Cluster, tmp_path: Path
) -> None:
    c = page_cluster
    leader = c.wait_for_leader()
    leader.kill()
    new_leader = c.wait_for_leader()
    page = dump(f"http://127.0.0.1:{new_leader.health_port}/?endpoints={endpoints(c)}", tmp_path)
    by_endpoint = {r["data-endpoint"]: r for r in page.rows}
    assert len(by_endpoint) == 3
    assert by_endpoint[f"http://127.0.0.1:{leader.health_port}"]["data-role"] == "down"
    assert by_endpoint[f"http://127.0.0.1:{new_leader.health_port}"]["data-role"] == "leader"
    assert page.banner.startswith(f"Leader: node {new_leader.node_id} ")


@needs_browser
def test_screenshot(page_cluster: Cluster, tmp_path: Path) -> None:
    """The page draws (a PNG is written); kept under the test's tmp_path for a look."""
    node = page_cluster.alive()[0]
    shot = tmp_path / "cluster-page.png"
    browse(f"http://127.0.0.1:{node.health_port}/", tmp_path, "--hide-scrollbars",
           "--window-size=1280,800", f"--screenshot={shot}")  # fmt: skip
    assert shot.read_bytes().startswith(b"\x89PNG")
