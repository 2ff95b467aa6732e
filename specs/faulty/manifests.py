"""The SUT manifest of each faulty program, made from the reference's own.

A faulty manifest is implementation/sut.toml with one change to one program: for a connector
fault, its command runs `python -m specs.faulty.connector --fault NAME` in place of `python -m
implementation.connector` (the serve flags stay as they are); for a live_server fault
(specs/faulty/live_server.py), `python -m specs.faulty.live_server --fault NAME` in place of
`python -m implementation.live_server`; for a client-driver fault (specs/faulty/driver.py),
`python -m specs.faulty.driver --fault NAME` in place of `python -m implementation.client_driver`.
It claims what the reference claims. The manifests are written at test time, so they always
follow the reference's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from harness.sut.manifest import DEFAULT_MANIFEST

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODULE = "implementation.connector"
FAULTY_MODULE = "specs.faulty.connector"
# program -> (the reference's module, the faulty one)
MODULES = {
    "exchange_connector": (REFERENCE_MODULE, FAULTY_MODULE),
    "live_server": ("implementation.live_server", "specs.faulty.live_server"),
    "client_driver": ("implementation.client_driver", "specs.faulty.driver"),
}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def faulty_program(fault: str) -> str:
    """The program a fault replaces: live_server for the faults of specs/faulty/live_server.py, the
    client driver for those of specs/faulty/driver.py."""
    from specs.faulty.driver import FAULTS as DRIVER_FAULTS
    from specs.faulty.live_server import FAULTS as LIVE_SERVER_FAULTS

    if fault in DRIVER_FAULTS:
        return "client_driver"
    return "live_server" if fault in LIVE_SERVER_FAULTS else "exchange_connector"


def faulty_manifest(fault: str, reference: Path = DEFAULT_MANIFEST) -> dict[str, Any]:
    """The reference manifest's data with one program's command running `fault` (for a fault of
    the Node connector, specs/faulty/node.py: interop/node/sut.toml's, with the fault switched on;
    for one of the Go connector, specs/faulty/go.py: interop/go/sut.toml's)."""
    from specs.faulty.go import FAULTS as GO_FAULTS
    from specs.faulty.go import go_faulty_manifest
    from specs.faulty.node import FAULTS as NODE_FAULTS
    from specs.faulty.node import node_faulty_manifest

    if fault in NODE_FAULTS:
        return node_faulty_manifest(fault)
    if fault in GO_FAULTS:
        return go_faulty_manifest(fault)
    data: dict[str, Any] = tomllib.loads(reference.read_text(encoding="utf-8"))
    name = faulty_program(fault)
    reference_module, faulty_module = MODULES[name]
    connector = data["programs"][name]
    command: list[str] = list(connector["command"])
    try:
        at = next(i for i in range(len(command) - 1) if command[i : i + 2] == ["-m", reference_module])
    except StopIteration:
        raise ValueError(
            f"{reference}: the {name} command {command} does not run `-m {reference_module}`"
        ) from None
    connector["command"] = [*command[:at], "-m", faulty_module, "--fault", fault, *command[at + 2 :]]
    # the programs run in their own folders: the repository must be on the path for `specs`
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]
    env = dict(connector.get("env", {}))
    env["PYTHONPATH"] = os.pathsep.join(paths).replace("{", "{{").replace("}", "}}")
    connector["env"] = env
    data["name"] = f"faulty-{fault}"
    data["description"] = f"The reference implementation with the {name} fault {fault!r} (specs/faulty)"
    data.pop("known_failures", None)
    return data


def write_manifest(fault: str, folder: Path, reference: Path = DEFAULT_MANIFEST) -> Path:
    """Write the manifest of `fault` to folder/faulty-<fault>.toml; its path."""
    data = faulty_manifest(fault, reference)
    text = to_toml(data)
    if tomllib.loads(text) != data:  # the writer below is small: make sure it said what it meant
        raise AssertionError(f"the TOML written for {fault!r} does not read back as the manifest")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"faulty-{fault}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def to_toml(data: dict[str, Any]) -> str:
    """TOML for a manifest's data (strings, numbers, booleans, lists and tables)."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines += ["", f"[{'.'.join(_key(part) for part in path)}]"]
    lines += [f"{_key(key)} = {_value(value)}" for key, value in scalars.items()]
    for key, value in tables.items():
        _table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


__all__ = ["faulty_manifest", "faulty_program", "to_toml", "write_manifest"]
