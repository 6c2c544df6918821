"""A run to watch: 367 tasks in three groups with weights and caps (and six that fail after
retries) on a SQLite store, worked off by three ``conveyor worker`` processes while
``conveyor dashboard`` serves the page; at the end, ``conveyor report`` writes run.html.

    python examples/dashboard_demo.py [DIR]            # then open the URL it prints
    python examples/dashboard_demo.py DIR --screenshots docs/images   # what the README shows

``--screenshots`` drives Debian's headless Chromium through selenium (``chromium`` and
``chromium-driver`` packages; nothing is downloaded) and saves dashboard.png (mid-run),
task.png (a failed task's page) and report.png.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


def write_graph(path: Path) -> None:
    rng = random.Random(4)
    tasks: list[dict[str, Any]] = [
        {
            "id": f"{g}-{i:03d}",
            "fn": "time:sleep",
            "args": [round(rng.uniform(0.2, 0.9), 2)],
            "group": g,
        }
        for i, g in ((i, ("alice", "bob", "carol")[i % 3]) for i in range(360))
    ]
    tasks += [
        {"id": f"flaky-{i}", "cmd": "sh -c 'exit 3'", "retries": 2, "group": "bob"}
        for i in range(6)
    ]
    tasks.append(
        {
            "id": "summary",
            "fn": "time:sleep",
            "args": [0.1],
            "parents": [t["id"] for t in tasks[:30]],
            "env": {"OPENAI_API_KEY": "sk-demo-never-shown-0123456789"},
        }
    )
    groups = {
        "alice": {"weight": 2, "cap": 4},
        "bob": {"weight": 1},
        "carol": {"weight": 1, "cap": 2},
    }
    path.write_text(json.dumps({"name": "nightly-eval", "groups": groups, "tasks": tasks}))


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1720",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=Path("dashboard-demo"))
    ap.add_argument("--screenshots", type=Path, help="save the pages as PNG here (selenium)")
    ap.add_argument("--after", type=float, default=14.0, help="seconds before the screenshot")
    args = ap.parse_args()
    wd: Path = args.dir.resolve()
    wd.mkdir(parents=True, exist_ok=True)
    write_graph(wd / "graph.json")
    db = f"sqlite:///{wd / 'demo.db'}"
    subprocess.run(
        [*CONVEYOR, "submit", str(wd / "graph.json"), "--db", db, "--replace"], check=True
    )
    dash = subprocess.Popen(
        [*CONVEYOR, "dashboard", "--db", db, "--port", "0", "--window", "120"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert dash.stderr is not None
    line = dash.stderr.readline()
    print(line.strip())
    found = re.search(r"(http://\S+)", line)
    if found is None:
        return 2
    url = found.group(1)
    gpu = ["--labels", "gpu=a100", "--resources", "gpu=2"]
    workers = [
        subprocess.Popen(
            [*CONVEYOR, "worker", "--db", db, "--workers", "3", "-q", "--idle-exit", "2", *extra]
        )
        for extra in ([], gpu, [])
    ]
    shots = args.screenshots
    driver = browser() if shots is not None else None
    try:
        if driver is not None and shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            driver.get(url)
            time.sleep(args.after)  # a demo's pacing, not a synchronisation
            driver.save_screenshot(str(shots / "dashboard.png"))
        for w in workers:
            w.wait()
        report = wd / "run.html"
        subprocess.run(
            [*CONVEYOR, "report", "--db", db, "-o", str(report), "--png", str(wd / "png")],
            check=True,
        )
        if driver is not None and shots is not None:
            driver.get(url.rstrip("/") + "/task/flaky-0")
            driver.save_screenshot(str(shots / "task.png"))
            driver.get(report.as_uri())
            driver.save_screenshot(str(shots / "report.png"))
        else:
            print(f"the run is done; {url} still shows it (Ctrl-C stops it)")
            dash.wait()
    finally:
        if driver is not None:
            driver.quit()
        dash.terminate()
        dash.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
