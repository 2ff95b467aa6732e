"""Regenerate the contract package opensqt/exchange/v1 from proto/ (python, grpc and mypy stubs).

Usage: python tools/gen_proto.py [--check]
--check generates into a temporary folder and exits 1 if anything differs from what is committed.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT  # protoc writes opensqt/exchange/v1/ under the repository root, the proto package's path
# the generated tree; opensqt/__init__.py, opensqt/exchange/__init__.py and testdata.py are hand-written
GENERATED_DIR = "opensqt/exchange/v1"


def generate(out: Path) -> None:
    # protoc finds the mypy plugins (protoc-gen-mypy*) on PATH: the ones beside this interpreter
    scripts = str(Path(sys.executable).parent)
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / GENERATED_DIR / "__init__.py").touch()


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diffs = [f"only in one tree: {p}" for p in sorted(files_a ^ files_b)]
    for rel in sorted(files_a & files_b):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(f"differs: {rel}")
    return diffs


def check_or_replace(fresh: Path, committed: Path, check: bool, tool: str) -> int:
    """With `check`, report how `committed` differs from the `fresh` generation (1 when it does);
    else replace `committed` with it. Shared by the Python and Go generators."""
    if check:
        diffs = differences(fresh, committed)
        for line in diffs:
            print(f"stale generated code in {committed.relative_to(ROOT)}: {line}", file=sys.stderr)
        if diffs:
            print(f"run: python {tool}", file=sys.stderr)
        return 1 if diffs else 0
    shutil.rmtree(committed, ignore_errors=True)
    shutil.copytree(fresh, committed)
    print(f"generated {committed.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        return check_or_replace(
            fresh / GENERATED_DIR, OUT / GENERATED_DIR, options.check, "tools/gen_proto.py"
        )


if __name__ == "__main__":
    sys.exit(main())
