"""Write docs/fault-catch-table.md from the fault runs of tests/test_fault_catching.py.

    FAULT_REPORTS_DIR=reports/faults python -m pytest tests/test_fault_catching.py -p no:randomly
    FAULT_REPORTS_DIR=reports/faults python tools/fault_table.py     # or: --reports DIR --output FILE
    python tools/fault_table.py --clauses                           # the clause table alone

Every row comes from a run's own report: the scenarios that failed against each faulty connector,
and the first failure reason the suite gave for each.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the packages are at the root

from specs.faulty.catalogue import Fault, load_faults  # noqa: E402
from specs.faulty.clauses import load_clauses, render_clauses, replace_clause_section  # noqa: E402
from specs.faulty.runs import RUN_FILE, SuiteRun, load_run  # noqa: E402

CONTROLS = ("control", "control-timed")
REASON_CHARS = 240
# what makes a reason long without making it clearer: log tails and the run's own temp paths
_NOISE = (re.compile(r";? ?last log lines \(.*$"), re.compile(r"/\S*/(pytest-\d+|tmp)/\S*"))


def clean(reason: str) -> str:
    text = reason
    for pattern in _NOISE:
        text = pattern.sub("…", text)
    text = " ".join(text.split())
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def ids(values: list[str] | tuple[str, ...]) -> str:
    return ", ".join(values) if values else "nothing"


def selectors(run: SuiteRun) -> str:
    return " ".join(f"`--scenario {s}`" for s in run.selectors)


def most_at_once(runs: list[SuiteRun]) -> int:
    """The most runs that were going at one moment, from their start times and durations."""
    edges = sorted(
        [(r.started_at, 1) for r in runs] + [(r.started_at + r.duration_s, -1) for r in runs],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same moment
    )
    going = most = 0
    for _, step in edges:
        going += step
        most = max(most, going)
    return most


def render(faults: dict[str, Fault], runs: dict[str, SuiteRun]) -> str:
    present = [runs[name] for name in runs]
    first = present[0].report() if present else {}
    env = first.get("environment", {})
    wall = (
        max(r.started_at + r.duration_s for r in present) - min(r.started_at for r in present)
        if present
        else 0
    )
    when = datetime.fromtimestamp(min(r.started_at for r in present), timezone.utc) if present else None
    at_once = most_at_once(present)
    out = [
        "# Fault catch table",
        "",
        "The suite is only as good as the faults it catches. Each row is a deliberately faulty",
        "program: the reference's exchange_connector, live_server or client driver with one fault",
        "patched in (`specs/faulty/connector.py`, `live_server.py`, `driver.py`), or the Node or Go",
        "connector with one fault switched on (`specs/faulty/node.py`, `go.py`). It is run through the",
        "scenarios of its `--scenario` selection; the table lists every scenario that",
        "failed and the first reason the suite gave. `specs/faulty/faults.yaml` says which scenarios",
        "must catch each fault; `tests/test_fault_catching.py` fails when one of them does not, or",
        "when the reference does not pass the same selections. The clause table below splits every",
        "rule into its clauses and names, for each, the faults that break it, or says why none does yet.",
        "",
        "Regenerate: `FAULT_REPORTS_DIR=reports/faults python -m pytest tests/test_fault_catching.py "
        "-p no:randomly`, then `FAULT_REPORTS_DIR=reports/faults python tools/fault_table.py`.",
        "",
    ]
    if when is not None:
        out += [
            f"Measured {when:%Y-%m-%d %H:%M} UTC, Python {env.get('python', '?')}, grpcio {env.get('grpcio', '?')}, "
            f"{env.get('cpus', '?')} CPUs; {len(present)} runs, up to {at_once} at a time (a run that judges time alone), in {wall:.0f} s.",
            "",
        ]
    out += [
        "| Fault | What it breaks | Must be caught by | Caught by (every failed scenario) | Run |",
        "|---|---|---|---|---|",
    ]
    for name, fault in faults.items():
        run = runs.get(name)
        if run is None:
            out.append(f"| `{name}` | {fault.description} | {ids(fault.caught_by)} | not run | |")
            continue
        caught = list(run.caught())
        shown = [f"**{sid}**" if sid in fault.caught_by else sid for sid in caught]
        missed = [sid for sid in fault.caught_by if sid not in caught]
        verdict = f" — MISSED: {ids(missed)}" if missed else ""
        out.append(
            f"| `{name}` | {fault.description} | {ids(fault.caught_by)} | {ids(shown)}{verdict} | "
            f"{run.duration_s:.0f} s, {selectors(run)} |"
        )
    out += ["", "Bold: a scenario the catalogue requires to catch the fault.", ""]
    out += [render_clauses(load_clauses(faults=faults), faults), "## The control", ""]
    for name in CONTROLS:
        run = runs.get(name)
        if run is None:
            out.append(f"- `{name}`: not run")
            continue
        statuses = run.statuses()
        passed = sum(1 for status, _ in statuses.values() if status == "passed")
        failed = run.caught()
        verdict = "passed" if run.returncode == 0 and not failed else f"FAILED ({ids(list(failed))})"
        out.append(
            f"- `{name}` (the reference, {selectors(run)}): {verdict}, {passed}/{len(statuses)} scenarios passed, "
            f"{run.duration_s:.0f} s"
        )
    out += ["", "## Why each scenario failed", ""]
    for name, fault in faults.items():
        run = runs.get(name)
        if run is None:
            continue
        out += [
            f"### `{name}`",
            "",
            fault.description + ".",
            "",
            "| Scenario | Status | First failure reason |",
        ]
        out.append("|---|---|---|")
        statuses = run.statuses()
        for sid, reason in run.caught().items():
            out.append(f"| {sid} | {statuses[sid][0]} | {clean(reason)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def load_runs(folder: Path, faults: dict[str, Fault]) -> dict[str, SuiteRun]:
    runs = {}
    for name in [*faults, *CONTROLS]:
        if (folder / name / RUN_FILE).is_file():
            runs[name] = load_run(folder / name)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the fault catch table from the fault runs' reports.")
    parser.add_argument(
        "--reports",
        type=Path,
        default=os.environ.get("FAULT_REPORTS_DIR"),
        help="the folder tests/test_fault_catching.py left its runs in (default: $FAULT_REPORTS_DIR)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "fault-catch-table.md")
    parser.add_argument(
        "--clauses",
        action="store_true",
        help="rewrite only the clause table (from specs/faulty/clauses/*.yaml), keeping the measured runs",
    )
    args = parser.parse_args(argv)
    faults = load_faults()
    if args.clauses:
        section = render_clauses(load_clauses(faults=faults), faults)
        args.output.write_text(
            replace_clause_section(args.output.read_text(encoding="utf-8"), section), encoding="utf-8"
        )
        print(f"wrote the clause table of {args.output}")
        return 0
    if args.reports is None:
        parser.error("--reports DIR or FAULT_REPORTS_DIR is required")
    runs = load_runs(Path(args.reports), faults)
    if not runs:
        parser.error(f"no fault runs in {args.reports} (expected <fault>/{RUN_FILE} folders)")
    args.output.write_text(render(faults, runs), encoding="utf-8")
    print(f"wrote {args.output} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
