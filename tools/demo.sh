#!/usr/bin/env bash
# Builds pgferry and runs `pgferry demo`: two throwaway local clusters, a load, the whole
# journey. Usage: tools/demo.sh [demo options...]
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
exec "$build_dir/tools/pgferry" demo "$@"
