"""Write docs/BENCHMARKS.md (and its plots) from the perf/soak results file.

    python tools/bench_report.py                       # reports/perf-results.json -> docs/BENCHMARKS.md
    python tools/bench_report.py --results R --output docs/BENCHMARKS.md

Run the benchmarks first (pytest specs/perf -m perf -p no:randomly; the soak with SOAK_TEST=1 -m soak);
every figure in the page comes from the results file, with where and how it was measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullLocator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the harness package is at the root

from harness.perf.results import latest_figures  # noqa: E402

FANOUT_RATES = (100, 1_000, 2_000, 5_000, 10_000)  # 10,000/s: a burst of 1,000

# (figure, target as text, check) of the spec's targets
TARGETS: list[tuple[str, str, str, Any]] = [
    ("6.1.1.a", "get_account_p50_ms", "< 2 ms", lambda v: v < 2),
    ("6.1.1.b", "get_account_p99_ms", "< 5 ms", lambda v: v < 5),
    ("6.1.2.a", "stream_msgs_per_s", "> 1000 msg/s", lambda v: v > 1000),
    ("6.2.1.a", "memory_growth_mb", "< 10 MB", lambda v: v < 10),
    ("6.3.1.a", "load_lost_messages", "= 0", lambda v: v == 0),
    ("6.3.1.b", "load_p99_ms", "< 10 ms", lambda v: v < 10),
    ("6.3.1.c", "load_server_cpu_pct", "< 80 %", lambda v: v < 80),
    ("6.3.1.d", "load_server_rss_mb", "< 1024 MB", lambda v: v < 1024),
    ("7.1.1.b", "soak_error_rate_pct", "< 0.01 %", lambda v: v < 0.01),
    ("7.1.1.c", "soak_memory_growth_mb", "< 50 MB", lambda v: v < 50),
    ("7.1.1.d", "soak_task_drift", "<= 10", lambda v: v <= 10),
    ("7.1.1.e", "soak_p99_ratio", "<= 1.5x", lambda v: v <= 1.5),
]

# (what, connector figure, baseline figure, ratio figure, aim as text, aim check on the ratio)
AIMS: list[tuple[str, str, str, str, str, Any]] = [
    ("GetAccount p50", "get_account_p50_ms", "baseline_get_account_p50_ms", "get_account_p50_ratio",
     "<= 1.2x", lambda r: r <= 1.2),
    ("GetAccount p99", "get_account_p99_ms", "baseline_get_account_p99_ms", "get_account_p99_ratio",
     "<= 1.5x", lambda r: r <= 1.5),
    ("GetAccount p99.9", "get_account_p999_ms", "baseline_get_account_p999_ms", "get_account_p999_ratio",
     "-", None),
    ("1-subscriber stream, msg/s", "stream_msgs_per_s", "baseline_stream_msgs_per_s", "stream_throughput_ratio",
     ">= 0.8x", lambda r: r >= 0.8),
    ("15-subscriber fan-out at 10,000/s, deliveries/s", "fanout_10000_deliveries_per_s",
     "baseline_fanout_10000_deliveries_per_s", "fanout_10000_deliveries_ratio", ">= 0.8x", lambda r: r >= 0.8),
    ("15-subscriber fan-out at 100/s, p99", "fanout_100_p99_ms", "baseline_fanout_100_p99_ms",
     "fanout_100_p99_ratio", "<= 1.2x, zero loss", lambda r: r <= 1.2),
]  # fmt: skip

# the same against the relay baseline (two hops, no logic): the fair limit of the connector's design
RELAY_AIMS: list[tuple[str, str, str, str, str, Any]] = [
    ("1-subscriber stream, msg/s", "stream_msgs_per_s", "relay_stream_msgs_per_s", "stream_throughput_relay_ratio",
     ">= 0.9x", lambda r: r >= 0.9),
    *[(f"15-subscriber fan-out at {rate:,}/s, deliveries/s", f"fanout_{rate}_deliveries_per_s",
       f"relay_fanout_{rate}_deliveries_per_s", f"fanout_{rate}_deliveries_relay_ratio", ">= 0.95x",
       lambda r: r >= 0.95) for rate in FANOUT_RATES],
    *[(f"15-subscriber fan-out at {rate:,}/s, p99", f"fanout_{rate}_p99_ms", f"relay_fanout_{rate}_p99_ms",
       f"fanout_{rate}_p99_relay_ratio", "<= 1.5x", lambda r: r <= 1.5) for rate in FANOUT_RATES],
]  # fmt: skip
SCALING_BUSY = (1, 10, 100, 1_000)
SCALING_IDLE = 5_000
SOAK_RUNS = ROOT / "docs" / "soak-runs"


def value(figures: dict[str, Any], name: str) -> float | None:
    entry = figures.get(name)
    return None if entry is None else float(entry["value"])


def show(number: float | None, unit: str = "") -> str:
    if number is None:
        return "-"
    if number != number:  # NaN
        return "n/a"
    text = f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"
    return f"{text} {unit}".strip()


def unit_of(figures: dict[str, Any], name: str) -> str:
    entry = figures.get(name)
    return str(entry.get("unit", "")) if entry else ""


def environment_lines(figures: dict[str, Any]) -> list[str]:
    """One line per mode: when, on what, and how busy the machine was (1-minute load averages)."""
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for entry in figures.values():
        by_mode.setdefault(str(entry.get("mode", "?")), []).append(entry)
    lines = []
    for mode, entries in sorted(by_mode.items()):
        times = sorted(str(e.get("measured_at", "?")) for e in entries)
        loads = [
            e["environment"]["load_average"][0]
            for e in entries
            if e.get("environment", {}).get("load_average")
        ]
        env = max(entries, key=lambda e: str(e.get("measured_at")))["environment"]
        busy = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "?"
        lines.append(
            f"- {mode} mode, {times[0]} to {times[-1]}: {env.get('cpus')} cores ({env.get('cpu_model', '?')}), "
            f"{env.get('implementation', 'CPython')} {env.get('python')}, grpcio {env.get('grpcio')}, "
            f"{env.get('system')}; 1-minute load average {busy} while measuring"
        )
    return lines


def plot_latency_percentiles(details: dict[str, Any], output: Path) -> bool:
    """An HDR percentile plot of GetAccount latency, connector and bare baseline, when the latency test
    kept its percentile points."""
    entry = next((e for e in details.values() if isinstance(e, dict) and e.get("sut_percentiles_ms")), None)
    if entry is None or not entry.get("baseline_percentiles_ms"):
        return False

    def x(q: float) -> float:
        return 1e5 if q >= 100 else 1 / (1 - q / 100)

    figure, axis = plt.subplots(figsize=(8, 4))
    for key, label, colour in (("baseline_percentiles_ms", "bare grpcio baseline", "tab:blue"),
                               ("sut_percentiles_ms", "connector", "tab:orange")):  # fmt: skip
        axis.plot(
            [x(q) for q, _ in entry[key]], [ms for _, ms in entry[key]], marker=".", label=label, color=colour
        )
    ticks = (0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks([x(q) for q in ticks], ["0 %", "50 %", "90 %", "99 %", "99.9 %", "99.99 %", "max"])
    axis.xaxis.set_minor_locator(NullLocator())
    axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    axis.set_xlabel("percentile")
    axis.set_ylabel("ms (log)")
    axis.set_title(f"GetAccount latency by percentile over loopback ({entry.get('calls', '?')} calls each)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return True


def plot_latency(figures: dict[str, Any], output: Path) -> bool:
    labels = ["p50", "p99", "p99.9"]
    keys = ["p50", "p99", "p999"]
    sut = [v for k in keys if (v := value(figures, f"get_account_{k}_ms")) is not None]
    bare = [v for k in keys if (v := value(figures, f"baseline_get_account_{k}_ms")) is not None]
    if len(sut) != len(keys) or len(bare) != len(keys):
        return False
    figure, axis = plt.subplots(figsize=(7, 4))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], bare, width=0.4, label="bare grpcio baseline")
    axis.bar([p + 0.2 for p in positions], sut, width=0.4, label="connector")
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("ms")
    axis.set_title("GetAccount latency over loopback")
    axis.legend()
    axis.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return True


def plot_fanout(figures: dict[str, Any], output: Path) -> bool:
    rates = [r for r in FANOUT_RATES if value(figures, f"fanout_{r}_p99_ms") is not None]
    if not rates:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    targets = (
        ("baseline_fanout", "bare grpcio baseline", "tab:blue"),
        ("relay_fanout", "bare relay", "tab:green"),
        ("fanout", "connector", "tab:orange"),
    )
    for prefix, label, color in targets:
        left.plot(rates, [value(figures, f"{prefix}_{r}_deliveries_per_s") for r in rates], marker="o", color=color,
                  label=label)  # fmt: skip
        for q, style in (("p50", "--"), ("p99", "-")):
            right.plot(rates, [value(figures, f"{prefix}_{r}_{q}_ms") for r in rates], style, marker="o",
                       color=color, label=f"{label} {q}")  # fmt: skip
    # what 15 subscribers receive when every update reaches each as it is sent: a target saturates
    # (the knee) where its curve leaves this line
    left.plot(rates, [15 * r for r in rates], ":", color="grey", label="offered x 15")
    for axis, title, unit in ((left, "Aggregate deliveries, 15 subscribers", "deliveries/s"),
                              (right, "End-to-end latency per update", "ms")):  # fmt: skip
        axis.set_xscale("log")
        axis.set_xlabel("updates/s offered")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    left.set_yscale("log")
    right.set_yscale("log")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return True


def load_of(figures: dict[str, Any], name: str) -> str:
    """The 1-minute load average when figure `name` was measured."""
    loads = figures.get(name, {}).get("environment", {}).get("load_average") or []
    return f"{loads[0]:.1f}" if loads else "-"


def scaling_loads(details: dict[str, Any]) -> dict[int, float]:
    """The 1-minute load average as each scaling point started, by subscribers."""
    for entry in details.values():
        if isinstance(entry, dict) and entry.get("scaling_points"):
            return {int(p["subscribers"]): float(p["load_average"][0]) for p in entry["scaling_points"]
                    if p.get("load_average")}  # fmt: skip
    return {}


def scaling_section(figures: dict[str, Any], details: dict[str, Any], docs: Path) -> list[str]:
    """The scaling curve (6.1.2.x2): a table per target and a plot."""
    if value(figures, "scaling_connector_10_deliveries_per_s") is None:
        return []
    loads = scaling_loads(details)
    out = [
        "",
        "## Scaling with subscribers (6.1.2.x2, reported, not asserted)",
        "",
        "Each subscriber receives 10 updates/s for 10 s; the idle point is 5,000 open, registered streams with",
        "no updates. CPU per delivery is all of the server's CPU while the point ran (subscribing included)",
        "over its deliveries; RSS per subscriber is its peak RSS during the point less its RSS before, over the",
        "subscribers. Aim: CPU per delivery flat from 10 to 1,000 subscribers. Measured in one test, the relay",
        "first at each point; the load average is the machine's as the point started.",
        "",
        "| Subscribers | Target | Deliveries/s | p99 | CPU µs/delivery | RSS KB/subscriber | Load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in (*SCALING_BUSY, SCALING_IDLE):
        for target in ("connector", "relay"):
            prefix = f"scaling_{target}_{'idle_' if n == SCALING_IDLE else ''}{n}"
            rss = value(figures, f"{prefix}_rss_kb_per_subscriber")
            if rss is None:
                continue
            out.append(
                f"| {n:,}{' idle' if n == SCALING_IDLE else ''} | {target} | "
                f"{show(value(figures, f'{prefix}_deliveries_per_s'))} | {show(value(figures, f'{prefix}_p99_ms'), 'ms')} | "
                f"{show(value(figures, f'{prefix}_cpu_us_per_delivery'), 'µs')} | {show(rss, 'KB')} | "
                f"{loads.get(n, '-')} |"
            )
    if plot_scaling(figures, docs / "bench-scaling.png"):
        out += ["", "![Scaling](bench-scaling.png)"]
    return out


def plot_scaling(figures: dict[str, Any], output: Path) -> bool:
    panels = (("deliveries_per_s", "Deliveries/s", "deliveries/s"), ("p99_ms", "Delivery p99", "ms"),
              ("cpu_us_per_delivery", "Server CPU per delivery", "µs"),
              ("rss_kb_per_subscriber", "Server RSS per subscriber (busy)", "KB"))  # fmt: skip
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    for axis, (key, title, unit) in zip(axes.flat, panels, strict=True):
        for target, colour in (("connector", "tab:orange"), ("relay", "tab:green")):
            points = [(n, value(figures, f"scaling_{target}_{n}_{key}")) for n in SCALING_BUSY]
            shown = [(n, v) for n, v in points if v is not None]
            if shown:
                axis.plot(
                    [n for n, _ in shown], [v for _, v in shown], marker="o", color=colour, label=target
                )
        axis.set_xscale("log")
        axis.set_xlabel("subscribers (10 updates/s each)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return True


def snapshot_summary(snapshots: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The soak's criteria as its snapshots show them (the same definitions as specs/soak/test_soak.py)."""
    first, last = snapshots[0], snapshots[-1]
    speedup = float(last.get("speedup", 1.0))
    keys = ("server_threads", "client_threads", "client_tasks")
    drift = max(abs(int(s[k]) - int(first[k])) for s in snapshots for k in keys)
    p99 = [s["latency_p99_ms"] for s in snapshots if s.get("latency_p99_ms")]
    rate = 100.0 * last["errors"] / last["operations"] if last["operations"] else 0.0
    rows = [
        ("wall time", f"{last['t_s'] / 3600:.2f} h ({len(snapshots)} snapshots, last at {last.get('at', '?')})"),
        ("speed-up, equivalent time", f"x{speedup:g}, {last['t_s'] * speedup / 3600:.1f} h of events"),
        ("updates sent (account, position)", f"{last['accounts_sent']:,}, {last['positions_sent']:,}"),
        ("operations, errors, error rate", f"{last['operations']:,}, {last['errors']}, {rate:.4f} % (target < 0.01 %)"),
        ("connector RSS first, last, growth",
         f"{first['server_rss_mb']:.1f}, {last['server_rss_mb']:.1f}, {last['server_rss_mb'] - first['server_rss_mb']:+.2f} MB "
         "(target < 50 MB)"),
        ("thread and task drift", f"{drift} (target <= 10)"),
        ("client and program restarts", f"{last['restarts']}"),
        ("connector down in a snapshot", f"{sum(1 for s in snapshots if s.get('connector_running') is False)}"),
    ]  # fmt: skip
    if len(p99) >= 2:
        rows.append(
            (
                "p99 first, last interval",
                f"{p99[0]:.2f}, {p99[-1]:.2f} ms ({p99[-1] / p99[0]:.2f}x; target <= 1.5x)",
            )
        )
    return rows


def soak_runs_section(docs: Path) -> list[str]:
    """Every long soak run kept under docs/soak-runs/<name>/ (figures.json, snapshots.jsonl)."""
    runs = sorted(path for path in SOAK_RUNS.glob("*/") if (path / "snapshots.jsonl").is_file())
    if not runs:
        return []
    from plot_soak import plot, read_snapshots  # tools/ is this script's folder

    out = ["", "## Long soak runs", ""]
    for run in runs:
        meta = (
            json.loads((run / "figures.json").read_text(encoding="utf-8"))
            if (run / "figures.json").is_file()
            else {}
        )
        snapshots = read_snapshots(run / "snapshots.jsonl")
        title = str(meta.get("title", run.name))
        out += [f"### {title}", ""]
        if meta.get("note"):
            out += [str(meta["note"]), ""]
        if snapshots:
            out += ["| From the snapshots | Value |", "|---|---|"]
            out += [f"| {what} | {text} |" for what, text in snapshot_summary(snapshots)]
            out.append("")
        figures = meta.get("figures", {})
        if figures:
            out += ["| Figure | Value |", "|---|---|"]
            out += [f"| `{name}` | {show(float(entry['value']), entry.get('unit', ''))} |"
                    for name, entry in sorted(figures.items())]  # fmt: skip
            out.append("")
        if meta.get("verdicts"):
            out += ["| Scenario | Verdict |", "|---|---|"]
            out += [f"| {sid} | {verdict} |" for sid, verdict in sorted(meta["verdicts"].items())]
            out.append("")
        if snapshots:
            image = docs / f"soak-{run.name}.png"
            plot(snapshots, image, title)
            out += [f"![{title}](soak-{run.name}.png)", ""]
    return out


NOTES_START, NOTES_END = "<!-- notes: kept when the page is written again -->", "<!-- /notes -->"


def kept_notes(page: Path) -> list[str]:
    """The hand-written block of an existing page (analysis, profiles), carried over verbatim."""
    try:
        text = page.read_text(encoding="utf-8")
    except OSError:
        return [NOTES_START, "", NOTES_END]
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < start:
        return [NOTES_START, "", NOTES_END]
    return text[start : end + len(NOTES_END)].splitlines()


def render(
    figures: dict[str, Any],
    docs: Path,
    soak_plot: Path | None,
    notes: list[str],
    details: dict[str, Any] | None = None,
) -> str:
    details = details or {}
    out = [
        "# Benchmarks",
        "",
        "The latest figures measured on this machine, written by `tools/bench_report.py` from",
        "`reports/perf-results.json` (the results file every perf and soak run updates), preferring figures of",
        "full `-m perf` runs over later quick ones. Methods are described",
        "in each benchmark's module docstring under `specs/perf/` and `specs/soak/`, and summarised below.",
        "Machines shared with other work give noisy numbers: read the load average next to each run.",
        "",
        "## Where",
        "",
        *(environment_lines(figures) or ["- no run recorded yet"]),
        "",
        "## Spec targets (asserted)",
        "",
        "| Scenario | Figure | Target | Measured | Mode | Verdict |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, name, target, check in TARGETS:
        measured = value(figures, name)
        verdict = "-" if measured is None else ("PASS" if check(measured) else "FAIL")
        mode = figures.get(name, {}).get("mode", "-")
        out.append(
            f"| {scenario} | `{name}` | {target} | {show(measured, unit_of(figures, name))} | {mode} | {verdict} |"
        )
    out += [
        "",
        "## Against bare grpcio (reported, not asserted)",
        "",
        "The baseline is `harness/doubles/baseline.py`: the same contract with no logic, measured in the same run with",
        "the same client code.",
        "",
        "| What | Connector | Bare baseline | Ratio | Aim | Meets aim |",
        "|---|---|---|---|---|---|",
    ]
    for what, sut, bare, ratio_name, aim, check in AIMS:
        ratio = value(figures, ratio_name)
        meets = "-" if ratio is None or check is None else ("yes" if check(ratio) else "no")
        out.append(
            f"| {what} | {show(value(figures, sut), unit_of(figures, sut))} | "
            f"{show(value(figures, bare), unit_of(figures, bare))} | {show(ratio, 'x')} | {aim} | {meets} |"
        )
    out += [
        "",
        "## Against the bare relay (reported, not asserted)",
        "",
        "The relay is `harness/doubles/relay.py`: it reads its own mock exchange, fed exactly like the connector's,",
        "and writes each message on to its subscribers with no validation and no hub. Two hops, like the",
        "connector: the fair limit for its design. Measured in the same run and test as the connector.",
        "",
        "| What | Connector | Relay baseline | Ratio | Aim | Meets aim | Load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, sut, relay, ratio_name, aim, check in RELAY_AIMS:
        ratio = value(figures, ratio_name)
        if ratio is None:
            continue
        meets = "yes" if check(ratio) else "no"
        out.append(
            f"| {what} | {show(value(figures, sut), unit_of(figures, sut))} | "
            f"{show(value(figures, relay), unit_of(figures, relay))} | {show(ratio, 'x')} | {aim} | {meets} | "
            f"{load_of(figures, ratio_name)} |"
        )
    out += [
        "",
        "## Fan-out to 15 subscribers",
        "",
        "| Offered | Connector deliveries/s | p50 | p99 | lost | Bare deliveries/s | p50 | p99 | Relay deliveries/s |"
        " p50 | p99 | Server CPU/msg (connector, bare, relay) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in FANOUT_RATES:
        p = f"fanout_{rate}"
        b = f"baseline_fanout_{rate}"
        r = f"relay_fanout_{rate}"
        if value(figures, f"{p}_deliveries_per_s") is None:
            continue
        out.append(
            f"| {rate:,}/s | {show(value(figures, f'{p}_deliveries_per_s'))} | {show(value(figures, f'{p}_p50_ms'), 'ms')} | "
            f"{show(value(figures, f'{p}_p99_ms'), 'ms')} | {show(value(figures, f'{p}_lost'))} | "
            f"{show(value(figures, f'{b}_deliveries_per_s'))} | {show(value(figures, f'{b}_p50_ms'), 'ms')} | "
            f"{show(value(figures, f'{b}_p99_ms'), 'ms')} | {show(value(figures, f'{r}_deliveries_per_s'))} | "
            f"{show(value(figures, f'{r}_p50_ms'), 'ms')} | {show(value(figures, f'{r}_p99_ms'), 'ms')} | "
            f"{show(value(figures, f'{p}_server_cpu_us_per_msg'), 'µs')}, "
            f"{show(value(figures, f'{b}_server_cpu_us_per_msg'), 'µs')}, "
            f"{show(value(figures, f'{r}_server_cpu_us_per_msg'), 'µs')} |"
        )
    out += scaling_section(figures, details, docs)
    out += soak_runs_section(docs)
    extra = sorted(
        n for n in figures if n.startswith(("memory_", "load_", "soak_", "stream_", "relay_stream"))
    )
    out += ["", "## Every other figure", "", "| Figure | Value | Scenario | Mode |", "|---|---|---|---|"]
    for name in extra:
        entry = figures[name]
        scenarios = ", ".join(entry.get("scenario_ids", []))
        out.append(
            f"| `{name}` | {show(entry['value'], entry.get('unit', ''))} | {scenarios} | {entry.get('mode')} |"
        )
    out += ["", "## Plots", ""]
    if plot_latency_percentiles(details, docs / "bench-latency.png") or plot_latency(
        figures, docs / "bench-latency.png"
    ):
        out.append("![GetAccount latency](bench-latency.png)")
    if plot_fanout(figures, docs / "bench-fanout.png"):
        out.append("![Fan-out](bench-fanout.png)")
    if soak_plot is not None and soak_plot.is_file():
        shutil.copyfile(soak_plot, docs / "soak-snapshots.png")
        out.append("![Soak snapshots](soak-snapshots.png)")
    out += ["", "## Methods", "", *METHODS, "", "## Notes", "", *notes]
    return "\n".join(out) + "\n"


METHODS = [
    "- **Clock and tags.** Each measured update carries `<run>.<seq:09d>` in a decimal field "
    "(`total_balance`, `size`) and its send time in `updated_at` (wall clock, shared by every process on the "
    "host). Receivers check every sequence number (loss, reorder, duplicates) and time each delivery; "
    "percentiles come from HdrHistograms, never from averages (`harness/perf/loadgen.py`).",
    "- **GetAccount latency (6.1.1).** Synchronous grpcio channel per target, closed loop, each call timed; "
    "baseline and connector interleaved in blocks of 500 calls after an unrecorded warm-up; 10,000 calls each "
    "under -m perf.",
    "- **Stream throughput (6.1.2.a) and fan-out (6.1.2.x1).** Raw grpc.aio subscribers in a separate process "
    "(`harness/perf/streamworker.py`), one connection each. The connector is fed by a thread triggering the mock "
    "exchange (at most 256 updates in flight for throughput; paced at 100, 1,000, 2,000, 5,000 and 10,000/s "
    "for fan-out, the last a burst of 1,000, each point in two blocks with the targets' order reversed in the "
    "second), after priming updates proved every subscriber registered. The baseline "
    "writes the same tagged updates itself; a fan-out group of baseline streams shares one generator. The "
    "relay baseline (`harness/doubles/relay.py`) reads a mock exchange of its own, fed by the same thread code "
    "as the connector's, and writes each message on to its subscribers from unbounded queues: no validation, "
    "no hub, no state. Bare, relay and connector are measured one after the other inside one test, "
    "interleaved block by block.",
    "- **Scaling (6.1.2.x2, -m perf).** `harness/perf/scaling.py`: 1, 10, 100 and 1,000 subscribers in a "
    "worker process, 10 updates/s each for 10 s (the relay first, then the connector, at each point); then "
    "5,000 idle streams, 10 per channel, in the test process, each proven registered by a priming update. "
    "Server CPU from psutil (user + system) over the whole point; RSS per subscriber = (peak during the point "
    "- before) / subscribers.",
    "- **Memory (6.2).** Two RemoteExchange clients, 500 account updates/s, warm-up first; psutil RSS, threads "
    "and fds of the connector, RSS, threads, tasks and fds of the test process, before and after.",
    "- **Load (6.3).** Quick form in the default run: 20 s, p99 reported as `load_quick_p99_ms`, not judged; full form under -m perf. 10 market_maker-like and 5 live_server-like clients, each its own "
    "RemoteExchange (own connection), in two worker processes (`harness/perf/loadworker.py`) as the real programs "
    "would be; the live_server-like ones poll GetAccount/GetPositions every second. 100 account updates/s, "
    "stamped by the mock exchange as it writes them; `load_exchange_direct_p99_ms` is the same updates read "
    "straight from the mock (what the machine and the harness alone cost). Connector CPU = (user + system "
    "time) / wall time, 100 % = one core. Before the run, `harness/perf/machine_probe.py` times a ~1 ms piece of "
    "plain CPU work for 5 s on the idle machine (`machine_cpu_work_p99_ms`, `machine_cpu_work_max_ms`): the "
    "floor under any tail latency measured there.",
    "- **Soak (7.1).** `harness/perf/soak.py`: updates every 5 s / 1 s, random restarts of simulated clients and "
    "of the real market_maker and live_server programs, snapshots to `reports/soak-snapshots.jsonl`. "
    "Accelerated (`SOAK_SPEEDUP=N`): updates, the simulated clients' polls and restarts N times as often, "
    "snapshots still once a minute of wall time; a run of D carries D x N of events, and the criteria are "
    "judged over those events. Long runs are kept with `tools/keep_soak_run.py` under `docs/soak-runs/`.",
    "- **Comparing runs.** `--compare OLD.json` lists scenarios whose status changed and figures beyond their "
    "tolerance (`harness/report/compare.py`: e.g. latencies +-50 % or 0.2 ms, throughputs +-30 %, ratios "
    "+-25 %, error counts any change).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "reports" / "perf-results.json")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--soak-plot", type=Path, default=ROOT / "reports" / "soak-snapshots.png")
    parser.add_argument(
        "--latest", action="store_true", help="the latest figure of any mode (default: -m perf figures first)"
    )
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(
            f"no results file at {args.results}: run the benchmarks first (pytest specs/perf -m perf)"
        )
    figures = latest_figures(args.results, prefer_mode=None if args.latest else "full")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    details = json.loads(args.results.read_text(encoding="utf-8")).get("details", {})
    page = render(figures, args.output.parent, args.soak_plot, kept_notes(args.output), details)
    args.output.write_text(page, encoding="utf-8")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
