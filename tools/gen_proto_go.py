"""Regenerate the Go contract package interop/go/exchangev1 from proto/ (protoc-gen-go, protoc-gen-go-grpc).

Usage: python tools/gen_proto_go.py [--check]
The plugins are built from interop/go's module (its go.mod pins them as tools), so the output
depends only on committed versions; protoc is the one of grpcio-tools, as in tools/gen_proto.py.
--check generates into a temporary folder and exits 1 if anything differs from what is committed
(2 when Go is missing or cannot build the plugins).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gen_proto import check_or_replace  # the sibling script: run as a script, tools/ is on sys.path
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
MODULE_DIR = ROOT / "interop" / "go"
MODULE = "github.com/opensqt/grpc-conformance/interop/go"
GENERATED_DIR = "exchangev1"
PLUGINS = {
    "protoc-gen-go": "google.golang.org/protobuf/cmd/protoc-gen-go",
    "protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc",
}


def go_binary() -> str | None:
    found = shutil.which("go")
    if found is None and Path("/usr/local/go/bin/go").is_file():
        found = "/usr/local/go/bin/go"
    return found


def build_plugins(go: str, folder: Path) -> None:
    for name, package in PLUGINS.items():
        subprocess.run(
            [go, "build", "-o", str(folder / name), package],
            cwd=MODULE_DIR,
            check=True,
            timeout=300,
        )


def generate(go: str, out: Path, plugins: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-go={plugins / 'protoc-gen-go'}",
        f"--plugin=protoc-gen-go-grpc={plugins / 'protoc-gen-go-grpc'}",
        f"--go_out={out}",
        f"--go_opt=module={MODULE}",
        f"--go-grpc_out={out}",
        f"--go-grpc_opt=module={MODULE}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    options = parser.parse_args()
    go = go_binary()
    if go is None:
        print("go not found: cannot build protoc-gen-go", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        plugins, fresh = Path(tmp) / "bin", Path(tmp) / "out"
        plugins.mkdir()
        fresh.mkdir()
        try:
            build_plugins(go, plugins)
        except subprocess.CalledProcessError as exc:
            print(f"cannot build the protoc plugins with {go}: {exc}", file=sys.stderr)
            return 2
        generate(go, fresh, plugins)
        return check_or_replace(
            fresh / GENERATED_DIR, MODULE_DIR / GENERATED_DIR, options.check, "tools/gen_proto_go.py"
        )


if __name__ == "__main__":
    sys.exit(main())
