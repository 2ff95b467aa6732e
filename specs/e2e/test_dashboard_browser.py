"""§5.1 dashboard in a real browser (5.1.1.x1): live_server's page shows a new update without a reload.

Headless Chromium from the system (Debian's /usr/bin/chromium; nothing is downloaded) is driven by
Playwright: open the dashboard, wait until it says it is connected, trigger an account and a
position update in the mock exchange, and wait for the page to show the new values while it makes
no second page load. A screenshot is kept under the report folder (--report-dir) and, with
UPDATE_DOCS_SCREENSHOT=1, also as docs/dashboard.png.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, expect

from harness.browser import open_page, require_chromium
from harness.doubles.mock_exchange import spec_account, spec_positions
from specs.e2e.conftest import Stack, account_update, position_update

LIVE_DASHBOARD = "5.1.1.x1"
ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
PAGE_WAIT_MS = 20_000  # a browser start and a WebSocket connect on a busy two-core host

pytestmark = pytest.mark.e2e


@pytest.fixture
def chromium() -> Path:
    return require_chromium()


@pytest.fixture
def page(chromium: Path) -> Iterator[Page]:
    with open_page(1280, 720) as opened:
        yield opened


@pytest.mark.scenario(LIVE_DASHBOARD)
@pytest.mark.requires("dashboard")
@pytest.mark.timeout(120)
def test_dashboard_shows_a_new_update_without_a_reload(
    chromium: Path, live_stack: Stack, page: Page, request: pytest.FixtureRequest
) -> None:
    # (fixture order: skip before starting anything; the browser closes before the stack stops)
    page_loads: list[str] = []

    def on_request(browser_request: Request) -> None:
        if browser_request.resource_type == "document":
            page_loads.append(browser_request.url)

    page.on("request", on_request)
    screenshot = Path(request.config.getoption("report_dir")) / "e2e" / "dashboard.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{live_stack.base_url}/", wait_until="load", timeout=PAGE_WAIT_MS)
        expect(page.locator("#connection-status"), "dashboard connection state").to_have_attribute(
            "data-state", "connected", timeout=PAGE_WAIT_MS
        )
        total_balance = page.locator('[data-account-field="total_balance"]')
        mark_price = page.locator('tr[data-symbol="BTCUSDT"] [data-position-field="mark_price"]')
        # the snapshot first: the mock exchange's starting data (the spec's §8 account and positions)
        initial_mark = next(p.mark_price for p in spec_positions() if p.symbol == "BTCUSDT")
        expect(total_balance, "total balance before the update").to_have_text(
            spec_account().total_balance, timeout=PAGE_WAIT_MS
        )
        expect(mark_price, "BTCUSDT mark price before the update").to_have_text(
            initial_mark, timeout=PAGE_WAIT_MS
        )

        account, sent_account = account_update(seed=5)
        position, sent_position = position_update(seed=5)
        live_stack.mock.trigger_account_update(account)
        live_stack.mock.trigger_position_update(position)
        expect(total_balance, "total balance after the update, without a reload").to_have_text(
            sent_account.fields["total_balance"], timeout=PAGE_WAIT_MS
        )
        expect(mark_price, "BTCUSDT mark price after the update, without a reload").to_have_text(
            sent_position.fields["mark_price"], timeout=PAGE_WAIT_MS
        )
        assert len(page_loads) == 1, (
            f"expected the page loaded once (updates arrive without a reload), "
            f"got {len(page_loads)} page loads: {page_loads}"
        )
    finally:
        with contextlib.suppress(PlaywrightError):  # a browser that died must not hide why
            page.screenshot(path=str(screenshot), animations="disabled")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
