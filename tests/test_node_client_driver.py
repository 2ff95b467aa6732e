"""A second client stack through the client-driver protocol: the §3.1 and §4.1 scenarios against the
Node.js grpc-js client of interop/node/client (`client.js --driver`), described by
docs/examples/node-client-driver.toml (its known failures, if it lists any, reported as such).

The suite runs as a subprocess against that manifest; the run must pass, with exactly the listed
known failures reported as such and every other client scenario passed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import catalogue
from harness.sut.manifest import load_manifest
from specs.faulty.runs import run_suite
from specs.integration.test_interop_node import _install_dependencies

ROOT = Path(__file__).resolve().parents[1]
NODE_MANIFEST = ROOT / "docs" / "examples" / "node-client-driver.toml"
SECTIONS = ("3.1", "4.1")
RUN_TIMEOUT_S = 240.0


@pytest.mark.timeout(400)  # npm ci on the first run, then about half a minute
def test_node_client_driver_passes_the_client_scenarios_but_its_known_failures(tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("environment: node not found" if node is None else "environment: npm not found")
    _install_dependencies(npm)
    manifest = load_manifest(NODE_MANIFEST)
    run = run_suite("node-client-driver", NODE_MANIFEST, SECTIONS, tmp_path / "run", timeout=RUN_TIMEOUT_S)
    statuses = run.statuses() if run.report_path.is_file() else {}
    for sid, (status, reason) in sorted(statuses.items()):
        print(f"node client driver: {status:14} {sid:10} {reason[:120]}")
    assert not run.timed_out and run.returncode == 0, (
        f"expected the Node client driver to pass the client scenarios but its known failures, got "
        f"{run.describe()}; {run.output_tail()}"
    )
    wanted = [s.id for s in catalogue.load().testable() if s.section in SECTIONS]
    known = {sid for sid in wanted if sid in manifest.known_failures}
    wrong = {
        sid: statuses.get(sid, ("not run", ""))[0]
        for sid in wanted
        if statuses.get(sid, ("not run", ""))[0] != ("known-failure" if sid in known else "passed")
    }
    assert not wrong, (
        f"expected {sorted(known)} reported as known failures and every other client scenario passed, got {wrong}"
    )
