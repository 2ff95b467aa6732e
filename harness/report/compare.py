"""What changed since an earlier run: `--compare PREVIOUS.json` (a conformance-report.json).

Two lists, printed at the end of the run and written to <report-dir>/comparison.json and
comparison.md:

* scenarios whose status changed. A *regression* is a scenario that passed before and now does not
  (failed, error, known failure, not applicable or skipped); a scenario absent from either run, or
  not run in this one, is not compared. With --compare, the run's exit status is 1 when there is a
  regression, even if every test of this run passed (a new known-failure entry hides nothing).
* figures that moved beyond their noise band. Each figure's band is the first rule of TOLERANCES
  its name matches: |now - before| > max(absolute, relative x |before|). The bands are wide on
  purpose: this host's noise is larger than most real changes (docs/BENCHMARKS.md). Figures are
  reported, never a reason to fail.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.outcomes import Status

# (name suffix or fragment, relative, absolute, why); the first match wins
TOLERANCES: tuple[tuple[str, float, float, str], ...] = (
    ("_lost", 0.0, 0.0, "a count of errors: any change"),
    ("_reordered", 0.0, 0.0, "a count of errors: any change"),
    ("error_rate_pct", 0.0, 0.001, "an error rate: any change above rounding"),
    ("_ratio", 0.25, 0.0, "a ratio of two figures from one run: +-25 %"),
    ("_ms", 0.5, 0.2, "a latency: +-50 % or 0.2 ms, the host's run-to-run spread"),
    ("_per_s", 0.3, 0.0, "a throughput: +-30 %"),
    ("_cpu", 0.5, 2.0, "CPU: +-50 % or 2 points"),
    ("_mb", 0.2, 5.0, "memory: +-20 % or 5 MB"),
    ("_kb", 0.25, 2.0, "memory per unit: +-25 % or 2 KB"),
    ("coverage_pct", 0.0, 1.0, "coverage: 1 point"),
    ("", 0.3, 0.0, "any other figure: +-30 %"),
)
NOT_PASSING = {status.value for status in Status if status != Status.PASSED}
NOT_COMPARED = {"not-run", "pending"}


@dataclass(frozen=True)
class StatusChange:
    id: str
    title: str
    before: str
    after: str
    regression: bool


@dataclass(frozen=True)
class FigureChange:
    name: str
    unit: str
    before: float
    after: float
    tolerance: str

    @property
    def change_pct(self) -> float:
        return 100.0 * (self.after - self.before) / abs(self.before) if self.before else math.inf


@dataclass(frozen=True)
class Comparison:
    previous: str
    statuses: list[StatusChange]
    figures: list[FigureChange]

    @property
    def regressions(self) -> list[StatusChange]:
        return [change for change in self.statuses if change.regression]

    def to_json(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "regressions": len(self.regressions),
            "statuses": [asdict(change) for change in self.statuses],
            "figures": [
                {**asdict(change), "change_pct": _finite(change.change_pct)} for change in self.figures
            ],
        }


def tolerance(name: str) -> tuple[float, float, str]:
    """(relative, absolute, why) of the noise band of figure `name`."""
    for fragment, relative, absolute, why in TOLERANCES:
        if fragment in name:
            return relative, absolute, why
    raise AssertionError("TOLERANCES ends with a rule that matches every name")  # pragma: no cover


def moved(name: str, before: float, after: float) -> bool:
    relative, absolute, _ = tolerance(name)
    if math.isnan(before) or math.isnan(after):
        return math.isnan(before) != math.isnan(after)
    return abs(after - before) > max(absolute, relative * abs(before))


def compare(previous: dict[str, Any], current: dict[str, Any], previous_name: str = "") -> Comparison:
    """The differences between two conformance-report.json documents."""
    before = {row["id"]: row for row in previous.get("scenarios", [])}
    statuses = []
    for row in current.get("scenarios", []):
        old = before.get(row["id"])
        if old is None or old["status"] == row["status"]:
            continue
        if old["status"] in NOT_COMPARED or row["status"] in NOT_COMPARED:
            continue
        regression = old["status"] == "passed" and row["status"] in NOT_PASSING
        statuses.append(
            StatusChange(row["id"], row.get("title", ""), old["status"], row["status"], regression)
        )
    old_figures, new_figures = _latest(previous), _latest(current)
    figures = [
        FigureChange(name, unit, old_figures[name][0], value, tolerance(name)[2])
        for name, (value, unit) in sorted(new_figures.items())
        if name in old_figures and moved(name, old_figures[name][0], value)
    ]
    return Comparison(previous_name, statuses, figures)


def _latest(report: dict[str, Any]) -> dict[str, tuple[float, str]]:
    latest: dict[str, tuple[float, str]] = {}
    for metric in report.get("metrics", []):
        latest[str(metric["name"])] = (float(metric["value"]), str(metric.get("unit", "")))
    return latest


def _finite(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None


def load(path: Path) -> dict[str, Any]:
    """An earlier report; a file that is not one is a usage error the caller reports."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable conformance report: {error}") from None
    if not isinstance(data, dict) or "scenarios" not in data:
        raise ValueError(f"{path}: not a conformance report (no 'scenarios' key)")
    return data


def lines(comparison: Comparison) -> list[str]:
    """The comparison as terminal lines."""
    out = [f"compared with {comparison.previous}"]
    if not comparison.statuses and not comparison.figures:
        return [*out, "no scenario changed status; no figure moved beyond its tolerance"]
    for change in comparison.statuses:
        mark = "REGRESSION" if change.regression else "changed"
        out.append(f"{mark:<10} {change.id:<12} {change.before} -> {change.after}  {change.title}")
    for figure in comparison.figures:
        pct = "" if not math.isfinite(figure.change_pct) else f" ({figure.change_pct:+.0f} %)"
        out.append(
            f"{'moved':<10} {figure.name}: {figure.before:.4g} -> {figure.after:.4g} {figure.unit}{pct}"
            f"  [{figure.tolerance}]"
        )
    out.append(
        f"{len(comparison.regressions)} scenario regression(s), {len(comparison.figures)} figure(s) moved"
    )
    return out


def render_markdown(comparison: Comparison) -> str:
    out = [f"# Changes since {comparison.previous}", ""]
    out += [
        f"Scenario regressions: **{len(comparison.regressions)}**",
        "",
        "## Scenarios whose status changed",
        "",
    ]
    if comparison.statuses:
        out += ["| Scenario | Title | Before | Now | Regression |", "|---|---|---|---|---|"]
        for change in comparison.statuses:
            out.append(
                f"| {change.id} | {change.title} | {change.before} | {change.after} | "
                f"{'yes' if change.regression else 'no'} |"
            )
    else:
        out.append("None.")
    out += ["", "## Figures that moved beyond their tolerance", ""]
    if comparison.figures:
        out += ["| Figure | Before | Now | Change | Tolerance |", "|---|---|---|---|---|"]
        for figure in comparison.figures:
            pct = f"{figure.change_pct:+.0f} %" if math.isfinite(figure.change_pct) else "-"
            out.append(
                f"| `{figure.name}` | {figure.before:.4g} {figure.unit} | {figure.after:.4g} {figure.unit} | "
                f"{pct} | {figure.tolerance} |"
            )
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


def write(comparison: Comparison, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "comparison.json").write_text(json.dumps(comparison.to_json(), indent=2), encoding="utf-8")
    (directory / "comparison.md").write_text(render_markdown(comparison), encoding="utf-8")
