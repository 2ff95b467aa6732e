"""Mutation testing of the connector core with cosmic-ray: what the scenarios miss.

    python tools/mutation.py [--sample 150] [--seed 1207] [--modules hub,auth] [--lock /tmp/heavy.lock]
                             [--max-minutes 60] [--report docs/mutation.md] [--note TEXT]
    python tools/mutation.py --report-only      # the report again, from the runs kept in --workdir
    python tools/mutation.py --list             # the sample, nothing run

Steps: a clean clone of HEAD in --workdir (cosmic-ray writes each mutant over the source file, so
the working tree is never the one mutated); one cosmic-ray session per module, whose test command
runs only the scenarios that exercise that module (tools/mutation/modules.yaml) with the python of
an existing venv (same packages) and PYTHONPATH on the clone, so the suite and the connector it
starts as a subprocess both import the mutant; a sample stratified by module with a fixed seed (the
other mutants are marked skipped in the session, as cosmic-ray's own filters do); the run, in
batches that each take --lock, interleaved across modules so a run cut short by --max-minutes still
covers every module; and the report, with the verdicts on survivors from
tools/mutation/verdicts.yaml (keyed by a mutant id that survives line shifts).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "tools" / "mutation"
MODULES_FILE = CONFIG_DIR / "modules.yaml"
VERDICTS_FILE = CONFIG_DIR / "verdicts.yaml"
DEFAULT_SAMPLE = 150
DEFAULT_SEED = 1207
DEFAULT_BATCH = 10
# Each module gets at least this many mutants (when it has them), so a small module is measured too.
MIN_PER_MODULE = 8
# A mutant's run may take this much longer than the unmutated run before it counts as timed out:
# twice the baseline covers a loaded machine, the constant the connector's own start-up bounds.
TIMEOUT_FACTOR = 2.0
TIMEOUT_EXTRA_S = 30.0
VERDICT_KINDS = {
    "equivalent": "equivalent",
    "gap": "accepted gap",
    "needs-scenario": "needs a scenario",
    # a survivor of the run that a scenario added since kills, checked by applying the mutant alone;
    # the run's own score still counts it survived, until a run at a later commit measures it
    "killed-since": "killed by a scenario added since",
}
BASELINE_TIMEOUT_S = 1200.0
# Set in the environment of everything a run starts, so the programs a timed-out mutant left behind
# (the suite starts the connector in a session of its own, out of reach of cosmic-ray's group kill)
# can be found and ended.
MARKER = "OPENSQT_MUTATION_RUN"
UNDETECTED = ("survived", "timeout")  # the outcomes that get a verdict
OUTCOMES = ("killed", "survived", "timeout", "incompetent", "pending", "skipped")


# ------------------------------------------------------------------ the pure parts


@dataclass(frozen=True)
class Scope:
    """One module to mutate and the scenario selectors that exercise it."""

    name: str
    path: str
    scenarios: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Mutant:
    """One mutation cosmic-ray can make (its session's work item)."""

    module: str
    job_id: str
    operator: str
    occurrence: int
    start: tuple[int, int]
    end: tuple[int, int]
    definition: str = ""

    @property
    def order(self) -> tuple[tuple[int, int], tuple[int, int], str, int]:
        """Where it is in the file: the order that sampling and the report use (job ids are random)."""
        return (self.start, self.end, self.operator, self.occurrence)

    @property
    def operator_name(self) -> str:
        return self.operator.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Change:
    """What a mutant changed: the first changed line and the text before and after."""

    line: int
    before: str
    after: str


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    outcome: str  # one of OUTCOMES
    change: Change | None = None

    @property
    def mutant_id(self) -> str:
        return mutant_id(self.mutant, self.change)


@dataclass(frozen=True)
class Verdict:
    kind: str  # a key of VERDICT_KINDS
    why: str


@dataclass(frozen=True)
class Tally:
    """One module's (or the run's) counts. Made = the mutants run to a verdict of the suite."""

    made: int = 0
    killed: int = 0
    survived: int = 0
    timed_out: int = 0
    equivalent: int = 0  # survivors and timeouts judged equivalent
    incompetent: int = 0  # cosmic-ray could not run the mutant (not counted as made)
    pending: int = 0  # sampled, not run yet

    @property
    def score(self) -> float | None:
        """Killed / non-equivalent mutants; None when there is nothing to judge. A timeout is not a
        kill: a mutant that only slows the connector overruns the timeout and may still pass."""
        judged = self.made - self.equivalent
        return self.killed / judged if judged > 0 else None

    def __add__(self, other: Tally) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def allocate(available: Mapping[str, int], total: int, floor: int = MIN_PER_MODULE) -> dict[str, int]:
    """How many of `total` mutants each module gets: at least `floor` (or all it has, or an equal
    share when `total` is too small for the floors), the rest in proportion to what is left in each
    (largest remainders, ties by name). Never more than a module has."""
    names = sorted(available)
    if not names or total <= 0:
        return dict.fromkeys(names, 0)
    floor = min(floor, total // len(names))
    given = {name: min(available[name], floor) for name in names}
    remaining = min(total, sum(available.values())) - sum(given.values())
    room = {name: available[name] - given[name] for name in names}
    if remaining > 0 and sum(room.values()) > 0:
        whole = sum(room.values())
        quotas = {name: remaining * room[name] / whole for name in names}
        for name in names:
            given[name] += math.floor(quotas[name])
        left = remaining - sum(math.floor(quota) for quota in quotas.values())
        by_remainder = sorted(names, key=lambda name: (-(quotas[name] - math.floor(quotas[name])), name))
        while left > 0:
            for name in by_remainder:
                if left > 0 and given[name] < available[name]:
                    given[name] += 1
                    left -= 1
    return given


def stratified_sample(
    mutants: Mapping[str, Sequence[Mutant]], total: int, seed: int, floor: int = MIN_PER_MODULE
) -> dict[str, list[Mutant]]:
    """A sample of `total` mutants, allotted to modules by allocate() and drawn in each module with
    a generator seeded by (seed, module): the same seed gives the same sample, whatever order the
    session listed them in."""
    quota = allocate({module: len(items) for module, items in mutants.items()}, total, floor)
    chosen: dict[str, list[Mutant]] = {}
    for module in sorted(mutants):
        ordered = sorted(mutants[module], key=lambda mutant: mutant.order)
        drawn = random.Random(f"{seed}:{module}").sample(ordered, quota[module])
        chosen[module] = sorted(drawn, key=lambda mutant: mutant.order)
    return chosen


def batched(chosen: Sequence[Mutant], size: int, seed: str) -> list[list[Mutant]]:
    """The sample in batches of `size`, in a seeded random order: a run cut short has run a random
    part of each module's sample, not the top of the file."""
    order = list(chosen)
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def unevaluated_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The parts of a module Python never evaluates: annotations under `from __future__ import
    annotations` and `if TYPE_CHECKING:` blocks. A mutant there is equivalent by construction."""
    tree = ast.parse(source)
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    spans: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def add(node: ast.expr | ast.stmt | None) -> None:
        if node is not None:
            spans.append(((node.lineno, node.col_offset), (node.end_lineno or 0, node.end_col_offset or 0)))

    for node in ast.walk(tree):
        if postponed:
            if isinstance(node, ast.arg):
                add(node.annotation)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                add(node.returns)
            elif isinstance(node, ast.AnnAssign):
                add(node.annotation)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            add(node)
    return spans


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def inside(position: tuple[int, int], spans: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    return any(start <= position < end for start, end in spans)


def parse_change(diff: str) -> Change | None:
    """The first changed line and the removed and added text of a cosmic-ray mutation diff."""
    line = 0
    first = 0
    removed: list[str] = []
    added: list[str] = []
    in_hunk = False
    for text in diff.splitlines():
        if text.startswith("@@"):
            # "@@ -12,7 +12,7 @@": the old side's first line
            line = int(text.split()[1].lstrip("-").split(",")[0])
            in_hunk = True
            continue
        if not in_hunk:
            continue
        if text.startswith("-"):
            first = first or line
            removed.append(text[1:].strip())
            line += 1
        elif text.startswith("+"):
            first = first or line
            added.append(text[1:].strip())
        else:
            line += 1
    if not removed and not added:
        return None
    return Change(first, " / ".join(removed), " / ".join(added))


def mutant_id(mutant: Mutant, change: Change | None) -> str:
    """module:definition:operator:hash of the change's text. No line number, no occurrence: the id
    stays the same when code elsewhere in the file moves, so a verdict stays attached."""
    text = f"{change.before}\0{change.after}" if change else f"{mutant.start}{mutant.end}"
    digest = hashlib.sha1(f"{mutant.operator}\0{text}".encode()).hexdigest()[:8]
    return f"{mutant.module}:{mutant.definition or '-'}:{mutant.operator_name}:{digest}"


def outcome_of(result: Mapping[str, Any] | None) -> str:
    """A cosmic-ray work result (as `cosmic-ray dump` writes it) as one of OUTCOMES."""
    if result is None:
        return "pending"
    worker = result.get("worker_outcome")
    if worker == "skipped":
        return "skipped"
    if worker != "normal":
        return "incompetent"  # no mutation possible, or the worker failed
    test = result.get("test_outcome")
    if test == "survived":
        return "survived"
    if test == "killed":
        # cosmic-ray reports a run past its timeout as killed, with this output
        return "timeout" if result.get("output") == "timeout" else "killed"
    return "incompetent"


def tally(results: Sequence[Result], verdicts: Mapping[str, Verdict]) -> Tally:
    counts = {outcome: 0 for outcome in OUTCOMES}
    equivalent = 0
    for result in results:
        counts[result.outcome] += 1
        verdict = verdicts.get(result.mutant_id)
        if result.outcome in UNDETECTED and verdict is not None and verdict.kind == "equivalent":
            equivalent += 1
    return Tally(
        made=counts["killed"] + counts["survived"] + counts["timeout"],
        killed=counts["killed"],
        survived=counts["survived"],
        timed_out=counts["timeout"],
        equivalent=equivalent,
        incompetent=counts["incompetent"],
        pending=counts["pending"],
    )


def percent(score: float | None) -> str:
    return "-" if score is None else f"{100 * score:.0f} %"


def load_scopes(path: Path = MODULES_FILE) -> dict[str, Scope]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        name: Scope(name, str(entry["path"]), tuple(str(s) for s in entry["scenarios"]), str(entry["why"]))
        for name, entry in data["modules"].items()
    }


def load_verdicts(path: Path = VERDICTS_FILE) -> dict[str, Verdict]:
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    verdicts: dict[str, Verdict] = {}
    for key, entry in (data.get("verdicts") or {}).items():
        kind = str(entry["verdict"])
        if kind not in VERDICT_KINDS:
            raise ValueError(f"{path.name}: {key}: verdict {kind!r} is not one of {', '.join(VERDICT_KINDS)}")
        verdicts[str(key)] = Verdict(kind, " ".join(str(entry.get("why", "")).split()))
    return verdicts


# ------------------------------------------------------------------ the run


@dataclass
class Run:
    """Where one run keeps its clone, sessions and figures; rerunning with the same options resumes."""

    workdir: Path
    head: str
    seed: int
    sample: int
    python: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def clone(self) -> Path:
        return self.workdir / f"repo-{self.head[:12]}"

    modules: tuple[str, ...] = ()  # a subset of modules.yaml, when not all

    @property
    def folder(self) -> Path:
        subset = "-" + "+".join(self.modules) if self.modules else ""
        return self.workdir / f"run-{self.head[:12]}-seed{self.seed}-n{self.sample}{subset}"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    def load(self) -> None:
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text(encoding="utf-8"))

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=1, sort_keys=True), encoding="utf-8")

    def env(self) -> dict[str, str]:
        """The clone first on the import path (the venv's editable install points at the working
        tree); no byte code, so a mutant written within the same second as the last is never
        shadowed by a stale .pyc; no coverage start-up hook."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.clone), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env[MARKER] = str(self.folder)
        env["PATH"] = os.pathsep.join([str(self.python.parent), env.get("PATH", "")])
        return env

    def cosmic_ray(self, *args: str, log: Path | None = None) -> str:
        command = [str(self.python.parent / "cosmic-ray"), *args]
        done = subprocess.run(
            command, cwd=self.clone, env=self.env(), capture_output=True, text=True, check=False
        )
        if log is not None:
            log.write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            raise SystemExit(
                f"[mutation] {shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return done.stdout


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def prepare_clone(run: Run) -> None:
    """A clean clone of HEAD, reused while it is still clean (a run killed mid-mutant leaves one
    dirty: cloned again)."""
    clone = run.clone
    if clone.exists():
        if git("rev-parse", "HEAD", cwd=clone) == run.head and not git("status", "--porcelain", cwd=clone):
            return
        shutil.rmtree(clone)
    run.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    if git("rev-parse", "HEAD", cwd=clone) != run.head:
        subprocess.run(["git", "checkout", "--quiet", "--detach", run.head], cwd=clone, check=True)


_CLAIM: list[Any] = []  # the open lock file, held for the life of the process


def claim_workdir(workdir: Path) -> None:
    """One run at a time in a workdir: another would re-clone the tree under a running mutant."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / ".running").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"[mutation] a run is in progress in {workdir}; --report-only reads it") from None
    _CLAIM.append(handle)


def check_imports(run: Run, scopes: Mapping[str, Scope]) -> None:
    """The suite, the connector and every mutated module must come from the clone."""
    modules = [
        "harness.plugin",
        "implementation.connector",
        *(scope_module(scope) for scope in scopes.values()),
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    files = subprocess.run(
        [str(run.python), "-c", code, *modules], cwd=run.folder, env=run.env(),
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    strays = [name for name in files if not Path(name).resolve().is_relative_to(run.clone.resolve())]
    if strays:
        raise SystemExit(f"[mutation] imports resolve outside the clone {run.clone}: {strays}")


def scope_module(scope: Scope) -> str:
    return scope.path.removesuffix(".py").replace("/", ".")


def scenario_command(run: Run, scope: Scope) -> list[str]:
    # The Node client's copies of 4.2.1.a and 4.2.2.a are left out: they judge a second client stack
    # against the same connector paths the Python client's tests already cover, at npm's cost.
    return [
        str(run.python), "-m", "pytest", "-p", "no:randomly", "-x", "-q", "--no-header", "specs",
        "--ignore=specs/integration/test_interop_node.py",
        *(f"--scenario={selector}" for selector in scope.scenarios),
        f"--report-dir={run.folder / 'reports' / scope.name}",
    ]  # fmt: skip


def write_config(run: Run, scope: Scope, timeout: float) -> Path:
    path = run.folder / "configs" / f"{scope.name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # TOML by hand: the one writer here would be another dependency; json.dumps quotes as TOML does
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(scope.path)}\n"
        f"timeout = {timeout:.0f}.0\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(shlex.join(scenario_command(run, scope)))}\n"
        '\n[cosmic-ray.distributor]\nname = "local"\n',
        encoding="utf-8",
    )
    return path


def dump(run: Run, session: Path) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    rows = []
    for line in run.cosmic_ray("dump", str(session)).splitlines():
        if line.strip():
            item, result = json.loads(line)
            rows.append((item, result))
    return rows


def mutant_of(module: str, item: Mapping[str, Any]) -> Mutant:
    spec = item["mutations"][0]
    return Mutant(
        module=module,
        job_id=str(item["job_id"]),
        operator=str(spec["operator_name"]),
        occurrence=int(spec["occurrence"]),
        start=(int(spec["start_pos"][0]), int(spec["start_pos"][1])),
        end=(int(spec["end_pos"][0]), int(spec["end_pos"][1])),
        definition=str(spec.get("definition_name") or ""),
    )


def catalogue(run: Run, scope: Scope) -> tuple[list[Mutant], int]:
    """Every mutant cosmic-ray makes of the module (its session, made once per run), less those in
    code Python never evaluates; and how many those were."""
    session = run.folder / "sessions" / f"{scope.name}-all.sqlite"
    if not session.exists():
        session.parent.mkdir(parents=True, exist_ok=True)
        config = write_config(run, scope, TIMEOUT_EXTRA_S)  # the timeout is set per batch later
        run.cosmic_ray("init", str(config), str(session))
    # the committed source, not the clone's file: a run in progress may have a mutant written there
    spans = unevaluated_spans(git("show", f"{run.head}:{scope.path}"))
    every = [mutant_of(scope.name, item) for item, _ in dump(run, session)]
    kept = [mutant for mutant in every if not inside(mutant.start, spans)]
    return kept, len(every) - len(kept)


@contextmanager
def held(lock: Path | None) -> Iterator[None]:
    """The machine's shared lock for heavy work (as flock(1) takes it), for one batch at a time."""
    if lock is None:
        yield
        return
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def baseline(run: Run, scope: Scope, lock: Path | None) -> float:
    """The unmutated run of the module's scenarios: it must pass; its duration sets the timeout."""
    known = run.state.setdefault("baseline_s", {})
    if scope.name in known:
        return float(known[scope.name])
    command = scenario_command(run, scope)
    with held(lock):
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=run.clone, env=run.env(), capture_output=True, text=True, check=False,
            timeout=BASELINE_TIMEOUT_S,
        )  # fmt: skip
        took = time.monotonic() - started
        reap_strays(run)
    if done.returncode != 0:
        raise SystemExit(
            f"[mutation] the unmutated scenarios of {scope.name} do not pass ({done.returncode}): "
            f"{shlex.join(command)}\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
        )
    known[scope.name] = round(took, 1)
    run.save()
    print(f"[mutation] baseline {scope.name}: {took:.1f} s", flush=True)
    return took


SKIP_SCRIPT = """\
import sys
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkResult, WorkerOutcome
keep = set(sys.argv[2:])
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    skip = [item.job_id for item in db.work_items if item.job_id not in keep]
    db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
"""


def run_batch(run: Run, scope: Scope, number: int, batch: Sequence[Mutant], lock: Path | None) -> None:
    """One batch of one module's sample: its own session (the module's, every other mutant marked
    skipped as cosmic-ray's filters do), run by `cosmic-ray exec` under the lock."""
    sessions = run.folder / "sessions"
    session = sessions / f"{scope.name}-{number:03d}.sqlite"
    done = run.state.setdefault("batches", {}).setdefault(scope.name, {})
    if str(number) in done:
        return
    if not session.exists():
        shutil.copyfile(sessions / f"{scope.name}-all.sqlite", session)
        subprocess.run(
            [str(run.python), "-c", SKIP_SCRIPT, str(session), *(m.job_id for m in batch)],
            env=run.env(), check=True,
        )  # fmt: skip
    timeout = TIMEOUT_FACTOR * float(run.state["baseline_s"][scope.name]) + TIMEOUT_EXTRA_S
    config = write_config(run, scope, timeout)
    with held(lock):
        load = os.getloadavg()[0]
        started = time.monotonic()
        run.cosmic_ray("exec", str(config), str(session), log=session.with_suffix(".log"))
        took = time.monotonic() - started
        strays = reap_strays(run)
    done[str(number)] = {
        "mutants": len(batch), "seconds": round(took, 1), "load_1m_before": round(load, 2), "strays": strays,
    }  # fmt: skip
    run.save()
    print(
        f"[mutation] {scope.name} batch {number}: {len(batch)} mutants in {took:.0f} s "
        f"({took / max(len(batch), 1):.1f} s each)",
        flush=True,
    )


def reap_strays(run: Run) -> int:
    """End the processes of this run still alive after a batch (by pid, found by MARKER); how many."""
    mark = f"{MARKER}={run.folder}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone already, or not ours to read
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        if signal_number == signal.SIGTERM and found:
            time.sleep(2.0)
    return len(found)


def results_of(run: Run, scope: Scope, sample: Sequence[Mutant]) -> list[Result]:
    wanted = {mutant.job_id: mutant for mutant in sample}
    found: dict[str, Result] = {}
    for session in sorted((run.folder / "sessions").glob(f"{scope.name}-[0-9]*.sqlite")):
        for item, result in dump(run, session):
            mutant = wanted.get(str(item["job_id"]))
            if mutant is None:
                continue
            outcome = outcome_of(result)
            if outcome == "skipped":
                continue
            change = parse_change(str(result.get("diff") or "")) if result else None
            found[mutant.job_id] = Result(mutant, outcome, change)
    return [found.get(mutant.job_id, Result(mutant, "pending")) for mutant in sample]


# ------------------------------------------------------------------ the report


def render(
    run: Run,
    scopes: Mapping[str, Scope],
    population: Mapping[str, tuple[int, int]],
    results: Mapping[str, Sequence[Result]],
    verdicts: Mapping[str, Verdict],
    command: str,
) -> str:
    tallies = {name: tally(results[name], verdicts) for name in scopes}
    total = sum(tallies.values(), Tally())
    state = run.state
    batches = state.get("batches", {})
    seconds = {name: sum(b["seconds"] for b in batches.get(name, {}).values()) for name in scopes}
    counted = {name: sum(b["mutants"] for b in batches.get(name, {}).values()) for name in scopes}
    per_mutant = {name: seconds[name] / counted[name] for name in scopes if counted[name]}
    ran = sum(counted.values())
    mean = sum(seconds.values()) / ran if ran else 0.0
    loads = [b["load_1m_before"] for module in batches.values() for b in module.values()]
    out: list[str] = []
    add = out.append
    add("# Mutation testing of the connector core")
    add("")
    add(
        "What the scenarios miss, measured by mutating the reference connector's core "
        "(`implementation/connector_core/`) and running, against each mutant, the scenarios that "
        "exercise the mutated module. A mutant the scenarios pass is a *survivor*: a change to the "
        "code that no scenario notices. This file is written by `tools/mutation.py`; the verdicts on "
        "survivors live in `tools/mutation/verdicts.yaml` and the module → scenario mapping in "
        "`tools/mutation/modules.yaml`."
    )
    add("")
    add("## Method")
    add("")
    add(
        "- **Tool: cosmic-ray** (pinned in `requirements.lock`, a dev dependency). It writes each "
        "mutant over the source file on disk and runs an arbitrary test command, so the connector that "
        "the scenarios start as a subprocess (`python -m implementation.connector serve`, "
        "`implementation/sut.toml`) imports the mutant. mutmut 3 does not fit: it copies the tree to "
        "`mutants/` and turns every function into a trampoline that picks the active mutant at call "
        "time inside the pytest process (after mapping tests to the functions they call there). Our "
        "scenarios are black-box: the code under test runs in a separate program that the suite starts, "
        "so its trampolines and its test-to-function map would never reach it."
    )
    add(
        "- **A clean clone, never the working tree.** The tool clones the repository at HEAD into "
        "`--workdir` and mutates only there. The scenarios run with the existing venv's python (the "
        "same packages) and `PYTHONPATH` on the clone, which comes before the venv's editable install; "
        "the tool checks that the suite, the connector and each mutated module import from the clone. "
        "`PYTHONDONTWRITEBYTECODE=1`: a mutant written in the same second as the previous one is never "
        "hidden by a stale `.pyc`."
    )
    add(
        "- **Per module, only the scenarios that exercise it** (`--scenario` selectors, pytest `-x`, "
        "`-p no:randomly`): the table below gives each selection and why. The scenarios with "
        "`timing: true` are left out: their bounds are measured beside the host and go INCONCLUSIVE "
        "(a non-zero exit, so a false kill) on a loaded machine; so are the Node client's copies of "
        "4.2.1.a and 4.2.2.a (a second client stack on the same connector paths, at npm's cost)."
    )
    add(
        f"- **Timeout per mutant**: {TIMEOUT_FACTOR:g} x the module's unmutated run + "
        f"{TIMEOUT_EXTRA_S:g} s (cosmic-ray kills the test command's process group then). Each "
        "module's unmutated run must pass before any of its mutants runs."
    )
    add(
        "- **Sample**: cosmic-ray's core operators make every mutant of a module (its `init`); those in "
        "code Python never evaluates (annotations under `from __future__ import annotations`, "
        "`if TYPE_CHECKING:` blocks) are set aside as equivalent by construction. Of the rest, "
        f"`--sample N` are drawn, stratified by module: each module at least {MIN_PER_MODULE} (or all it "
        "has), the rest in proportion to the module's mutants; within a module a generator seeded "
        "with (seed, module) draws them, so a seed always gives the same sample. The other mutants are "
        "marked skipped in the session, as cosmic-ray's own `cr-filter-*` tools do."
    )
    add(
        "- **Batches**: each module's sample runs in batches of at most "
        f"{DEFAULT_BATCH} mutants (`cosmic-ray exec` on a session of its own), round-robin across "
        "modules, each batch holding the machine's heavy-work lock (`--lock`) only while it runs. "
        "A rerun with the same options resumes; `--max-minutes` stops starting batches."
    )
    add(
        "- **Outcomes**: *killed*: the scenarios failed; *survived*: they passed; *timed out*: they "
        "overran the timeout. **Score = killed / (made - judged equivalent)**, made = killed + "
        "survived + timed out. A timeout is not counted as a kill: a mutant that only slows the "
        "connector overruns the timeout and may still pass (checked in the pilot, below), so each "
        "timeout is judged like a survivor. A kill can be a flake of a scenario rather than the "
        "mutant; a survivor cannot."
    )
    add(
        "- **Survivor ids** are `module:definition:operator:hash`, the hash of the operator and the "
        "changed text with no line number, so a verdict stays attached when other code moves. "
        "Verdicts: *equivalent* (no observable behaviour changes; argued), *accepted gap* (observable, "
        "but not worth a scenario; why), *needs a scenario* (what would catch it), *killed by a scenario "
        "added since* (the mutant applied alone to a later commit fails that scenario; the run's score "
        "still counts it as survived)."
    )
    add("")
    add("Command (the pilot below):")
    add("")
    add("```")
    add(command)
    add("```")
    add("")
    add("## Modules and their scenarios")
    add("")
    add("| module | scenarios run against its mutants | why |")
    add("| --- | --- | --- |")
    for name, scope in scopes.items():
        add(f"| `{name}` | {' '.join(scope.scenarios)} | {scope.why} |")
    add("")
    add("## Results")
    add("")
    started = state.get("started", "")
    finished = state.get("finished", "")
    add(
        f"Run of {started}{f' to {finished}' if finished else ''} at commit `{run.head[:12]}`, seed {run.seed}, sample {run.sample}"
        + (f" (of which {total.pending} not run yet)" if total.pending else "")
        + "."
    )
    for note in state.get("notes", []):
        add(f"{note}")
    if loads:
        add(
            f"Load average (1 min) at the start of the batches: {min(loads):.1f} to {max(loads):.1f}, "
            f"mean {sum(loads) / len(loads):.1f} on 2 cores."
        )
    add("")
    add(
        "| module | mutants (evaluated code) | set aside (never evaluated) | made | killed | survived "
        "| timed out | equivalent | score | unmutated run | per mutant |"
    )
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in scopes:
        t = tallies[name]
        kept, aside = population.get(name, (0, 0))
        base = state.get("baseline_s", {}).get(name)
        add(
            f"| `{name}` | {kept} | {aside} | {t.made} | {t.killed} | {t.survived} | {t.timed_out} "
            f"| {t.equivalent} | {percent(t.score)} | {f'{base:.0f} s' if base else '-'} "
            f"| {f'{per_mutant[name]:.0f} s' if name in per_mutant else '-'} |"
        )
    kept_all = sum(p[0] for p in population.values())
    aside_all = sum(p[1] for p in population.values())
    add(
        f"| **all** | {kept_all} | {aside_all} | {total.made} | {total.killed} | {total.survived} "
        f"| {total.timed_out} | {total.equivalent} | **{percent(total.score)}** | | "
        f"{f'{mean:.0f} s' if ran else '-'} |"
    )
    add("")
    if total.incompetent:
        add(f"Not counted: {total.incompetent} mutants cosmic-ray could not run (incompetent).")
        add("")
    if ran:
        allotted = allocate({name: population.get(name, (0, 0))[0] for name in scopes}, DEFAULT_SAMPLE)
        mean_all = sum(seconds.values()) / ran
        estimate = sum(allotted[name] * per_mutant.get(name, mean_all) for name in scopes)
        add(
            f"Time: {sum(seconds.values()) / 60:.0f} min for {ran} mutants, {mean:.0f} s a mutant on "
            f"average (a kill ends at the first failing scenario, a survivor runs them all). A run of "
            f"{DEFAULT_SAMPLE} at these rates takes about {estimate / 60:.0f} min, plus "
            f"{sum(state.get('baseline_s', {}).values()) / 60:.0f} min of unmutated runs; every mutant "
            f"of every module ({kept_all}) about {sum(population.get(n, (0, 0))[0] * per_mutant.get(n, mean_all) for n in scopes) / 3600:.0f} h."
        )
        add("")
    add("## Survivors and timeouts")
    add("")
    add(
        "Every mutant the scenarios did not kill, with its verdict (`tools/mutation/verdicts.yaml`). "
        "Line numbers are those of the commit above."
    )
    add("")
    survivors = [r for name in scopes for r in results[name] if r.outcome in UNDETECTED]
    if not survivors:
        add("None.")
    kinds: dict[str, int] = {}
    for name in scopes:
        listed = [r for r in results[name] if r.outcome in UNDETECTED]
        if not listed:
            continue
        add(f"### `{name}` ({scopes[name].path})")
        add("")
        add("| id | line | operator | change | outcome | verdict |")
        add("| --- | ---: | --- | --- | --- | --- |")
        for result in sorted(listed, key=lambda r: r.mutant.order):
            verdict = verdicts.get(result.mutant_id)
            label = f"**{VERDICT_KINDS[verdict.kind]}**: {verdict.why}" if verdict else "**not judged yet**"
            kinds[verdict.kind if verdict else "unjudged"] = (
                kinds.get(verdict.kind if verdict else "unjudged", 0) + 1
            )
            change = result.change
            line = change.line if change else result.mutant.start[0]
            text = f"`{_cell(change.before)}` → `{_cell(change.after)}`" if change else "-"
            add(
                f"| `{result.mutant_id}` | {scopes[name].path.rsplit('/', 1)[-1]}:{line} "
                f"| {result.mutant.operator_name} | {text} "
                f"| {'timed out' if result.outcome == 'timeout' else 'survived'} | {label} |"
            )
        add("")
    if kinds:
        add(
            "Verdicts: "
            + ", ".join(
                f"{count} {VERDICT_KINDS.get(kind, 'not judged yet')}"
                for kind, count in sorted(kinds.items())
            )
            + "."
        )
        add("")
    return "\n".join(out).rstrip() + "\n"


def shown_command(argv: Sequence[str]) -> str:
    """The command line as the report shows it: without the notes (they have their own lines)."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            shown.append(arg)
    return shlex.join(["python", "tools/mutation.py", *shown])


def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sample", type=int, default=DEFAULT_SAMPLE, help="mutants in all (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="the sample's seed (default %(default)s)"
    )
    parser.add_argument(
        "--modules", default="", help="comma-separated modules of modules.yaml (default: all)"
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="mutants per batch (default %(default)s)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opensqt-mutation"), help="scratch folder")
    parser.add_argument("--python", type=Path, default=ROOT / ".venv" / "bin" / "python",
                        help="the venv that runs the suite and cosmic-ray (default: the project's .venv)")  # fmt: skip
    parser.add_argument("--commit", default="HEAD", help="the commit to clone and mutate (default: HEAD)")
    parser.add_argument("--lock", type=Path, default=None, help="hold this flock(1) lock file per batch")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no batch after this long")
    parser.add_argument(
        "--report", type=Path, default=ROOT / "docs" / "mutation.md", help="where the report goes"
    )
    parser.add_argument("--note", action="append", default=[], help="a line about the run for the report")
    parser.add_argument("--report-only", action="store_true", help="write the report from the kept sessions")
    parser.add_argument("--list", action="store_true", help="print the sample and exit")
    parser.add_argument("--fail-under", type=float, default=None, help="exit 1 below this score (percent)")
    args = parser.parse_args(argv)

    scopes = load_scopes()
    if args.modules:
        wanted = [name.strip() for name in args.modules.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(scopes))
        if unknown:
            parser.error(f"unknown modules {unknown}; known: {', '.join(scopes)}")
        scopes = {name: scopes[name] for name in wanted}
    verdicts = load_verdicts()
    if not (args.python.parent / "cosmic-ray").exists():
        parser.error(
            f"{args.python.parent / 'cosmic-ray'} not found: run tools/bootstrap.sh (dev dependencies)"
        )
    run = Run(
        args.workdir.resolve(),
        git("rev-parse", "--verify", f"{args.commit}^{{commit}}"),
        args.seed,
        args.sample,
        args.python,
        modules=tuple(scopes) if args.modules else (),
    )
    run.load()
    if args.report_only:
        if not run.folder.exists():
            parser.error(f"no run in {run.folder} to report on")
    else:  # (a report from a run still in progress must not touch its clone)
        claim_workdir(run.workdir)
        prepare_clone(run)
        run.folder.mkdir(parents=True, exist_ok=True)
        check_imports(run, scopes)

    population: dict[str, tuple[int, int]] = {}
    everything: dict[str, list[Mutant]] = {}
    for name, scope in scopes.items():
        kept, aside = catalogue(run, scope)
        everything[name] = kept
        population[name] = (len(kept), aside)
    sample = stratified_sample(everything, args.sample, args.seed)
    if args.list:
        for name, chosen in sample.items():
            for mutant in chosen:
                print(f"{scopes[name].path}:{mutant.start[0]}:{mutant.start[1]} {mutant.operator_name}")
        return 0

    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    if args.note:  # what else ran on the machine, said when running or afterwards
        run.state["notes"] = list(dict.fromkeys([*run.state.get("notes", []), *args.note]))
        run.save()
    if not args.report_only:
        run.state.setdefault("started", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        run.state["command"] = shown_command(argv if argv is not None else sys.argv[1:])
        run.save()
        size = run.state.setdefault("batch", args.batch)  # a resumed run keeps its batches
        batches = {
            name: batched(chosen, size, f"{args.seed}:{name}:order") for name, chosen in sample.items()
        }
        rounds = max((len(b) for b in batches.values()), default=0)
        for number in range(rounds):  # round-robin: a run cut short still covers every module
            for name, scope in scopes.items():
                if number >= len(batches[name]):
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    break
                baseline(run, scope, args.lock)
                run_batch(run, scope, number, batches[name][number], args.lock)
        run.state["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        run.save()

    results = {name: results_of(run, scopes[name], sample[name]) for name in scopes}
    command = run.state.get("command") or shown_command(argv if argv is not None else sys.argv[1:])
    report = render(run, scopes, population, results, verdicts, command)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report, encoding="utf-8")
    total = sum((tally(results[name], verdicts) for name in scopes), Tally())
    for name in scopes:
        t = tally(results[name], verdicts)
        print(
            f"[mutation] {name:13} made {t.made:3}  killed {t.killed:3}  survived {t.survived:3}  "
            f"timed out {t.timed_out:2}  equivalent {t.equivalent:2}  score {percent(t.score)}"
        )
    print(
        f"mutation score: {percent(total.score)} ({total.killed} killed of {total.made - total.equivalent} "
        f"non-equivalent mutants; {total.timed_out} timed out; {total.pending} not run) -> {args.report}"
    )
    if args.fail_under is not None and (total.score is None or 100 * total.score < args.fail_under):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
