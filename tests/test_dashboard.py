"""``conveyor dashboard`` and ``conveyor report`` as processes on real SQLite stores, over real
HTTP: the pages, the pushed frames, the token, what is never shown, bad input."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard needs conveyor[dashboard]")
pytest.importorskip("uvicorn", reason="the dashboard needs conveyor[dashboard]")

from dashboard_helpers import SECRETS, base, cli, dashboard, get, secret_graph, summary
from helpers import wait_until


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished run: submitted and worked off by a real worker process (read only by the
    tests that share it)."""
    tmp_path = tmp_path_factory.mktemp("run")
    db = f"sqlite:///{tmp_path / 'run.db'}"
    secret_graph(tmp_path / "g.json")
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    done = cli("worker", "--db", db, "--workers", "2", "--idle-exit", "0.5", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return db


def test_dashboard_serves_the_run_and_never_shows_secrets(run_db: str, tmp_path: Path) -> None:
    with dashboard(run_db, cwd=tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        got = wait_until(lambda: (s := summary(url)).get("counts", {}).get("done") and s, 30)
        assert got["graph"] == "dash" and got["counts"]["done"] == 7 and got["total"] == 7
        code, page, headers = get(url)
        assert code == 200 and 'id="done-count">7<' in page
        assert "Fair share" in page and "Timeline" in page and "Workers" in page
        assert "script-src" not in headers["content-security-policy"]  # 'self' only
        code, task, _ = get(base(url) + "/task/secretive")
        assert code == 200 and "OPENAI_API_KEY" in task and 'id="task-state">done<' in task
        assert '<a href="/task/t0">t0</a>' in task  # its parents link to their pages
        assert "task_finished" in task  # the history: audit rows
        for page_text in (page, task):
            for secret in SECRETS:
                assert secret not in page_text
        assert get(base(url) + "/task/nope")[0] == 404
        # /metrics: the store's state in Prometheus' text format (observe/prometheus.py)
        from prometheus_client.parser import text_string_to_metric_families

        code, text, _ = get(base(url) + "/metrics")
        assert code == 200
        tasks = {f.name: f for f in text_string_to_metric_families(text)}["conveyor_tasks"]
        assert {s.labels["state"]: s.value for s in tasks.samples}["done"] == 7


def test_dashboard_pushes_frames_as_server_sent_events(run_db: str, tmp_path: Path) -> None:
    import urllib.request

    with dashboard(run_db, "--every", "0.2", cwd=tmp_path) as url:
        with urllib.request.urlopen(base(url) + "/events", timeout=30) as stream:
            versions = []
            while len(versions) < 3:
                line = stream.readline().decode()
                if line.startswith("data: "):
                    frame = json.loads(line[6:])
                    assert 'id="done-count"' in frame["html"]
                    versions.append(frame["version"])
        assert versions == sorted(versions) and len(set(versions)) == 3


def test_dashboard_reason_page_lists_the_waiting_tasks(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'run.db'}"
    secret_graph(tmp_path / "g.json")
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    with dashboard(db, cwd=tmp_path) as url:
        reasons = wait_until(lambda: summary(url).get("reasons"), 30)
        assert reasons.get("waiting_on_parents") == 1
        code, page, _ = get(base(url) + "/reason/waiting_on_parents")
        assert code == 200 and '<a href="/task/secretive">secretive</a>' in page
        assert get(base(url) + "/reason/UNKNOWN")[0] == 404
        code, page, _ = get(url)
        assert '<a href="/reason/waiting_on_parents">' in page


def test_dashboard_beyond_loopback_needs_allow_remote_and_a_token(
    run_db: str, tmp_path: Path
) -> None:
    refused = cli("dashboard", "--db", run_db, "--host", "0.0.0.0", cwd=tmp_path)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    with dashboard(run_db, "--host", "0.0.0.0", "--allow-remote", cwd=tmp_path) as url:
        token = re.search(r"token=([\w-]+)", url)
        assert token, url  # made up and printed
        plain = base(url).replace("0.0.0.0", "127.0.0.1")
        for path in ("/", "/api/summary", "/events", "/task/t0", "/static/live.js"):
            assert get(plain + path)[0] == 401, path
        assert get(plain + "/?token=wrong")[0] == 401
        code, _, headers = get(plain + f"/?token={token.group(1)}")
        assert code == 200 and "conveyor_token=" in headers.get("set-cookie", "")
        assert get(plain + "/task/t0", {"Cookie": f"conveyor_token={token.group(1)}"})[0] == 200
        auth = {"Authorization": f"Bearer {token.group(1)}"}
        assert get(plain + "/api/summary", auth)[0] == 200


def test_dashboard_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = cli("dashboard", "--db", f"sqlite:///{tmp_path / 'nope.db'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no store there" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # a viewer creates nothing
    db = f"sqlite:///{tmp_path / 'run.db'}"
    secret_graph(tmp_path / "g.json")
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        busy = cli("dashboard", "--db", db, "--port", port, cwd=tmp_path)
    assert busy.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in busy.stderr
    for bad in (missing, busy):
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_dashboard_ctrl_c_exits_130(run_db: str, tmp_path: Path) -> None:
    """Ctrl-C stops the server like every other command: exit 130 with one line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "dashboard", "--db", run_db, "--port", "0"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    url = re.search(r"(http://\S+)", proc.stderr.readline())
    assert url, "the dashboard did not start"
    assert get(base(url.group(1)) + "/api/summary")[0] == 200  # serving: its handlers are set
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert rc == 130 and rest.strip() == "conveyor: interrupted", (rc, rest)


def test_report_is_one_self_contained_file_with_pngs(run_db: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--png needs conveyor[dashboard]'s matplotlib")
    out = tmp_path / "run.html"
    got = cli("report", "--db", run_db, "-o", str(out), "--png", str(tmp_path / "png"),
              cwd=tmp_path)  # fmt: skip
    assert got.returncode == 0, got.stderr
    html = out.read_text()
    assert 'id="done-count">7<' in html and "<svg" in html and "Timeline" in html
    # nothing to fetch: no scripts, no external stylesheets, images or links
    assert "<script" not in html and "<link" not in html
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert all(not r.startswith(("http:", "https:", "//")) for r in refs), refs
    assert not re.search(r'href="/', html)  # no links back to a server
    for secret in SECRETS:
        assert secret not in html
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["done.png", "fair_share.png", "throughput.png", "timeline.png"]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert out.stat().st_mode & 0o077 == 0  # it names tasks and errors: owner only


def test_report_bad_targets_are_one_line_and_leave_nothing_behind(
    run_db: str, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    before = set(tmp_path.iterdir())
    for args, said in (
        (["-o", str(tmp_path / "adir")], "is a directory"),
        (["-o", str(tmp_path / "r.html"), "--png", str(tmp_path / "afile")], "not a directory"),
    ):
        got = cli("report", "--db", run_db, *args, cwd=tmp_path)
        assert got.returncode == 2 and said in got.stderr, got.stderr
        assert len(got.stderr.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == before  # no report, no temporary file


def test_dashboard_shows_a_table_build(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[1] / "examples" / "table_reviews.py"
    out = tmp_path / "reviews"
    built = cli("build", str(spec), "--records", "2000", "--out", str(out), "--format", "jsonl",
                "--quiet", cwd=tmp_path, timeout=120)  # fmt: skip
    assert built.returncode == 0, built.stderr
    with dashboard(None, "--build", str(out), cwd=tmp_path) as url:
        b = wait_until(lambda: summary(url).get("build"), 30)
        written = len(list(out.glob("part-*.meta.json")))
        assert (b["table"], b["rows_kept"], b["row_groups"]) == ("reviews", 2000, written)
        assert b["complete"] and b["dropped"]["review"]  # the example drops some reviews
        page = get(url)[1]
        assert 'id="build-rows">2,000<' in page and "cheap and one star" in page


@pytest.mark.postgres
def test_dashboard_and_report_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    secret_graph(tmp_path / "g.json")
    assert cli("submit", "g.json", "--db", pg_url, cwd=tmp_path).returncode == 0
    with dashboard(pg_url, cwd=tmp_path) as url:
        assert wait_until(lambda: summary(url).get("total"), 30) == 7  # after the first read
        done = cli("worker", "--db", pg_url, "--idle-exit", "0.5", "-q", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        # the page follows the run on its read-only PostgreSQL session
        wait_until(lambda: summary(url).get("counts", {}).get("done") == 7, 30, "all done")
        assert get(base(url) + "/task/secretive")[0] == 200
    out = tmp_path / "run.html"
    got = cli("report", "--db", pg_url, "-o", str(out), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert 'id="done-count">7<' in out.read_text()


ENDPOINT_JOBS = """
import asyncio

import httpx

import conveyor

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


async def call(url: str) -> None:
    ctx = conveyor.current()
    async with httpx.AsyncClient(timeout=30) as client:
        for attempt in range(1, 1000):
            async with ctx.acquire() as slot:
                resp = await client.post(url + "/chat/completions", json=BODY)
                slot.report(resp)
            if resp.status_code == 200:
                return
            await asyncio.sleep(slot.retry_delay(attempt) or 0.0)
"""


def test_dashboard_follows_an_endpoints_limit_during_a_real_run(tmp_path: Path) -> None:
    """Real workers call a real (fake) LLM server through their endpoint limiter; the page
    shows the endpoint's limit, in flight and 429s, as the workers report them."""
    from conveyor.testing.fake_llm import FakeLLM

    key = "fake/fake-model/chat"
    (tmp_path / "jobs.py").write_text(ENDPOINT_JOBS)
    db = f"sqlite:///{tmp_path / 'run.db'}"
    with FakeLLM(capacity=3, latency=0.05, retry_after=0.2) as llm:
        tasks = [{"id": f"t{i}", "fn": "jobs:call", "args": [llm.url], "endpoint": key}
                 for i in range(90)]  # fmt: skip
        (tmp_path / "g.json").write_text(json.dumps({"name": "llm", "tasks": tasks}))
        assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
        with dashboard(db, "--every", "0.3", cwd=tmp_path) as url:
            done = cli("worker", "--db", db, "-q", "--workers", "8", "--lease", "3",
                       cwd=tmp_path, timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stderr
            ep = wait_until(lambda: summary(url).get("endpoints", {}).get(key), 30, "the report")
            assert ep["limit"] >= 1 and ep["workers"] == 1
            assert 0 < ep["rate_limited"] <= llm.stats().rate_limited  # capacity 3 < 8 slots

            def shown() -> str | None:  # the page's row agrees with the summary of its frame
                limit = summary(url)["endpoints"][key]["limit"]
                page = get(url)[1]
                return page if f"<td>{key}</td><td class=n>{limit}</td>" in page else None

            page = wait_until(shown, 30, "the endpoint's row on the page")
            assert "Adaptive limit and in flight" in page and "429s per minute" in page
