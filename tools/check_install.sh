#!/usr/bin/env bash
# The suite as users install it: a plain (not editable) `pip install` into a fresh venv, then
# `opensqt-conform` run from an empty folder against the reference implementation.
#   bash tools/check_install.sh [SELECTOR ...]     # default selector: 4.2
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet -c requirements.lock ".[test]"
mkdir "$work/empty"
selectors=()
for selector in "${@:-4.2}"; do
  selectors+=(--scenario "$selector")
done
cd "$work/empty"
"$work/venv/bin/opensqt-conform" "${selectors[@]}" -p no:randomly -q
test -f reports/conformance-report.json && test -f reports/junit.xml
echo "[check_install] installed suite passed ${selectors[*]} from an empty folder"
