#!/usr/bin/env bash
# Builds pgferry (and PostgreSQL 18, once) and runs `pgferry demo`: a live upgrade from
# PostgreSQL 15 to 18 behind PgBouncer on throwaway local servers, under a write load.
# Usage: tools/demo.sh [demo options...]   (--same-version: two 15 servers, no 18 build)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
# ccache (cache in ~/.ccache, outside the checkout) shares objects between checkouts and clean
# clones: paths below the checkout are hashed relative to it.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
build_dir="${BUILD_DIR:-build}"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$build_dir" --parallel "$(nproc)" --target pgferry

# The upgrade's target is PostgreSQL 18: built once into the cache (progress on stderr, about
# ten minutes on 2 cores), then reused. Not needed with --same-version or --target-bindir.
args=("$@")
need_18=1
for arg in "$@"; do
  case "$arg" in
    --same-version | --target-bindir | --target-bindir=* | -h | --help) need_18=0 ;;
  esac
done
if ((need_18)); then
  bindir="$(tools/build-postgres.sh 18 | tail -n 1)"
  [[ -x "$bindir/postgres" ]] || { echo "demo.sh: no PostgreSQL 18 build (see above)" >&2; exit 1; }
  args+=(--target-bindir "$bindir")
fi
exec "$build_dir/tools/pgferry" demo "${args[@]}"
