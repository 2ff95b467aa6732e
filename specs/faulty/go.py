"""The faulty Go connector: interop/go's exchange_connector with one fault switched on.

The Go connector carries a switch for the faulty-SUT set, the environment variable
EXCHANGE_CONNECTOR_FAULT; a fault's manifest is interop/go/sut.toml with that variable set and
`{root}` made absolute (the manifest is written elsewhere). Where the Go binaries are missing (no
Go: tools/bootstrap.sh builds them into interop/go/bin), the runs cannot start: go_missing() says
why, as an environment limit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

GO_DIR = Path(__file__).resolve().parents[2] / "interop" / "go"
GO_MANIFEST = GO_DIR / "sut.toml"
GO_CONNECTOR = GO_DIR / "bin" / "exchange_connector"
FAULT_ENV = "EXCHANGE_CONNECTOR_FAULT"
# fault name in faults.yaml -> the value of FAULT_ENV that switches it on in the Go connector
FAULTS: dict[str, str] = {
    "go-ignore-symbol-filter": "ignore-symbol-filter",
}
CONNECTOR_KEYS = ("command", "health_command", "tls_args", "token_args")


def go_missing() -> str | None:
    """Why the Go connector cannot run here (an environment limit), or None when it can."""
    if not GO_CONNECTOR.is_file():
        return f"environment: no {GO_CONNECTOR} (tools/bootstrap.sh builds it where go is on PATH)"
    return None


def go_faulty_manifest(fault: str) -> dict[str, Any]:
    """interop/go/sut.toml's data with `fault` switched on in the connector."""
    data: dict[str, Any] = tomllib.loads(GO_MANIFEST.read_text(encoding="utf-8"))
    programs: dict[str, Any] = data["programs"]
    for program in programs.values():
        for key in CONNECTOR_KEYS:
            if key in program:
                program[key] = [item.replace("{root}", str(GO_DIR)) for item in program[key]]
    connector = programs["exchange_connector"]
    connector["env"] = {**connector.get("env", {}), FAULT_ENV: FAULTS[fault]}
    data["name"] = f"faulty-{fault}"
    data["description"] = f"The Go connector of interop/go with the fault {FAULTS[fault]!r} (specs/faulty)"
    data.pop("known_failures", None)
    return data


__all__ = ["FAULTS", "FAULT_ENV", "GO_DIR", "GO_MANIFEST", "go_faulty_manifest", "go_missing"]
