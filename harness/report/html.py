"""The conformance report as one self-contained HTML page: the §10 table, every scenario, and
plots of the measured latencies and throughputs (PNG, inlined)."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict

from harness.catalogue import Catalogue
from harness.report.json_report import render_json
from harness.report.results import Metric, RunResults

_COLOURS = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "error": "#cf222e",
    "known-failure": "#9a6700",
    "not-applicable": "#6e7781",
    "skipped": "#6e7781",
    "pending": "#8250df",
    "not-run": "#afb8c1",
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328;max-width:1100px}
table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;font-size:14px}
th{background:#f6f8fa}.s{color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}
img{max-width:100%;border:1px solid #d0d7de;margin:.5rem 0}
"""


def _plot(title: str, metrics: list[Metric], unit: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a test dependency
        return None
    names = [m.name for m in metrics]
    values = [m.value for m in metrics]
    figure, axes = plt.subplots(figsize=(9, 0.4 * len(names) + 1.2))
    axes.barh(names, values, color="#0969da")
    axes.set_xlabel(unit)
    axes.set_title(title)
    for index, value in enumerate(values):
        axes.text(value, index, f" {value:.3g}", va="center", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(results: RunResults) -> list[str]:
    latest: dict[str, Metric] = {m.name: m for m in results.metrics}
    by_unit: dict[str, list[Metric]] = defaultdict(list)
    for metric in latest.values():
        by_unit[metric.unit or "value"].append(metric)
    out = []
    titles = {"ms": "Latency", "msg/s": "Throughput", "MB": "Memory", "s": "Durations"}
    for unit, metrics in sorted(by_unit.items()):
        image = _plot(f"{titles.get(unit, 'Measured')} ({unit})", sorted(metrics, key=lambda m: m.name), unit)
        if image:
            out.append(f'<img alt="{html.escape(unit)} figures" src="data:image/png;base64,{image}">')
    return out


def render_html(results: RunResults, catalogue: Catalogue) -> str:
    data = render_json(results, catalogue)
    env = data["environment"]
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Conformance: {esc(results.sut_name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
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
    parts.append("</table><h2>Measured figures</h2>")
    parts.extend(_plots(results) or ["<p>No figures were measured in this run.</p>"])
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
