#!/usr/bin/env bash
# Runs the unit tests and the decoder fuzz under AddressSanitizer and UndefinedBehaviorSanitizer,
# in one clang build (build-asan) that serves both: the libraries carry ASan, UBSan and the
# fuzzer's coverage (-fsanitize=fuzzer-no-link: without libFuzzer linked in, the ASan runtime's
# no-op coverage hooks take the calls), -fno-sanitize-recover=all so that any finding aborts
# and fails the run. Builds only the unit test binaries (and the pgferry binary they use) and
# decoder_fuzz, then `ctest -L unit`, then tools/fuzz.sh SECONDS on that build.
#   Usage: tools/sanitize.sh [FUZZ_SECONDS]   (default 60; 0 runs the unit tests only)
#   Environment: SANITIZE_BUILD_DIR (default build-asan), SANITIZE_JOBS (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds="${1:-60}"
build_dir="${SANITIZE_BUILD_DIR:-build-asan}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"

clangxx=$(command -v clang++ || command -v clang++-14 || true)
if [[ -z "$clangxx" ]]; then
  echo "sanitize.sh: clang++ not found; install clang (tools/install-deps.sh)" >&2
  exit 1
fi
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
mkdir -p "$build_dir"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  # -O1 with line tables only and assertions on: about half the compile time of -O2 -g, and
  # stack traces still name file and line. Warnings are the gcc build's business (-Werror there).
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DCMAKE_CXX_COMPILER="$clangxx" -DPGFERRY_BUILD_FUZZ=ON -DPGFERRY_BUILD_TESTS=ON \
    -DPGFERRY_BUILD_BENCH=OFF -DPGFERRY_WERROR=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
    >"$build_dir/configure.log" 2>&1 || { cat "$build_dir/configure.log" >&2; exit 1; }
fi

start=$SECONDS
# The unit test binaries are the targets named unit_*; ninja lists them.
mapfile -t unit_targets < <(cmake --build "$build_dir" --target help | sed -n 's/^\(unit_[a-z0-9_]*\):.*/\1/p')
if ((${#unit_targets[@]} == 0)); then
  echo "sanitize.sh: no unit test targets found in $build_dir" >&2
  exit 1
fi
cmake --build "$build_dir" --parallel "${SANITIZE_JOBS:-$(nproc)}" \
  --target "${unit_targets[@]}" decoder_fuzz
echo "sanitize.sh: build took $((SECONDS - start))s"

# halt_on_error: the first report ends the test binary with a failure; leaks count too.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
start=$SECONDS
status=0
(cd "$build_dir" && ctest -L unit --output-on-failure --parallel 2) || status=$?
echo "sanitize.sh: unit tests under ASan+UBSan took $((SECONDS - start))s"

FUZZ_BUILD_DIR="$build_dir" tools/fuzz.sh "$fuzz_seconds" || status=$?
exit $status
