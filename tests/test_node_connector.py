"""The Node.js connector of interop/node: its faulty manifests, and the control of its fault runs.

tests/test_fault_catching.py runs the suite against each Node fault (specs/faulty/node.py); here the
Node connector without a fault passes the same selections, so what catches a fault is the fault.
Where Node.js or the connector's packages are missing, these tests skip and say so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.sut.manifest import load_manifest
from specs.faulty.catalogue import load_faults
from specs.faulty.manifests import write_manifest
from specs.faulty.node import FAULT_ENV, FAULTS, NODE_DIR, NODE_MANIFEST, node_missing
from specs.faulty.runs import run_suite

CONTROL_TIMEOUT_S = 240.0


def require_node() -> None:
    missing = node_missing()
    if missing:
        pytest.skip(missing)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_node_fault_manifest_switches_on_only_the_fault(fault: str, tmp_path: Path) -> None:
    require_node()
    faulty = load_manifest(write_manifest(fault, tmp_path))
    node = load_manifest(NODE_MANIFEST)
    connector, reference = faulty.program("exchange_connector"), node.program("exchange_connector")
    assert dict(connector.env).get(FAULT_ENV) == FAULTS[fault], (
        f"expected the connector's environment to set {FAULT_ENV}={FAULTS[fault]}, got {dict(connector.env)}"
    )
    expected = tuple(item.replace("{root}", str(NODE_DIR)) for item in reference.command)
    assert connector.command == expected, (
        f"expected the Node connector's command {expected}, got {connector.command}"
    )
    for name in ("market_maker", "live_server"):
        assert faulty.program(name) == node.program(name), f"expected {name} unchanged"
    assert faulty.capabilities == node.capabilities, (
        f"expected the Node manifest's capabilities, got {sorted(faulty.capabilities)}"
    )


@pytest.mark.timeout(30)
def test_node_connector_refuses_an_unknown_flag() -> None:
    require_node()
    done = subprocess.run(
        ["node", str(NODE_DIR / "src" / "main.js"), "serve", "--listen", "127.0.0.1:1", "--bogus", "x"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2 and "--bogus" in done.stderr and done.stderr.count("\n") == 1, (
        f"expected exit 2 with one line naming --bogus, got {done.returncode}: {done.stderr!r}"
    )


@pytest.mark.slow
@pytest.mark.timeout(CONTROL_TIMEOUT_S + 60)
def test_node_connector_passes_its_faults_selections(tmp_path: Path) -> None:
    require_node()
    catalogue = load_faults()
    selectors = list(dict.fromkeys(s for fault in FAULTS for s in catalogue[fault].select))
    result = run_suite("node-control", NODE_MANIFEST, selectors, tmp_path, timeout=CONTROL_TIMEOUT_S)
    caught = result.caught() if result.report_path.is_file() else {}
    assert not result.timed_out and result.returncode == 0 and not caught, (
        f"expected the Node connector without a fault to pass {selectors}, got {result.describe()}; "
        f"failed: {caught}; {result.output_tail()}"
    )
