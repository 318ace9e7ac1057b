#!/usr/bin/env bash
# Builds pgferry and runs its test suite: unit tests, then integration tests against real
# PostgreSQL clusters. Usage: tools/test.sh [ctest args...]   e.g. tools/test.sh -L unit
# Environment: BUILD_DIR (default build), PGFERRY_SANITIZE=ON, PGFERRY_FUZZ_SECONDS (default 60;
# 0 skips the fuzz run; a full run fuzzes and runs the unit tests under ASan+UBSan,
# tools/sanitize.sh), PGFERRY_PG_CACHE (where tools/build-postgres.sh keeps PostgreSQL 17
# and 18), PGFERRY_PG17_BINDIR / PGFERRY_PG18_BINDIR (use these builds instead).
# The cross-version tests (label crossversion) need PostgreSQL 17 and 18: a full run (no
# arguments) or one naming crossversion builds them first when the cache lacks them
# (tools/build-postgres.sh, ~10 minutes each on 2 cores, in the background while pgferry
# builds) and exports their bin directories.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-deps.sh
# ccache (cache in ~/.ccache, outside the checkout) shares objects between checkouts and clean
# clones: paths below the checkout are hashed relative to it.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"

not_run=()
ctest_exclude=()
# PostgreSQL 17 and 18 are built (or installed) in the background while pgferry builds: an
# install from Debian's binary packages mostly waits on the network, and a build from source
# shares the cores (all of it must be done before the tests start anyway). Each in its own
# session, so that an early exit stops it; its progress goes to a log, shown when it fails.
declare -A pg_build_pid=()
pg_build_out="$(mktemp -d /tmp/pgferry-test-pg.XXXXXX)"
stop_pg_builds() {
  local pid
  for pid in "${pg_build_pid[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  rm -rf "$pg_build_out"
}
trap stop_pg_builds EXIT
cache_root="${PGFERRY_PG_CACHE:-/var/cache/pgferry}"
if [[ $# -eq 0 || "$*" == *crossversion* ]]; then
  for major in 17 18; do
    variable="PGFERRY_PG${major}_BINDIR"
    if [[ -z "${!variable:-}" && ! -f "$cache_root/postgresql-${major}/.pgferry-stamp" ]]; then
      # Once, here, for both: two apt-get installs at once would fight over the dpkg lock.
      # A failure costs only the tests that need these builds (reported NOT RUN below).
      tools/install-deps.sh --postgres-build ||
        echo "test.sh: could not install what building PostgreSQL needs (see above)" >&2
      break
    fi
  done
  for major in 17 18; do
    variable="PGFERRY_PG${major}_BINDIR"
    if [[ -z "${!variable:-}" ]]; then
      setsid -w tools/build-postgres.sh "$major" >"$pg_build_out/$major" \
        2>"$pg_build_out/$major.log" &
      pg_build_pid[$major]=$!
    fi
  done
fi

build_dir="${BUILD_DIR:-build}"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPGFERRY_WERROR=ON -DPGFERRY_SANITIZE="${PGFERRY_SANITIZE:-OFF}"
fi
cmake --build "$build_dir" --parallel "$(nproc)"

for major in 17 18; do
  variable="PGFERRY_PG${major}_BINDIR"
  if [[ -n "${pg_build_pid[$major]:-}" ]]; then
    build_ok=true
    wait "${pg_build_pid[$major]}" || build_ok=false
    unset "pg_build_pid[$major]"  # ended: never signalled again
    if $build_ok && bindir="$(tail -n 1 "$pg_build_out/$major")" && [[ -x "$bindir/postgres" ]]; then
      grep -v "compiling PostgreSQL" "$pg_build_out/$major.log" >&2 || true
      export "${variable}=${bindir}"
    else
      tail -n 40 "$pg_build_out/$major.log" >&2
      # Announced as not run (here and at the end), never counted as passed.
      echo "test.sh: PostgreSQL ${major} could not be built (its log above): the tests that need it are NOT RUN" >&2
      # Test files name the majors they use: *_<major>_*crossversion_test.cpp.
      not_run+=("the crossversion tests that need PostgreSQL ${major}")
      ctest_exclude+=("_${major}_.*crossversion")
      continue
    fi
  fi
  if [[ -n "${!variable:-}" ]]; then echo "test.sh: ${variable}=${!variable}" >&2; fi
done

status=0
trap 'tools/stop-stray-clusters.sh; stop_pg_builds' EXIT
exclude=()
if ((${#ctest_exclude[@]} > 0)); then
  exclude=(-E "$(IFS='|'; echo "${ctest_exclude[*]}")")
fi
(cd "$build_dir" && ctest --output-on-failure --parallel 2 "${exclude[@]}" "$@") || status=$?

# The unit tests and the decoder fuzz again under ASan+UBSan (a second, clang build: build-asan).
if [[ $# -eq 0 ]]; then
  tools/sanitize.sh "${PGFERRY_FUZZ_SECONDS:-60}" || status=$?
fi

# No server may outlive the run.
tools/stop-stray-clusters.sh
if ! left=$(tools/stop-stray-clusters.sh --list-left); then
  echo "test.sh: PostgreSQL processes left behind:" >&2
  echo "$left" >&2
  status=1
fi
for item in "${not_run[@]}"; do echo "test.sh: NOT RUN: ${item}" >&2; done
exit $status
