"""The status grid: every scenario of the catalogue as a small coloured cell, one row per spec
section, so a reader sees at a glance where a run passed, failed, was not applicable or hit a
known failure."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from harness.outcomes import FAILING, Status

COLOURS = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "error": "#cf222e",
    "known-failure": "#9a6700",
    "stale-known-failure": "#cf222e",
    "hung": "#82071e",
    "inconclusive": "#bc4c00",
    "not-applicable": "#6e7781",
    "skipped": "#6e7781",
    "pending": "#8250df",
    "not-run": "#d0d7de",
}
STYLE = (
    ".grid td.cells{line-height:0}.cell{display:inline-block;width:14px;height:14px;margin:1px;border-radius:2px}"
    ".legend .cell{vertical-align:middle}"
)


def _section_key(section: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in section.split("."))


def render_grid(scenarios: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table: per section, its scenarios' cells (hover for ID, title and status) and counts."""
    esc = html.escape
    sections: dict[str, list[Mapping[str, Any]]] = {}
    for row in scenarios:
        sections.setdefault(str(row["section"]), []).append(row)
    legend = " ".join(
        f"<span class='cell' style='background:{colour}'></span> {esc(status)}"
        for status, colour in COLOURS.items()
        if status not in ("error", "skipped", "stale-known-failure")
    )
    parts = [
        f"<p class='legend'>{legend}</p>",
        "<table class='grid'><tr><th>Section</th><th>Scenarios</th><th>Passed</th><th>Not passing</th></tr>",
    ]
    for section in sorted(sections, key=_section_key):
        rows = sections[section]
        cells = "".join(
            f"<span class='cell' style='background:{COLOURS.get(str(r['status']), '#6e7781')}' "
            f"title='{esc(str(r['id']))}: {esc(str(r['title']))} ({esc(str(r['status']))})'></span>"
            for r in rows
        )
        passed = sum(1 for r in rows if r["status"] == "passed")
        failing = sum(1 for r in rows if r["status"] in FAILING or r["status"] == Status.INCONCLUSIVE)
        parts.append(
            f"<tr><td>§{esc(section)}</td><td class='cells'>{cells}</td><td>{passed}/{len(rows)}</td>"
            f"<td>{failing or ''}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)
