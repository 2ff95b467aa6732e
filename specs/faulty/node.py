"""The faulty Node.js connector: interop/node's exchange_connector with one fault switched on.

The Node connector carries a switch for the faulty-SUT set, the environment variable
EXCHANGE_CONNECTOR_FAULT; a fault's manifest is interop/node/sut.toml with that variable set and
`{root}` made absolute (the manifest is written elsewhere). Where Node.js or the connector's
packages are missing, the runs cannot start: node_missing() says why, as an environment limit.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NODE_DIR = Path(__file__).resolve().parents[2] / "interop" / "node"
NODE_MANIFEST = NODE_DIR / "sut.toml"
FAULT_ENV = "EXCHANGE_CONNECTOR_FAULT"
# fault name in faults.yaml -> the value of FAULT_ENV that switches it on in the Node connector
FAULTS: dict[str, str] = {
    "node-ignore-symbol-filter": "ignore-symbol-filter",
}
CONNECTOR_KEYS = ("command", "health_command", "tls_args", "token_args")


def node_missing() -> str | None:
    """Why the Node connector cannot run here (an environment limit), or None when it can."""
    if shutil.which("node") is None:
        return "environment: node not found"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return f"environment: no node_modules in {NODE_DIR} (npm ci there; npm unavailable?)"
    return None


def node_faulty_manifest(fault: str) -> dict[str, Any]:
    """interop/node/sut.toml's data with `fault` switched on in the connector."""
    data: dict[str, Any] = tomllib.loads(NODE_MANIFEST.read_text(encoding="utf-8"))
    connector = data["programs"]["exchange_connector"]
    for key in CONNECTOR_KEYS:
        if key in connector:
            connector[key] = [item.replace("{root}", str(NODE_DIR)) for item in connector[key]]
    connector["env"] = {**connector.get("env", {}), FAULT_ENV: FAULTS[fault]}
    data["name"] = f"faulty-{fault}"
    data["description"] = (
        f"The Node.js connector of interop/node with the fault {FAULTS[fault]!r} (specs/faulty)"
    )
    data.pop("known_failures", None)
    return data


__all__ = ["FAULTS", "FAULT_ENV", "NODE_DIR", "NODE_MANIFEST", "node_faulty_manifest", "node_missing"]
