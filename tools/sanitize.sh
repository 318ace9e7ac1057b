#!/usr/bin/env bash
# Runs the decoder fuzz and the unit tests under AddressSanitizer and UndefinedBehaviorSanitizer,
# in one clang build (build-asan, configured by tools/fuzz.sh) that serves both: the libraries
# carry ASan, UBSan and the fuzzer's coverage (-fsanitize=fuzzer-no-link: without libFuzzer
# linked in, the ASan runtime's no-op coverage hooks take the calls), -fno-sanitize-recover=all
# so that any finding aborts and fails the run. Builds only decoder_fuzz and the unit test
# binaries (and the pgferry binary they use): tools/fuzz.sh SECONDS, then `ctest -L unit`.
#   Usage: tools/sanitize.sh [FUZZ_SECONDS]   (default 60; 0 builds the fuzz target only)
#   Environment: SANITIZE_BUILD_DIR (default build-asan), SANITIZE_JOBS (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds="${1:-60}"
build_dir="${SANITIZE_BUILD_DIR:-build-asan}"
jobs="${SANITIZE_JOBS:-$(nproc)}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"

status=0
start=$SECONDS
FUZZ_BUILD_DIR="$build_dir" FUZZ_JOBS="$jobs" tools/fuzz.sh "$fuzz_seconds" || status=$?
echo "sanitize.sh: fuzz build and run took $((SECONDS - start))s"

start=$SECONDS
# The unit test binaries are the targets named unit_*; ninja lists them.
mapfile -t unit_targets < <(cmake --build "$build_dir" --target help | sed -n 's/^\(unit_[a-z0-9_]*\):.*/\1/p')
if ((${#unit_targets[@]} == 0)); then
  echo "sanitize.sh: no unit test targets found in $build_dir" >&2
  exit 1
fi
cmake --build "$build_dir" --parallel "$jobs" --target "${unit_targets[@]}"
echo "sanitize.sh: unit test build took $((SECONDS - start))s"

# halt_on_error: the first report ends the test binary with a failure; leaks count too.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
start=$SECONDS
(cd "$build_dir" && ctest -L unit --output-on-failure --parallel 2) || status=$?
echo "sanitize.sh: unit tests under ASan+UBSan took $((SECONDS - start))s"
exit $status
