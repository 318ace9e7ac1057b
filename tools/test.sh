#!/usr/bin/env bash
# Builds pgferry and runs its test suite: unit tests, then integration tests against real
# PostgreSQL clusters. Usage: tools/test.sh [ctest args...]   e.g. tools/test.sh -L unit
# Environment: BUILD_DIR (default build), PGFERRY_SANITIZE=ON, PGFERRY_FUZZ_SECONDS (default 60;
# 0 skips the fuzz run).
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-deps.sh

build_dir="${BUILD_DIR:-build}"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPGFERRY_WERROR=ON -DPGFERRY_SANITIZE="${PGFERRY_SANITIZE:-OFF}"
fi
cmake --build "$build_dir" --parallel "$(nproc)"

status=0
trap 'tools/stop-stray-clusters.sh' EXIT
(cd "$build_dir" && ctest --output-on-failure --parallel 2 "$@") || status=$?

if [[ -x tools/fuzz.sh && $# -eq 0 ]]; then
  tools/fuzz.sh "${PGFERRY_FUZZ_SECONDS:-60}" || status=$?
fi

# No server may outlive the run.
tools/stop-stray-clusters.sh
if pgrep -u postgres -f 'pgferry-test-' >/dev/null 2>&1; then
  echo "test.sh: PostgreSQL processes left behind:" >&2
  pgrep -a -u postgres -f 'pgferry-test-' >&2 || true
  status=1
fi
exit $status
