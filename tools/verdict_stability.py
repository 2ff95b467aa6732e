"""How stable the suite's verdicts are: the whole default conformance run, N times, quiet and beside a
busy neighbour, and a table of every scenario's outcomes across the runs.

    python tools/verdict_stability.py --runs 5 --neighbour none --neighbour yes \
        [--sut interop/node/sut.toml] [--out docs/verdict-stability.md] [-- extra pytest options]

Each run is `./conform` (with --sut when given) into a folder of its own under --keep; with
`--neighbour yes`, one `yes > /dev/null` process runs on the same cores for the whole run, as a CI
runner shared with anything at all would have. The table counts, per scenario, the runs that
passed, failed, were inconclusive or hung, marks the ones that flipped, and gives the host figures
of the inconclusive ones. Appends (or writes) a Markdown section per SUT and neighbour.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_PASSING = ("failed", "error", "stale-known-failure", "hung", "inconclusive")


@dataclass
class Run:
    number: int
    neighbour: str
    exit_status: int
    duration_s: float
    statuses: dict[str, str]
    reasons: dict[str, str]
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextmanager
def neighbour(kind: str) -> Iterator[None]:
    """`yes`: one busy process on the host for the duration; `none`: nothing."""
    if kind == "none":
        yield
        return
    busy = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        busy.wait()


def run_once(number: int, kind: str, sut: str | None, folder: Path, extra: Sequence[str]) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(ROOT / "conform"), "--report-dir", str(folder), *(["--sut", sut] if sut else []), *extra]
    started = time.monotonic()
    with neighbour(kind), (folder / "output.txt").open("w") as output:
        status = subprocess.run(
            command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, check=False
        ).returncode
    took = time.monotonic() - started
    report = json.loads((folder / "conformance-report.json").read_text(encoding="utf-8"))
    statuses = {row["id"]: row["status"] for row in report["scenarios"] if row["status"] != "not-run"}
    reasons = {row["id"]: row["reason"] for row in report["scenarios"] if row["reason"]}
    figures = {sid: t["figures"] for t in report["tests"] for sid in t["scenario_ids"] if t.get("figures")}
    return Run(number, kind, status, took, statuses, reasons, figures)


def table(runs: list[Run], title: str) -> str:
    """The Markdown section for one SUT and neighbour."""
    ids = sorted({sid for run in runs for sid in run.statuses}, key=_id_key)
    lines = [
        f"### {title}",
        "",
        f"{len(runs)} run(s): exit statuses {[run.exit_status for run in runs]}, "
        f"{', '.join(f'{run.duration_s:.0f} s' for run in runs)}.",
        "",
    ]
    totals: Counter[str] = Counter(status for run in runs for status in run.statuses.values())
    lines.append("Outcomes over all runs: " + ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) + ".")
    lines.append("")
    unsettled = [
        sid for sid in ids if len({run.statuses.get(sid) for run in runs}) > 1 or _not_passing(runs, sid)
    ]
    if not unsettled:
        lines.append("Every scenario had the same outcome in every run, and none failed or was inconclusive.")
        return "\n".join(lines) + "\n"
    lines += ["| Scenario | Outcomes (run by run) | What the others said |", "|---|---|---|"]
    for sid in unsettled:
        outcomes = " ".join(run.statuses.get(sid, "-") for run in runs)
        said = "; ".join(
            f"run {run.number}: {run.reasons.get(sid, '')[:160]}{_host(run.figures.get(sid))}"
            for run in runs
            if run.statuses.get(sid) in NOT_PASSING
        )
        lines.append(f"| {sid} | {outcomes} | {said.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _not_passing(runs: list[Run], sid: str) -> bool:
    return any(run.statuses.get(sid) in NOT_PASSING for run in runs)


def _host(figures: dict[str, Any] | None) -> str:
    attempts = (figures or {}).get("host") or []
    if not attempts:
        return ""
    last = attempts[-1]
    return (
        f" [host, {len(attempts)} attempt(s), last: other processes {last['foreign_cpu_cores']:.2f} cores, "
        f"sampler late {last['sched_delay_max_ms']:.0f} ms, steal {last['steal_pct']:.1f} %]"
    )


def _id_key(sid: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in sid.split("."))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per neighbour (default 5)")
    parser.add_argument(
        "--neighbour", action="append", choices=("none", "yes"), help="repeatable; default none and yes"
    )
    parser.add_argument("--sut", help="the manifest (default: the reference)")
    parser.add_argument(
        "--keep", type=Path, default=ROOT / "reports" / "stability", help="where each run's reports go"
    )
    parser.add_argument("--out", type=Path, help="append the tables to this Markdown file")
    parser.add_argument("extra", nargs="*", help="options passed to ./conform (after --)")
    args = parser.parse_args(argv)
    sections = []
    for kind in args.neighbour or ["none", "yes"]:
        runs = []
        for number in range(1, args.runs + 1):
            folder = args.keep / f"{Path(args.sut).parent.name if args.sut else 'reference'}-{kind}-{number}"
            run = run_once(number, kind, args.sut, folder, args.extra)
            print(
                f"[stability] {kind} run {number}: exit {run.exit_status} in {run.duration_s:.0f} s",
                flush=True,
            )
            runs.append(run)
        name = args.sut or "the reference (implementation/sut.toml)"
        sections.append(table(runs, f"{name}, {'one `yes` neighbour' if kind == 'yes' else 'quiet'}"))
    text = "\n".join(sections)
    print(text)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
