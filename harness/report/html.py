"""The conformance report as one self-contained HTML page: the §10 table, a status grid of every
scenario by spec section, charts that compare (harness.report.charts: PNG, inlined), the measured
figures, and every scenario's row."""

from __future__ import annotations

import html
from pathlib import Path

from harness.catalogue import Catalogue
from harness.report.charts import charts
from harness.report.grid import COLOURS, render_grid
from harness.report.grid import STYLE as GRID_STYLE
from harness.report.json_report import render_json
from harness.report.results import RunResults

# the grid's colours; a "not run" badge carries white text, so its grey is darker than the grid's cell
_COLOURS = {**COLOURS, "not-run": "#afb8c1"}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328;max-width:1100px}
table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;font-size:14px}
th{background:#f6f8fa}.s{color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}
img{max-width:100%;border:1px solid #d0d7de;margin:.5rem 0}figure{margin:1rem 0}figcaption{font-size:13px;color:#57606a}
"""


def render_html(results: RunResults, catalogue: Catalogue, directory: Path | None = None) -> str:
    """The page; `directory` (the report folder) holds the details behind the charts."""
    data = render_json(results, catalogue)
    env = data["environment"]
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Conformance: {esc(results.sut_name)}</title>",
        f"<style>{_STYLE}{GRID_STYLE}</style></head><body>",
        f"<h1>Conformance report: {esc(results.sut_name)}</h1>",
        f"<p>{esc(str(catalogue.spec.get('title', '')))} v{esc(str(catalogue.spec.get('version', '')))} · "
        f"Python {esc(env['python'])}, grpcio {esc(env['grpcio'])}, {env['cpus']} CPUs · "
        f"manifest <code>{esc(results.sut_digest[:16])}</code> · {data['duration_s']:.1f} s</p>",
        "<h2>Success criteria (spec §10)</h2><table><tr><th>Criterion</th><th>Target</th><th>Measured</th><th>Status</th></tr>",
    ]
    for row in data["criteria"]:
        verdict = row["status"]
        colour = _COLOURS["passed" if verdict == "PASS" else "failed" if verdict == "FAIL" else "not-run"]
        parts.append(
            f"<tr><td>{esc(row['title'])}</td><td>{esc(row['target'])}</td><td>{esc(row['measured'])}</td>"
            f"<td><span class='s' style='background:{colour}'>{esc(verdict)}</span></td></tr>"
        )
    parts.append("</table><h2>Status by spec section</h2>")
    parts.append(render_grid([row for row in data["scenarios"] if row["subject"] == "sut"]))
    drawn = charts(results, directory) if directory is not None else []
    if drawn:
        parts.append("<h2>Compared</h2>")
        parts.extend(drawn)
    parts.append("<h2>Measured figures</h2>")
    parts.append(_figures_table(results))
    for subject, heading in (
        ("sut", "Scenarios"),
        ("suite", "The suite's own checks (§4.3; not counted for the SUT)"),
    ):
        rows = [row for row in data["scenarios"] if row["subject"] == subject]
        if not rows:
            continue
        parts.append(
            f"<h2>{esc(heading)}</h2><table><tr><th>ID</th><th>Level</th><th>Title</th><th>Status</th>"
            "<th>Reason</th><th>s</th></tr>"
        )
        for row in rows:
            colour = _COLOURS.get(row["status"], "#6e7781")
            duration = "" if row["duration_s"] is None else f"{row['duration_s']:.2f}"
            parts.append(
                f"<tr><td>{esc(row['id'])}</td><td>{esc(str(row['level']))}</td><td>{esc(row['title'])}</td>"
                f"<td><span class='s' style='background:{colour}'>{esc(row['status'])}</span></td>"
                f"<td>{esc(str(row['reason']))}</td><td>{duration}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures_table(results: RunResults) -> str:
    latest = {m.name: m for m in results.metrics}
    if not latest:
        return "<p>No figures were measured in this run.</p>"
    esc = html.escape
    rows = "".join(
        f"<tr><td><code>{esc(m.name)}</code></td><td>{m.value:.4g} {esc(m.unit)}</td>"
        f"<td>{esc(', '.join(m.scenario_ids))}</td></tr>"
        for m in sorted(latest.values(), key=lambda m: m.name)
    )
    return f"<table><tr><th>Figure</th><th>Value</th><th>Scenarios</th></tr>{rows}</table>"
