"""Headless Chromium from the system (Debian's /usr/bin/chromium, never a downloaded browser),
driven by Playwright, for the tests that look at a page: the dashboard and the HTML report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# without the background-networking flags Chromium keeps calling out to hosts this machine cannot reach
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAUNCH_TIMEOUT_MS = 60_000


def require_chromium() -> Path:
    """The system's Chromium; the test is skipped, as an environment limit, when it is missing."""
    import pytest

    if not CHROMIUM.is_file():
        pytest.skip(f"environment: no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@contextmanager
def open_page(width: int, height: int) -> Iterator[Any]:
    """A new page of a fresh headless Chromium, closed (browser and all) on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            yield context.new_page()
            context.close()
        finally:
            browser.close()
