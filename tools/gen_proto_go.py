"""Regenerate the Go contract package interop/go/exchangev1 from proto/ (protoc-gen-go, protoc-gen-go-grpc).

Usage: python tools/gen_proto_go.py [--check]
The plugins are built from interop/go's module (its go.mod pins them as tools), so the output
depends only on committed versions; protoc is the one of grpcio-tools, as in tools/gen_proto.py.
--check generates into a temporary folder and exits 1 if anything differs from what is committed
(2 when Go is missing or cannot build the plugins).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in one tree: {p}" for p in sorted(files_a ^ files_b)]
    for rel in sorted(files_a & files_b):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(f"differs: {rel}")
    return diffs


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
        committed = MODULE_DIR / GENERATED_DIR
        if options.check:
            diffs = differences(fresh / GENERATED_DIR, committed)
            for line in diffs:
                print(f"stale generated Go code: {line}", file=sys.stderr)
            if diffs:
                print("run: python tools/gen_proto_go.py", file=sys.stderr)
            return 1 if diffs else 0
        shutil.rmtree(committed, ignore_errors=True)
        shutil.copytree(fresh / GENERATED_DIR, committed)
    print(f"generated {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
