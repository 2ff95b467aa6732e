"""Leaks as growth that follows the work, for any runtime.

A churn scenario samples the program after every round of work (threads, open files, memory, and
whatever count of concurrent work its runtime's standard collectors show). A leak grows with the
rounds; a runtime's lazy start-up (a thread pool that grows once, an allocator's first arena, a Go
runtime that keeps an OS thread it once needed) is a constant offset that does not. So the
judgement is the slope over rounds, taken robustly (Theil-Sen: the median of the slopes between
every pair of rounds), so that one late or early sample moves it little.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Per round of churn, what a series may grow by and still be no leak.
DEFAULT_ALLOWED_PER_ROUND = {
    "threads": 0.34,  # one thread in three rounds: never one per client
    "fds": 0.34,
    "rss_mb": 1.0,
    "tasks": 0.5,  # exchange_connector_tasks, go_goroutines, nodejs_active_handles
}


def theil_sen_slope(values: Sequence[float]) -> float:
    """The median of the slopes between every pair of samples (one sample per round)."""
    slopes = [
        (values[j] - values[i]) / (j - i) for i in range(len(values)) for j in range(i + 1, len(values))
    ]
    return statistics.median(slopes) if slopes else 0.0


@dataclass
class GrowthSeries:
    """Samples taken after each round: name -> value per round (a series may be absent at first)."""

    rounds: list[dict[str, float]] = field(default_factory=list)

    def add(self, sample: Mapping[str, float]) -> None:
        self.rounds.append(dict(sample))

    def series(self) -> dict[str, list[float]]:
        names = {name for sample in self.rounds for name in sample}
        return {
            name: [sample[name] for sample in self.rounds if name in sample]
            for name in sorted(names)
            if all(name in sample for sample in self.rounds)
        }

    def leaks(self, clients_per_round: int, allowed: Mapping[str, float] | None = None) -> list[str]:
        """A line for each series whose slope is past its allowance, in words: what grew, by how
        much a round, against what is allowed, and the samples."""
        limits = {**DEFAULT_ALLOWED_PER_ROUND, **(allowed or {})}
        found = []
        for name, values in self.series().items():
            kind = _kind(name)
            if kind not in limits or len(values) < 3:
                continue
            slope = theil_sen_slope(values)
            if slope > limits[kind]:
                shown = ", ".join(f"{v:.1f}" if kind == "rss_mb" else f"{v:g}" for v in values)
                found.append(
                    f"{name} grew {slope:.2f} a round of {clients_per_round} clients (allowed "
                    f"{limits[kind]:g}): {shown}"
                )
        return found


def _kind(name: str) -> str:
    return name if name in ("threads", "fds", "rss_mb") else "tasks"


__all__ = ["DEFAULT_ALLOWED_PER_ROUND", "GrowthSeries", "theil_sen_slope"]
