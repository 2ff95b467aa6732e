"""tools/mutation.py's pure parts: the stratified sample is stable for a seed, the report's counts and
score add up, a mutant's id survives a line shift. No mutant is run here."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


mt = _load()


def mutants(module: str, count: int) -> list[Any]:
    return [
        mt.Mutant(module, f"{module}-{i:04d}", "core/NumberReplacer", i, (10 + i, 4), (10 + i, 5), "f")
        for i in range(count)
    ]


POPULATION = {"hub": 900, "server": 400, "auth": 60, "freshness": 90, "subscription": 120, "shared_calls": 12}


def catalogue() -> dict[str, list[Any]]:
    return {name: mutants(name, count) for name, count in POPULATION.items()}


def test_allocation_gives_every_module_its_floor_and_the_rest_in_proportion() -> None:
    quota = mt.allocate(POPULATION, 150)
    assert sum(quota.values()) == 150
    assert all(quota[name] >= min(mt.MIN_PER_MODULE, POPULATION[name]) for name in POPULATION)
    assert quota["hub"] > quota["server"] > quota["subscription"] >= quota["auth"]
    assert quota["shared_calls"] == mt.MIN_PER_MODULE


def test_allocation_never_exceeds_what_a_module_has_and_shares_a_small_total() -> None:
    assert mt.allocate({"a": 3, "b": 100}, 50) == {"a": 3, "b": 47}
    assert mt.allocate({"a": 3, "b": 4}, 50) == {"a": 3, "b": 4}
    small = mt.allocate(POPULATION, 12)
    assert sum(small.values()) == 12 and all(count >= 2 for count in small.values())
    assert mt.allocate(POPULATION, 0) == dict.fromkeys(POPULATION, 0)


def test_sample_is_stratified_and_stable_for_a_seed() -> None:
    first = mt.stratified_sample(catalogue(), 150, seed=7)
    shuffled = {name: list(reversed(items)) for name, items in catalogue().items()}
    again = mt.stratified_sample(shuffled, 150, seed=7)
    other = mt.stratified_sample(catalogue(), 150, seed=8)
    ids = {name: [m.job_id for m in chosen] for name, chosen in first.items()}
    assert ids == {name: [m.job_id for m in chosen] for name, chosen in again.items()}
    assert ids != {name: [m.job_id for m in chosen] for name, chosen in other.items()}
    assert Counter({name: len(chosen) for name, chosen in first.items()}) == Counter(
        mt.allocate(POPULATION, 150)
    )
    for name, chosen in first.items():
        assert all(m.module == name for m in chosen)
        assert len({m.job_id for m in chosen}) == len(chosen)


def test_tally_and_score() -> None:
    made = mutants("hub", 7)
    results = [
        mt.Result(made[0], "killed"),
        mt.Result(made[1], "killed"),
        mt.Result(made[2], "timeout", mt.Change(12, "a = 0", "a = 1")),
        mt.Result(made[3], "survived", mt.Change(13, "x = 1", "x = 2")),
        mt.Result(made[4], "survived", mt.Change(14, "y = 1", "y = 2")),
        mt.Result(made[5], "pending"),
        mt.Result(made[6], "killed", mt.Change(16, "z = 1", "z = 2")),
    ]
    # a verdict counts for a survivor or a timeout; one on a killed mutant is ignored
    verdicts = {r.mutant_id: mt.Verdict("equivalent", "unused") for r in (results[3], results[6])}
    t = mt.tally(results, verdicts)
    assert (t.made, t.killed, t.survived, t.timed_out, t.equivalent, t.pending) == (6, 3, 2, 1, 1, 1)
    assert t.score == pytest.approx(3 / 5)  # killed / (made - equivalent): a timeout is no kill
    both = t + t
    assert (both.made, both.killed, both.equivalent) == (12, 6, 2) and both.score == pytest.approx(3 / 5)
    timeout_judged = mt.tally(results, {results[2].mutant_id: mt.Verdict("equivalent", "slower only")})
    assert timeout_judged.equivalent == 1 and timeout_judged.score == pytest.approx(3 / 5)
    assert mt.Tally().score is None
    assert mt.percent(0.75) == "75 %" and mt.percent(None) == "-"


def test_outcomes_from_cosmic_ray_results() -> None:
    assert mt.outcome_of(None) == "pending"
    assert mt.outcome_of({"worker_outcome": "skipped"}) == "skipped"
    assert mt.outcome_of({"worker_outcome": "normal", "test_outcome": "survived"}) == "survived"
    assert mt.outcome_of({"worker_outcome": "normal", "test_outcome": "killed", "output": "F"}) == "killed"
    assert (
        mt.outcome_of({"worker_outcome": "normal", "test_outcome": "killed", "output": "timeout"})
        == "timeout"
    )
    assert mt.outcome_of({"worker_outcome": "exception", "test_outcome": "incompetent"}) == "incompetent"


DIFF = """--- mutation diff ---
--- aimplementation/connector_core/auth.py
+++ bimplementation/connector_core/auth.py
@@ -36,7 +36,7 @@
     values = [value for key, value in metadata or () if key == "authorization"]
     if not values:
         return None
-    if len(values) > 1:
+    if len(values) >= 1:
         return ""
"""


def test_change_and_id_survive_a_line_shift() -> None:
    change = mt.parse_change(DIFF)
    assert change == mt.Change(39, "if len(values) > 1:", "if len(values) >= 1:")
    shifted = mt.parse_change(DIFF.replace("@@ -36,7 +36,7 @@", "@@ -40,7 +40,7 @@"))
    assert shifted is not None and shifted.line == 43
    op = "core/ReplaceComparisonOperator_Gt_GtE"
    here = mt.Mutant("auth", "a", op, 3, (39, 18), (39, 19), "_presented_token")
    there = mt.Mutant("auth", "b", op, 3, (43, 18), (43, 19), "_presented_token")
    assert mt.mutant_id(here, change) == mt.mutant_id(there, shifted)
    assert mt.mutant_id(here, change).startswith("auth:_presented_token:ReplaceComparisonOperator_Gt_GtE:")
    assert mt.parse_change("--- mutation diff ---\n") is None


def test_annotations_and_type_checking_blocks_are_set_aside() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    Alias = int | str\n"
        "def f(a: int | None = 1) -> str | None:\n"
        "    return a + 1\n"
    )
    spans = mt.unevaluated_spans(source)
    assert mt.inside((4, 16), spans)  # the | in the TYPE_CHECKING block
    assert mt.inside((5, 13), spans)  # the | in a's annotation
    assert mt.inside((5, 32), spans)  # the | in the return annotation
    assert not mt.inside((5, 22), spans)  # the default value 1 is evaluated
    assert not mt.inside((6, 13), spans)  # the + in the body
    evaluated = mt.unevaluated_spans(source.replace("from __future__ import annotations\n", ""))
    assert not mt.inside((4, 13), evaluated)  # without the future import annotations run


def test_batches_cover_the_sample_in_a_seeded_order() -> None:
    chosen = mutants("hub", 23)
    batches = mt.batched(chosen, 10, "1:hub:order")
    assert [len(batch) for batch in batches] == [10, 10, 3]
    assert sorted(m.job_id for batch in batches for m in batch) == [m.job_id for m in chosen]
    assert batches == mt.batched(chosen, 10, "1:hub:order")
    assert batches[0] != chosen[:10]  # not the top of the file first
