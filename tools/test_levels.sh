#!/usr/bin/env bash
# The spec's §11 local test script: runs the levels in order and prints a summary per level.
#   tools/test_levels.sh            # unit, integration, e2e, perf (quick forms)
#   FULL_PERF=1 tools/test_levels.sh  # perf at full length (-m perf)
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
levels=(unit integration e2e perf)
declare -A outcome
overall=0
for index in "${!levels[@]}"; do
  level=${levels[$index]}
  echo "$((index + 1))/${#levels[@]} Running ${level} tests..."
  if [ "$level" = perf ] && [ -z "${FULL_PERF:-}" ]; then
    args=(specs/perf)
  else
    args=(specs -m "$level")
  fi
  log=reports/levels/${level}.log
  mkdir -p reports/levels
  .venv/bin/python -m pytest "${args[@]}" -q -p no:randomly --report-dir "reports/levels/${level}" >"$log" 2>&1
  status=$?
  summary=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)|no tests ran' "$log" | tail -n 1 | tr -d '=')
  outcome[$level]="exit ${status}: ${summary}"
  [ "$status" = 0 ] || overall=1
done
echo
echo "Summary per level:"
for level in "${levels[@]}"; do
  printf '  %-12s %s\n' "$level" "${outcome[$level]}"
done
if [ "$overall" = 0 ]; then echo "All levels passed."; else echo "Some levels failed: see reports/levels/*.log"; fi
exit "$overall"
