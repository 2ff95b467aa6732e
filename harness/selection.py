"""Which tests run and how they are judged: scenario IDs and levels of a test, --scenario selection,
known failures (strict xfail), opt-in levels (soak, long benchmarks) and capability gating."""

from __future__ import annotations

import json

import pytest

from harness.markers import item_levels, scenario_ids
from harness.options import explicit_markexpr
from harness.outcomes import NotApplicable, not_applicable
from harness.rerun import chosen as rerun_ids
from harness.sut.manifest import Manifest


def write_listing(items: list[pytest.Item], config: pytest.Config) -> None:
    """--list-scenarios: every collected test's scenario IDs and levels, as JSON."""
    listing = config.getoption("list_scenarios")
    if listing is None:
        return
    records = [
        {
            "nodeid": item.nodeid,
            "path": str(item.path),
            "scenarios": scenario_ids(item),
            "levels": item_levels(item),
        }
        for item in items
    ]
    listing.write_text(json.dumps(records, indent=1), encoding="utf-8")


def select(items: list[pytest.Item], config: pytest.Config, manifest: Manifest) -> list[pytest.Item]:
    """Marks known failures and returns the items to deselect (the rest stay in `items`)."""
    selectors: list[str] = config.getoption("scenario")
    rerun = rerun_ids(config)
    markexpr = explicit_markexpr(config)
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        ids = scenario_ids(item)
        for sid in ids:
            item.user_properties.append(("scenario", sid))
        listed = [sid for sid in ids if sid in manifest.known_failures]
        # a test that judges each ID in its own check (the verdicts fixture) handles its known failures there
        if listed and "verdicts" not in getattr(item, "fixturenames", ()):
            # strict: a known failure that passes fails the run, so the list cannot go stale
            reason = f"known failure {listed[0]}: {manifest.known_failures[listed[0]]}"
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        if selectors and not any(matches(sid, sel) for sid in ids for sel in selectors):
            dropped.append(item)
        elif rerun is not None and not rerun.intersection(ids):
            dropped.append(item)  # --rerun-failed: only the tests of the IDs that did not pass
        elif "soak" not in markexpr and item.get_closest_marker("soak") is not None:
            dropped.append(item)  # soak runs only when asked for: -m soak
        elif "perf" not in markexpr and item.get_closest_marker("perf_long") is not None:
            dropped.append(item)  # too noisy for a quick form on a shared 2-core machine: -m perf
        else:
            keep.append(item)
    items[:] = keep
    return dropped


def matches(scenario_id: str, selector: str) -> bool:
    return scenario_id == selector or scenario_id.startswith(selector + ".")


def missing_capabilities(item: pytest.Item, manifest: Manifest) -> list[str]:
    """The capabilities the item's `requires` markers name that the SUT does not claim."""
    wanted = [str(cap) for marker in item.iter_markers("requires") for cap in marker.args]
    return [cap for cap in dict.fromkeys(wanted) if not manifest.has_capability(cap)]


def skip_unless_claimed(item: pytest.Item, manifest: Manifest) -> None:
    missing = missing_capabilities(item, manifest)
    if missing:
        not_applicable(item, NotApplicable(manifest.name, capabilities=tuple(missing)))
