"""Plot a soak run's snapshots (reports/soak-snapshots.jsonl) to a PNG.

    python tools/plot_soak.py reports/soak-snapshots.jsonl --output reports/soak-snapshots.png

Six panels over the run's time: RSS (connector, test process), thread and task counts, open fds,
connector CPU, cumulative error rate, and update latency p50/p99 per interval. Restarts are marked
on every panel: grey ticks along the bottom for simulated clients, orange ticks along the top for
the SUT's programs, a red line for a snapshot that found the connector down. An accelerated run's top axis gives the equivalent hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt


def read_snapshots(path: Path) -> list[dict[str, Any]]:
    snapshots = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                snapshots.append(json.loads(line))
            except ValueError as error:
                raise SystemExit(f"{path}:{number}: not a JSON line: {error}") from None
    return snapshots


CLIENT_MARK, PROGRAM_MARK, DOWN_MARK = "grey", "tab:orange", "tab:red"
PROGRAMS = ("market_maker", "live_server", "exchange_connector")


def restart_marks(snapshots: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """(minute, colour) of every restart the snapshots record, and of every snapshot with the
    connector down."""
    marks = []
    for snapshot in snapshots:
        for event in snapshot.get("restart_events", []):
            colour = PROGRAM_MARK if event.get("what") in PROGRAMS else CLIENT_MARK
            marks.append((float(event["t_s"]) / 60, colour))
        if snapshot.get("connector_running") is False:
            marks.append((float(snapshot["t_s"]) / 60, DOWN_MARK))
    return marks


def plot(snapshots: list[dict[str, Any]], output: Path, title: str = "Soak run") -> None:
    minutes = [s["t_s"] / 60 for s in snapshots]
    panels: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("Memory (RSS)", "MB", [("server_rss_mb", "connector"), ("client_rss_mb", "test process")]),
        (
            "Threads and tasks",
            "count",
            [
                ("server_threads", "connector threads"),
                ("client_threads", "test threads"),
                ("client_tasks", "test asyncio tasks"),
            ],
        ),
        ("Open file descriptors", "count", [("server_fds", "connector"), ("client_fds", "test process")]),
        ("Connector CPU", "% of a core", [("server_cpu_pct", "per interval")]),
        ("Error rate (cumulative)", "%", [("error_rate_pct", "errors / operations")]),
        ("Update latency per interval", "ms", [("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")]),
    ]
    figure, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for axis, (name, unit, series) in zip(axes.flat, panels, strict=True):
        for key, label in series:
            points = [(m, s[key]) for m, s in zip(minutes, snapshots, strict=True) if s.get(key) is not None]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        axis.set_title(name)
        axis.set_ylabel(unit)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    marks = restart_marks(snapshots)
    for axis in axes.flat:
        for minute, colour in marks:
            # short ticks, so hundreds of restarts do not hide the data: clients along the bottom,
            # programs along the top, a connector found down across the whole panel
            low, high = {CLIENT_MARK: (0.0, 0.05), PROGRAM_MARK: (0.95, 1.0)}.get(colour, (0.0, 1.0))
            axis.axvline(minute, ymin=low, ymax=high, color=colour, linewidth=0.8, alpha=0.7)
    for axis in axes[-1]:
        axis.set_xlabel("minutes (wall)")
    speedup = float(snapshots[-1].get("speedup", 1.0)) if snapshots else 1.0
    if speedup != 1.0:
        for axis in axes[0]:
            top = axis.secondary_xaxis(
                "top", functions=(lambda m: m * speedup / 60, lambda h: h * 60 / speedup)
            )
            top.set_xlabel(f"equivalent hours (x{speedup:g})")
    restarts = snapshots[-1].get("restarts", 0) if snapshots else 0
    figure.suptitle(f"{title}: {len(snapshots)} snapshots, {restarts} client and program restarts")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", type=Path, help="the JSON lines file a soak run wrote")
    parser.add_argument("--output", "-o", type=Path, help="PNG to write (default: next to the input)")
    parser.add_argument("--title", default="Soak run")
    args = parser.parse_args(argv)
    if not args.snapshots.is_file():
        parser.error(f"no such file: {args.snapshots}")
    snapshots = read_snapshots(args.snapshots)
    if not snapshots:
        parser.error(f"{args.snapshots} holds no snapshot")
    output = args.output or args.snapshots.with_suffix(".png")
    plot(snapshots, output, args.title)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
