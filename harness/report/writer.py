"""Writes a run's reports (JSON, Markdown, HTML) into one folder."""

from __future__ import annotations

from pathlib import Path

from harness.catalogue import Catalogue
from harness.report.html import render_html
from harness.report.json_report import write_json
from harness.report.markdown import render_markdown
from harness.report.results import RunResults


def write_reports(results: RunResults, catalogue: Catalogue, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_json(results, directory / "conformance-report.json", catalogue)
    (directory / "conformance-report.md").write_text(render_markdown(results, catalogue), encoding="utf-8")
    (directory / "conformance-report.html").write_text(
        render_html(results, catalogue, directory), encoding="utf-8"
    )
