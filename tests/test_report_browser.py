"""The HTML report in a real browser: headless Chromium (the system's /usr/bin/chromium through
Playwright, as the dashboard test drives it) opens a sample run's report, and every chart must
have rendered (an image with a size and pixels that are not all one colour) beside the status grid.
A screenshot is kept under the test's folder; docs/report.png is taken from a real run's report by
tools/report_screenshot.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.browser import open_page, require_chromium
from tests.report_samples import write_sample_run

# each image drawn on a canvas: its size, and how many distinct colours a sample of its pixels has
MEASURE_IMAGES = """() => Array.from(document.images).map(img => {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  if (!img.complete || !img.naturalWidth) return {alt: img.alt, width: 0, height: 0, colours: 0};
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < data.length && colours.size < 16; i += 4 * 97) colours.add(data[i] << 16 | data[i+1] << 8 | data[i+2]);
  return {alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, colours: colours.size};
})"""


@pytest.fixture
def page() -> Iterator[object]:
    require_chromium()
    with open_page(1280, 900) as opened:
        yield opened


@pytest.mark.timeout(120)
def test_the_report_charts_render_in_chromium(tmp_path: Path, page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    write_sample_run(tmp_path)
    page.goto((tmp_path / "conformance-report.html").as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate(MEASURE_IMAGES)
    assert len(images) == 5, f"expected the report's 5 charts, got {[i['alt'] for i in images]}"
    blank = [i for i in images if i["width"] < 200 or i["height"] < 100 or i["colours"] < 3]
    assert not blank, f"expected every chart drawn (a size and more than flat colour), got {blank}"
    cells = page.locator("table.grid .cell").count()
    assert cells > 100, f"expected a grid cell per scenario, got {cells}"
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
