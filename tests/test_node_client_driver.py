"""docs/examples/node-client-driver.toml names a Node.js client driver that starts and speaks the
protocol: the Node.js grpc-js client of interop/node/client (`client.js --driver`).

The §3.1/§4.1 scenarios (and 4.1.1.x1 against both connectors) run against this driver in the
cross-stack matrix (tests/test_interop_matrix.py, whose cells take the driver from this manifest);
here the manifest itself is checked as a user would run it: its command, from its own folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.sut.client_driver import start_driver
from harness.sut.manifest import load_manifest
from specs.integration.test_interop_node import _install_dependencies

ROOT = Path(__file__).resolve().parents[1]
NODE_MANIFEST = ROOT / "docs" / "examples" / "node-client-driver.toml"


@pytest.mark.timeout(150)  # npm ci on the first run, then a second
def test_node_client_driver_manifest_starts_its_driver(tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("environment: node not found" if node is None else "environment: npm not found")
    _install_dependencies(npm)
    manifest = load_manifest(NODE_MANIFEST)
    assert "client_library" in manifest.capabilities, (
        "expected the Node driver's manifest to claim client_library"
    )
    assert not manifest.known_failures, (
        f"expected the Node client driver to have no known failures left, got {manifest.known_failures}"
    )
    driver = start_driver(manifest, tmp_path / "driver")
    try:
        assert driver.ready.get("language", "").startswith("node"), (
            f"expected the ready line of a Node.js driver, got {driver.ready}"
        )
        answer = driver.call("get_account", 5.0, "D4")
        assert answer["event"] == "error" and answer.get("kind") == "bad_command", (
            f"expected get_account before connect to be refused as bad_command, got {answer}"
        )
    finally:
        driver.close()
