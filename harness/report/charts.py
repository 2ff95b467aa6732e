"""The HTML report's charts, each one comparing something: PNG images, inlined as data URIs.

* GetAccount latency by percentile (an HDR percentile plot): the connector and the bare baseline
  on one chart, from the percentile points the latency test keeps in the details file.
* Fan-out deliveries/s and p99 against the offered rate: the connector, the bare baseline and the
  relay baseline, from the run's figures.
* The scaling curve (deliveries/s, p99, CPU per delivery, RSS per subscriber against subscribers).
* Resources over time of the memory test and of a soak run (restarts marked).

A chart whose data this run did not produce is left out. The details come from the perf results
file (<report-dir>/perf-results.json), only those of tests that ran in this run.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.report.results import RunResults

CONNECTOR, BARE, RELAY = "#0969da", "#6e7781", "#bf8700"
_FANOUT = re.compile(r"^(?P<who>baseline_|relay_)?fanout_(?P<rate>\d+)_(?P<what>deliveries_per_s|p99_ms)$")


def run_details(results: RunResults, directory: Path) -> dict[str, dict[str, Any]]:
    """The details file's entries of the tests that ran in this run, by test node ID."""
    try:
        data = json.loads((directory / "perf-results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ran = {outcome.nodeid for outcome in results.outcomes}
    details = data.get("details", {}) if isinstance(data, dict) else {}
    return {node: entry for node, entry in details.items() if node in ran and isinstance(entry, dict)}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: write images only
    import matplotlib.pyplot as plt

    return plt


def _plain(axis: Any, *, x: bool = True) -> None:
    """Log axes labelled 0.5, 2, 1000 rather than 5x10^-1."""
    from matplotlib.ticker import FuncFormatter

    for side in (axis.xaxis, axis.yaxis) if x else (axis.yaxis,):
        if side.get_scale() == "log":
            side.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            side.set_minor_formatter(FuncFormatter(_two_and_five))


def _two_and_five(value: float, _: object) -> str:
    """Minor log ticks: label 2x and 5x a power of ten only."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(lead, 6) in (2.0, 5.0) else ""


def _image(figure: Any, alt: str) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
    )


def _find(details: Mapping[str, dict[str, Any]], key: str) -> dict[str, Any] | None:
    for entry in details.values():
        if key in entry:
            return entry
    return None


def latency_chart(details: Mapping[str, dict[str, Any]]) -> str | None:
    entry = _find(details, "sut_percentiles_ms")
    if entry is None or not entry.get("baseline_percentiles_ms"):
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4))
    for key, label, colour in (
        ("sut_percentiles_ms", "connector", CONNECTOR),
        ("baseline_percentiles_ms", "bare baseline", BARE),
    ):
        points = entry[key]
        axis.plot(
            [_hdr_x(p) for p, _ in points], [ms for _, ms in points], marker=".", label=label, color=colour
        )
    ticks = [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]
    axis.set_xscale("log")
    axis.set_xticks([_hdr_x(p) for p in ticks], ["0 %", "50 %", "90 %", "99 %", "99.9 %", "99.99 %", "max"])
    axis.minorticks_off()
    axis.set_yscale("log")
    axis.set_xlabel("percentile")
    axis.set_ylabel("ms (log)")
    _plain(axis, x=False)
    axis.set_title(f"GetAccount latency by percentile ({entry.get('calls', '?')} calls each)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return _image(figure, "GetAccount latency by percentile, connector and bare baseline")


def _hdr_x(percentile: float) -> float:
    """The HDR plot's x: 1 / (1 - p), so each further nine gets the same width; the maximum at 10^5."""
    return 1e5 if percentile >= 100 else 1.0 / (1.0 - percentile / 100.0)


def fanout_chart(results: RunResults) -> str | None:
    series: dict[tuple[str, str], dict[int, float]] = {}
    for metric in results.metrics:
        match = _FANOUT.match(metric.name)
        if match and math.isfinite(metric.value):
            key = (match["who"] or "", match["what"])
            series.setdefault(key, {})[int(match["rate"])] = metric.value
    if not series.get(("", "deliveries_per_s")):
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for who, label, colour in (("", "connector", CONNECTOR), ("baseline_", "bare baseline", BARE),
                               ("relay_", "relay baseline", RELAY)):  # fmt: skip
        for axis, what in zip(axes, ("deliveries_per_s", "p99_ms"), strict=True):
            points = sorted(series.get((who, what), {}).items())
            if points:
                axis.plot(
                    [r for r, _ in points], [v for _, v in points], marker="o", label=label, color=colour
                )
    for axis, title, unit in zip(
        axes, ("Deliveries/s to 15 subscribers", "Delivery p99"), ("deliveries/s", "ms"), strict=True
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        _plain(axis)
        axis.set_xlabel("offered updates/s")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    return _image(figure, "Fan-out against offered rate: connector, bare and relay baselines")


def scaling_chart(details: Mapping[str, dict[str, Any]]) -> str | None:
    entry = _find(details, "scaling_points")
    if entry is None or not entry["scaling_points"]:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = (
        ("deliveries_per_s", "Deliveries/s", "deliveries/s"),
        ("p99_ms", "Delivery p99", "ms"),
        ("cpu_us_per_delivery", "Server CPU per delivery", "µs"),
        ("rss_kb_per_subscriber", "Server RSS per subscriber", "KB"),
    )
    for axis, (key, title, unit) in zip(axes.flat, panels, strict=True):
        for target, label, colour in (
            ("connector", "connector", CONNECTOR),
            ("relay", "relay baseline", RELAY),
        ):
            points = [(p["subscribers"], p[target].get(key)) for p in entry["scaling_points"] if target in p]
            points = [(n, v) for n, v in points if v is not None and not p_idle(n, entry)]
            if points:
                axis.plot(
                    [n for n, _ in points], [v for _, v in points], marker="o", label=label, color=colour
                )
        axis.set_xscale("log")
        _plain(axis)
        axis.set_xlabel("subscribers")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    return _image(figure, "Scaling with the number of subscribers: connector and relay baseline")


def p_idle(subscribers: int, entry: Mapping[str, Any]) -> bool:
    """The idle point (many streams, no updates) is a memory figure only."""
    return subscribers in entry.get("idle_points", [])


def _over_time(title: str, rows: list[Mapping[str, Any]], panels: Iterable[tuple[str, str, list[tuple[str, str]]]],
               marks: list[float], alt: str) -> str:  # fmt: skip
    plt = _pyplot()
    chosen = list(panels)
    figure, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 3.6))
    minutes = [float(row["t_s"]) / 60 for row in rows]
    for axis, (name, unit, keys) in zip(axes, chosen, strict=True):
        for key, label in keys:
            points = [(m, row[key]) for m, row in zip(minutes, rows, strict=True) if row.get(key) is not None]
            if points:
                axis.plot([m for m, _ in points], [v for _, v in points], marker=".", label=label)
        for mark in marks:  # short ticks along the bottom: hundreds of restarts must not hide the data
            axis.axvline(mark, ymin=0.0, ymax=0.05, color="#cf222e", linewidth=0.8, alpha=0.7)
        axis.set_title(name, fontsize="medium")
        axis.set_xlabel("minutes")
        axis.set_ylabel(unit)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="x-small")
    figure.suptitle(title)
    return _image(figure, alt)


def memory_chart(details: Mapping[str, dict[str, Any]]) -> str | None:
    entry = _find(details, "series")
    if entry is None or len(entry["series"]) < 2:
        return None
    panels = [
        ("RSS", "MB", [("server_rss_mb", "connector"), ("client_rss_mb", "test process")]),
        (
            "Threads and tasks",
            "count",
            [("server_threads", "connector threads"), ("client_tasks", "test tasks")],
        ),
        ("Open fds", "count", [("server_fds", "connector")]),
    ]
    return _over_time("§6.2 memory test", entry["series"], panels, [], "Memory test: resources over time")


def soak_chart(details: Mapping[str, dict[str, Any]]) -> str | None:
    entry = _find(details, "snapshots_file")
    if entry is None:
        return None
    try:
        text = Path(str(entry["snapshots_file"])).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if len(rows) < 2:
        return None
    marks = [float(e["t_s"]) / 60 for row in rows for e in row.get("restart_events", [])]
    panels = [
        ("RSS", "MB", [("server_rss_mb", "connector"), ("client_rss_mb", "test process")]),
        (
            "Threads and tasks",
            "count",
            [("server_threads", "connector threads"), ("client_tasks", "test tasks")],
        ),
        ("Open fds", "count", [("server_fds", "connector"), ("client_fds", "test process")]),
        ("Delivery p99 per interval", "ms", [("latency_p99_ms", "p99")]),
    ]
    speedup = float(rows[-1].get("speedup", 1.0))
    title = "§7.1 soak" + (
        f" (x{speedup:g}: {rows[-1]['t_equiv_s'] / 3600:.3g} h of events)" if speedup != 1 else ""
    )
    return _over_time(title, rows, panels, marks, "Soak: resources and p99 over time, restarts marked")


def charts(results: RunResults, directory: Path) -> list[str]:
    """Every chart this run has data for, as HTML <figure> elements."""
    details = run_details(results, directory)
    made = [
        latency_chart(details),
        fanout_chart(results),
        scaling_chart(details),
        memory_chart(details),
        soak_chart(details),
    ]
    return [chart for chart in made if chart is not None]
