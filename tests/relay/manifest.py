"""The relay control's manifest: the reference's, with its connector behind tests/relay/relay_connector.py."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.sut.manifest import DEFAULT_MANIFEST

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from specs.faulty.manifests import to_toml

RELAY = Path(__file__).resolve().parent / "relay_connector.py"


def relay_manifest(folder: Path, known_failures: dict[str, str]) -> Path:
    data = tomllib.loads(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
    data["name"] = "reference behind a byte relay"
    connector = data["programs"]["exchange_connector"]
    own = [part.replace("127.0.0.1:{grpc_port}", "127.0.0.1:@PORT@") for part in connector["command"]]
    connector["command"] = ["{python}", str(RELAY), "--listen", "127.0.0.1:{grpc_port}", "--", *own]
    for program in data["programs"].values():  # paths in the reference's manifest are relative to it
        program["command"] = [
            str(DEFAULT_MANIFEST.parent / part) if part.startswith("..") else part
            for part in program["command"]
        ]
    if "compose" in data:
        data["compose"]["file"] = str((DEFAULT_MANIFEST.parent / data["compose"]["file"]).resolve())
    data["known_failures"] = known_failures
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "relay.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path
