"""Keep a long soak run's evidence in docs/soak-runs/<name>/, where tools/bench_report.py finds it.

    python tools/keep_soak_run.py accelerated-24h /tmp/soak-accel/reports --title "..." [--note "..."]

Copies the run's snapshots (soak-snapshots.jsonl) and writes figures.json: the soak figures of its
results file (perf-results.json), the verdict of each 7.1.1 scenario from its conformance report
(when the run has ended), the title and a note. A run still going is kept with what it has so far.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def soak_figures(results: Path) -> dict[str, Any]:
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    figures = data.get("by_mode", {}).get("soak", {})
    return {name: {"value": e["value"], "unit": e.get("unit", ""), "measured_at": e.get("measured_at")}
            for name, e in figures.items()}  # fmt: skip


def verdicts(report: Path) -> dict[str, str]:
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    rows = data.get("scenarios", [])
    return {r["id"]: r["status"] for r in rows if r["id"].startswith("7.1.1.") and r["status"] != "not-run"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="folder name under docs/soak-runs/")
    parser.add_argument("report_dir", type=Path, help="the run's --report-dir")
    parser.add_argument("--title", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    snapshots = args.report_dir / "soak-snapshots.jsonl"
    if not snapshots.is_file():
        parser.error(f"no snapshots at {snapshots}")
    target = ROOT / "docs" / "soak-runs" / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshots, target / "snapshots.jsonl")
    meta = {
        "title": args.title,
        "note": args.note,
        "figures": soak_figures(args.report_dir / "perf-results.json"),
        "verdicts": verdicts(args.report_dir / "conformance-report.json"),
    }
    (target / "figures.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
