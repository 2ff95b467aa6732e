#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its pinned dependencies (again only when
# pyproject.toml or requirements.lock changed). Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing pinned dependencies (requirements.lock)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c requirements.lock -e '.[test,dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The Node programs' packages (interop/node and its client), exactly as their lockfiles pin them,
# where npm is present; again only when a lockfile changed. Without npm the Node tests skip and
# say so.
# The stamp holds the lockfile's sha256: the same one the suite's Node fixtures read
# (specs/integration/test_interop_node.py), so neither installs again what the other installed.
node_packages() {
  local folder=$1
  local stamp="$folder/node_modules/.installed-package-lock.sha256"
  local wanted
  wanted=$(sha256sum "$folder/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "[bootstrap] npm ci in $folder"
    (cd "$folder" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
    echo "$wanted" > "$stamp"
  fi
}
if command -v npm >/dev/null 2>&1; then
  node_packages interop/node
  node_packages interop/node/client
else
  echo "[bootstrap] npm not found: the Node programs' tests will skip (no node_modules)"
fi

# The Go programs (interop/go: exchange_connector and client_driver) built into interop/go/bin
# (git-ignored), where go is present; again only when their sources or go.sum changed. Without
# Go the Go tests skip and say so.
GO=$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true)
if [ -n "$GO" ]; then
  go_sources=$(cd interop/go && find . \( -name '*.go' ! -name '*_test.go' \) -o -name go.mod -o -name go.sum | LC_ALL=C sort)
  stamp="interop/go/bin/.built-$(cd interop/go && cat $go_sources | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "[bootstrap] go build in interop/go ($("$GO" version | cut -d' ' -f3))"
    rm -f interop/go/bin/.built-*
    if (cd interop/go && "$GO" build -trimpath -o bin/ ./cmd/...); then
      touch "$stamp"
    else   # e.g. a Go older than go.mod's with no toolchain download: the Go tests skip, saying so
      rm -f interop/go/bin/exchange_connector interop/go/bin/client_driver
      echo "[bootstrap] go build in interop/go failed: the Go programs' tests will skip"
    fi
  fi
else
  echo "[bootstrap] go not found: the Go programs' tests will skip (no interop/go/bin)"
fi
