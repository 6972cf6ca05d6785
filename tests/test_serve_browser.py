"""The web UI in headless Chromium (Debian's, driven by Playwright): submit a toy job through
the form, watch it reach done, open its compare page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.serve_helpers import start_server, stop_server, toy_yaml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's)"
)
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
DONE_MS = 240_000


def test_a_job_submitted_through_the_form_reaches_done_and_opens_its_compare_page(
    tmp_path: Path,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    server = start_server(tmp_path / "state", "--workers", "1")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            )  # fmt: skip
            page = browser.new_page()
            page.goto(f"{server.url}/submit")
            page.select_option("#kind", "toy")
            page.fill("#config", toy_yaml().replace("arch: topk", "arch: tokp"))
            page.click("#submit")
            assert "config key 'sae.arch'" in page.inner_text("#error")  # shown inline
            assert page.input_value("#config").count("arch: tokp") == 1  # the text is kept

            page.fill("#config", toy_yaml())
            page.click("#submit")
            page.wait_for_url(re.compile(r"/jobs/\d+$"))
            page.wait_for_selector("#state.done", timeout=DONE_MS)  # live, then reloaded
            assert page.locator("#curves canvas").count() == 4
            assert "explained_variance" in page.inner_text("table.metrics")

            page.click("#compare-link")
            page.wait_for_url(re.compile(r"/compare\?ids=\d+$"))
            assert page.locator("#compare tbody tr").count() == 1
            assert page.locator("#pareto canvas").count() == 2  # EV and f1 (a ground-truth job)
            assert page.locator("#overlay canvas").count() == 3
            browser.close()
    finally:
        stop_server(server)
