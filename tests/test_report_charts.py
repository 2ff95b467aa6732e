"""The HTML report compares: a latency percentile plot, fan-out against offered rate, the scaling
curve, resources over time, and a status grid of every scenario by spec section; no bar chart per
unit of unrelated figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.report_samples import write_sample_run


@pytest.mark.timeout(60)
def test_the_html_report_holds_every_comparing_chart_and_the_grid(tmp_path: Path) -> None:
    write_sample_run(tmp_path)
    page = (tmp_path / "conformance-report.html").read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions == [
        "GetAccount latency by percentile, connector and bare baseline",
        "Fan-out against offered rate: connector, bare and relay baselines",
        "Scaling with the number of subscribers: connector and relay baseline",
        "Memory test: resources over time",
        "Soak: resources and p99 over time, restarts marked",
    ]
    assert page.count('src="data:image/png;base64,') == len(captions)
    assert "<h2>Status by spec section</h2>" in page and "<td>§4.2</td>" in page
    assert "figures" not in " ".join(re.findall(r'alt="([^"]*)"', page))  # the old per-unit bar charts
    # the Markdown keeps its tables
    assert "| Criterion |" in (tmp_path / "conformance-report.md").read_text(encoding="utf-8")


@pytest.mark.timeout(60)
def test_charts_of_tests_that_did_not_run_are_left_out(tmp_path: Path) -> None:
    results = write_sample_run(tmp_path)
    results.outcomes = [o for o in results.outcomes if "test_latency" not in o.nodeid]
    from harness import catalogue as catalogue_module
    from harness.report.html import render_html

    page = render_html(results, catalogue_module.load(), tmp_path)
    assert "GetAccount latency by percentile" not in page
    assert "Fan-out against offered rate" in page
