"""The dashboard in a real browser: Debian's headless Chromium, driven by selenium through
Debian's chromedriver (both named by path: nothing downloads a browser or a driver), loads the
page during a real run of ``conveyor worker`` processes on a SQLite store, sees the numbers
change as tasks finish without a reload, clicks through to a task's page, and takes
screenshots (into ``$CONVEYOR_SCREENSHOTS`` when set; the README's come from
examples/dashboard_demo.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard needs conveyor[dashboard]")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (dev extra)")

from dashboard_helpers import SECRETS, cli, dashboard, secret_graph  # noqa: E402
from helpers import wait_until  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip("no chromium and chromium-driver (apt-get install chromium chromium-driver; "
                ".ci/run does)", allow_module_level=True)  # fmt: skip

GATE_MODULE = '''
import os, time

def wait_for(path):
    """Run until ``path`` exists: keeps a task running while the test looks at it."""
    while not os.path.exists(path):
        time.sleep(0.02)
'''


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1650", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def shots(tmp_path: Path) -> Path:
    where = os.environ.get("CONVEYOR_SCREENSHOTS")
    out = Path(where) if where else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def text_of(driver: Any, ident: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("id", ident).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""  # the panels were just replaced: ask again


def done_count(driver: Any) -> int:
    got = text_of(driver, "done-count").replace(",", "")
    return int(got) if got.isdigit() else -1


def click(driver: Any, link_text: str) -> bool:
    """Click the link: ``False`` when the panels were replaced under it (they are, with every
    pushed frame), to be tried again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        driver.find_element("link text", link_text).click()
        return True
    except (NoSuchElementException, StaleElementReferenceException):
        return False


def test_dashboard_in_chromium_during_a_real_run(browser: Any, tmp_path: Path) -> None:
    (tmp_path / "gate_tasks.py").write_text(GATE_MODULE)
    gate = tmp_path / "go"
    graph = secret_graph(tmp_path / "g.json", n=60, sleep=0.05)
    import json

    g = json.loads(graph.read_text())
    g["tasks"].append({"id": "gate", "fn": "gate_tasks:wait_for", "args": [str(gate)],
                       "group": "b"})  # fmt: skip
    graph.write_text(json.dumps(g))
    total = len(g["tasks"])
    db = f"sqlite:///{tmp_path / 'run.db'}"
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    out = shots(tmp_path)
    workers: list[subprocess.Popen[bytes]] = []
    with dashboard(db, "--every", "0.3", "--window", "60", cwd=tmp_path) as url:
        browser.get(url)
        wait_until(lambda: done_count(browser) == 0, 30, "the page shows the run")
        wait_until(lambda: text_of(browser, "total") == str(total), 30)
        browser.execute_script("window.__notReloaded = true;")
        for _ in range(2):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "--workers", "2",
                 "--idle-exit", "1", "-q"], cwd=tmp_path))  # fmt: skip
        # the numbers change as tasks finish, pushed into the page (no reload); the gate task
        # keeps the run from ending until the test lets it
        wait_until(lambda: 0 < done_count(browser) < total, 60, "done counts up")
        assert browser.execute_script("return window.__notReloaded === true;")
        wait_until(lambda: text_of(browser, "conn") == "live", 30)
        # click through: the gate task runs (it waits for a file) and is linked from Workers
        wait_until(lambda: browser.find_elements("link text", "gate"), 60, "gate runs")
        browser.save_screenshot(str(out / "dashboard.png"))
        wait_until(lambda: click(browser, "gate"), 30, "a click on the gate link")
        wait_until(lambda: text_of(browser, "task-id") == "gate", 30, "the task page")
        assert text_of(browser, "task-state") == "running"
        assert "gate_tasks:wait_for" in browser.page_source
        browser.save_screenshot(str(out / "task.png"))
        browser.get(url.split("?")[0].rstrip("/") + "/task/secretive")
        wait_until(lambda: text_of(browser, "task-id") == "secretive", 30)
        assert "OPENAI_API_KEY" in browser.page_source
        assert not any(s in browser.page_source for s in SECRETS)
        # back on the dashboard, let the run finish: the page follows it to the end
        browser.get(url)
        wait_until(lambda: 0 < done_count(browser) < total, 30, "the page shows the run")
        browser.execute_script("window.__notReloaded = true;")
        gate.touch()
        wait_until(lambda: done_count(browser) == total, 60, "the run ends on the page")
        assert browser.execute_script("return window.__notReloaded === true;")
        for w in workers:
            assert w.wait(timeout=60) == 0
        browser.save_screenshot(str(out / "dashboard-done.png"))
    for name in ("dashboard.png", "task.png", "dashboard-done.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
