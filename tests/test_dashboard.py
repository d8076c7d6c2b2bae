"""The dashboard in a real headless Chromium while a pipeline runs, with a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for_port

from .test_cli import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CONFIG = """
[api]
enabled = true
port = {port}

[sources.ticks]
type = "generate"
topic = "photos"
count = 0
rate = 40.0

[operators.spread]
type = "shard"
input = "photos"
shards = 2
prefix = "photos"

[pools.resize-0]
topic = "photos-0"
scale = {{ min = 1, max = 4, interval = "500ms", half_life = "2s" }}
executor = {{ type = "python", function = "tests.helpers.tasks:slow_double", path = ["{repo}"] }}

[pools.resize-1]
topic = "photos-1"
concurrency = 2
executor = {{ type = "python", function = "tests.helpers.tasks:slow_double", path = ["{repo}"] }}

[pools.audit]
topic = "audit"
retry = {{ attempts = 1 }}
executor = {{ type = "python", function = "tests.helpers.tasks:rejects", path = ["{repo}"] }}
"""


def test_the_dashboard_shows_every_pool_and_moves(tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("no chromium here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    config = tmp_path / "photos.toml"
    config.write_text(CONFIG.format(port=port, repo=REPO) + "[topics.audit]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chute", "run", str(config)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        token = (tmp_path / ".chute" / "photos" / "api.token").read_text().strip()
        request = urllib.request.Request(
            f"{url}/v1/topics/audit/messages", data=json.dumps({"n": 1}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 201
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            page.on("request", lambda r: r.url.startswith(url) or outside.append(r.url))
            page.goto(url)
            for pool in ("resize-0", "resize-1", "audit"):
                page.wait_for_selector(f'#pools tr[data-pool="{pool}"]', timeout=15_000)
            done = page.locator('#pools tr[data-pool="resize-1"] td.done')
            first = int(done.inner_text())
            page.wait_for_function(
                f"() => Number(document.querySelector('#pools tr[data-pool=\"resize-1\"] td.done')"
                f".textContent) > {first}",
                timeout=15_000,
            )
            page.wait_for_selector("#failures td.err", timeout=15_000)
            assert "bad item" in page.locator("#failures").inner_text()
            for name in ("ticks", "spread", "photos-0", "resize-0", "audit"):
                assert name in page.locator("#graph").inner_text()
            assert "healthy" in page.locator("#shards").inner_text()
            page.wait_for_timeout(6000)  # a few seconds of history in the charts
            # CHUTE_DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's picture;
            # an ordinary run leaves the tree alone.
            shot = Path(os.environ.get("CHUTE_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            browser.close()
        assert outside == [], f"the page loaded from elsewhere: {outside}"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
