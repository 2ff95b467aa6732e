"""The cross-stack matrix: {Python, Node, Go} exchange_connector x {Python, Node, Go} client driver.

Each cell is a manifest written at test time: the cell's connector manifest
(implementation/sut.toml, interop/node/sut.toml or interop/go/sut.toml, with its market_maker and
live_server) with the cell's client driver (the reference's, the Node one of
docs/examples/node-client-driver.toml, or the Go one of interop/go/sut.toml) and `client_library`
claimed. The suite runs each cell as a subprocess, two at a time. In 4.1.1.x1 the cell's driver
talks to the cell's connector, which is what the matrix proves; every cell runs it. The client
sections (the driver against the suite's mock exchange) involve no connector, and the connector's
basic scenarios (the suite's own client against it) no driver: each is judged once per stack, in the
cell that pairs the stack with itself (python+python, node+node, go+go), and the six mixed cells run
4.1.1.x1 alone. A cell passes when the run does, with its known failures (if any) reported as such.
Each cell's verdict goes into the test's report (its user properties) and into
<report-dir>/interop-matrix/<cell>.json; docs/interop.md shows the table of a real run. Where
Node.js is missing, the Node cells skip and say so; where the Go binaries are (no Go:
tools/bootstrap.sh builds them into interop/go/bin), the Go cells.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from specs.faulty.manifests import to_toml
from specs.faulty.runs import SuiteRun, run_suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONNECTORS = {
    "python": ROOT / "implementation" / "sut.toml",
    "node": ROOT / "interop" / "node" / "sut.toml",
    "go": ROOT / "interop" / "go" / "sut.toml",
}
DRIVERS = {
    "python": ROOT / "implementation" / "sut.toml",
    "node": ROOT / "docs" / "examples" / "node-client-driver.toml",
    "go": ROOT / "interop" / "go" / "sut.toml",
}
NODE_PACKAGES = {
    "connector": ROOT / "interop" / "node" / "node_modules" / "@grpc" / "grpc-js",
    "client driver": ROOT / "interop" / "node" / "client" / "node_modules" / "@grpc" / "grpc-js",
}
GO_BINARIES = {
    "connector": ROOT / "interop" / "go" / "bin" / "exchange_connector",
    "client driver": ROOT / "interop" / "go" / "bin" / "client_driver",
}
# The client sections (the driver against the suite's mock exchange), the connector's basics (the
# suite's client against the connector), and 4.1.1.x1 (the driver against the connector): all of
# them in a cell of one stack; the driver against the connector alone in a mixed cell.
SELECTORS = ("3.1", "4.1", "4.2.1.a", "4.2.2")
CROSS_STACK = ("4.1.1.x1",)
CELLS = [(connector, driver) for connector in CONNECTORS for driver in DRIVERS]
PARALLEL_RUNS = 2
RUN_TIMEOUT_S = 180.0
GOOD = frozenset({"passed", "known-failure", "not-applicable"})


def cell_name(connector: str, driver: str) -> str:
    return f"{connector}-connector+{driver}-driver"


def cell_selectors(connector: str, driver: str) -> tuple[str, ...]:
    """What a cell runs: everything in a cell of one stack, the cross-stack scenario in a mixed one."""
    return SELECTORS if connector == driver else CROSS_STACK


def _rooted(value: Any, folder: Path) -> Any:
    """`value` with every {root} made `folder` (the cell's manifest lives elsewhere)."""
    if isinstance(value, str):
        return value.replace("{root}", str(folder))
    if isinstance(value, list):
        return [_rooted(item, folder) for item in value]
    if isinstance(value, dict):
        return {key: _rooted(item, folder) for key, item in value.items()}
    return value


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return data


def cell_manifest(connector: str, driver: str) -> dict[str, Any]:
    """The cell's manifest data: the connector's manifest with the driver's [programs.client_driver]."""
    base_path, driver_path = CONNECTORS[connector], DRIVERS[driver]
    data = _read(base_path)
    data["programs"] = _rooted(data["programs"], base_path.parent)
    driver_data = _read(driver_path)
    data["programs"]["client_driver"] = _rooted(driver_data["programs"]["client_driver"], driver_path.parent)
    data["capabilities"] = sorted({*data.get("capabilities", []), "client_library"})
    client_known = {
        sid: reason
        for sid, reason in driver_data.get("known_failures", {}).items()
        if sid.startswith(("3.1", "4.1"))
    }
    known = {
        **{sid: r for sid, r in data.get("known_failures", {}).items() if not sid.startswith(("3.1", "4.1"))},
        **client_known,
    }
    if known:
        data["known_failures"] = known
    else:
        data.pop("known_failures", None)
    data["name"] = cell_name(connector, driver)
    data["description"] = (
        f"The {connector} exchange_connector with the {driver} client driver (the interop matrix)"
    )
    return data


def go_missing(connector: str, driver: str) -> str | None:
    """Why a cell with a Go program cannot run here (an environment limit), or None."""
    parts = [name for name, stack in (("connector", connector), ("client driver", driver)) if stack == "go"]
    for part in parts:
        if not GO_BINARIES[part].is_file():
            go_found = shutil.which("go") or Path("/usr/local/go/bin/go").is_file()
            why = "go build failed?" if go_found else "go not found"
            return (
                f"environment: no {GO_BINARIES[part].relative_to(ROOT)} (tools/bootstrap.sh builds it; {why})"
            )
    return None


def missing(connector: str, driver: str) -> str | None:
    """Why a cell cannot run here (an environment limit), or None."""
    return node_missing(connector, driver) or go_missing(connector, driver)


def node_missing(connector: str, driver: str) -> str | None:
    """Why a cell with a Node program cannot run here (an environment limit), or None."""
    parts = [name for name, stack in (("connector", connector), ("client driver", driver)) if stack == "node"]
    if not parts:
        return None
    if shutil.which("node") is None:
        return "environment: node not found"
    for part in parts:
        if not NODE_PACKAGES[part].is_dir():
            folder = NODE_PACKAGES[part].parents[2]
            return (
                f"environment: no node_modules in {folder.relative_to(ROOT)} (npm ci there; npm unavailable?)"
            )
    return None


class Cells:
    """The cells' suite runs: started on demand, or all at once, PARALLEL_RUNS at a time."""

    def __init__(self, folder: Path, parallel: int) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="interop-cell")
        self._runs: dict[tuple[str, str], Future[SuiteRun]] = {}
        self._lock = threading.Lock()

    def submit(self, connector: str, driver: str) -> Future[SuiteRun]:
        with self._lock:
            key = (connector, driver)
            if key not in self._runs:
                self._runs[key] = self._pool.submit(self._run, connector, driver)
            return self._runs[key]

    def _run(self, connector: str, driver: str) -> SuiteRun:
        name = cell_name(connector, driver)
        manifest = self.folder / "manifests" / f"{name}.toml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(to_toml(cell_manifest(connector, driver)), encoding="utf-8")
        # a private temp folder: a cell's run never waits for the machine-wide benchmark lock
        private_tmp = self.folder / name / "tmpdir"
        private_tmp.mkdir(parents=True, exist_ok=True)
        return run_suite(
            name,
            manifest,
            cell_selectors(connector, driver),
            self.folder / name,
            timeout=RUN_TIMEOUT_S,
            env={"TMPDIR": str(private_tmp)},
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def cells(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cells]:
    under_xdist = "PYTEST_XDIST_WORKER" in os.environ
    runs = Cells(tmp_path_factory.mktemp("interop-cells"), 1 if under_xdist else PARALLEL_RUNS)
    try:
        if not under_xdist:  # every selected, runnable cell at once, PARALLEL_RUNS at a time
            chosen = [
                (str(item.callspec.params["connector"]), str(item.callspec.params["driver"]))
                for item in request.session.items
                if isinstance(item, pytest.Function)
                and item.module is request.module
                and hasattr(item, "callspec")
            ]
            # the cells of one stack run longest: first, so the two lanes end together
            for connector, driver in sorted(dict.fromkeys(chosen), key=lambda cell: cell[0] != cell[1]):
                if missing(connector, driver) is None:
                    runs.submit(connector, driver)
        yield runs
    finally:
        runs.close()


def verdict(run: SuiteRun, statuses: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The cell's row: pass, known failures (with reasons) or fail (with what failed)."""
    counts: dict[str, int] = {}
    for status, _ in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    failed = {sid: reason for sid, (status, reason) in statuses.items() if status not in GOOD}
    known = {sid: reason for sid, (status, reason) in statuses.items() if status == "known-failure"}
    ok = not run.timed_out and run.returncode == 0 and not failed and bool(statuses)
    return {
        "verdict": "fail" if not ok else "known failures" if known else "pass",
        "counts": counts,
        "failed": failed,
        "known_failures": known,
        "duration_s": round(run.duration_s, 1),
        "selectors": list(run.selectors),
    }


def record(name: str, row: dict[str, Any], config: pytest.Config) -> None:
    """The cell's row as <report-dir>/interop-matrix/<cell>.json."""
    target = Path(config.getoption("report_dir")) / "interop-matrix"
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{name}.json").write_text(json.dumps({"cell": name, **row}, indent=1) + "\n", encoding="utf-8")


@pytest.mark.exclusive  # two suite runs at a time of its own
@pytest.mark.timeout(600)  # a cell waits for the runs queued before its own; each takes under a minute
@pytest.mark.parametrize(("connector", "driver"), CELLS, ids=[cell_name(c, d) for c, d in CELLS])
def test_interop_cell(
    connector: str,
    driver: str,
    cells: Cells,
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
) -> None:
    why = missing(connector, driver)
    if why:
        pytest.skip(why)
    name = cell_name(connector, driver)
    run = cells.submit(connector, driver).result(timeout=560)
    statuses = run.statuses() if run.report_path.is_file() else {}
    row = verdict(run, statuses)
    request.node.user_properties += [("interop_verdict", row["verdict"]), ("interop_cell", json.dumps(row))]
    record(name, row, pytestconfig)
    print(f"interop matrix: {name}: {row['verdict']} in {row['duration_s']} s, {row['counts']}")
    assert row["verdict"] != "fail", (
        f"expected the cell {name} to pass {' '.join(run.selectors)} (known failures aside), got "
        f"{run.describe()}; failed: {row['failed'] or 'none reported'}; {run.output_tail(25)}"
    )
    assert "4.1.1.x1" in statuses and statuses["4.1.1.x1"][0] in ("passed", "known-failure"), (
        f"expected the cell {name} to run 4.1.1.x1 (its driver against its connector), got {statuses.get('4.1.1.x1')}"
    )
