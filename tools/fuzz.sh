#!/usr/bin/env bash
# Fuzzes the pgoutput decoder and transaction assembler with libFuzzer for SECONDS (0: build
# only). Configures the sanitizer build (build-asan, clang: ASan + UBSan + fuzzer coverage,
# -fno-sanitize-recover=all so that any finding in the library is a crash too; the unit tests
# of tools/sanitize.sh use the same build), builds only the fuzz target and the replication
# library, seeds the corpus from the captured fixtures, and exits non-zero on a crash.
#   Usage: tools/fuzz.sh SECONDS      Environment: FUZZ_BUILD_DIR (default build-asan)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

build_dir="${FUZZ_BUILD_DIR:-build-asan}"
clangxx=$(command -v clang++ || command -v clang++-14 || true)
if [[ -z "$clangxx" ]]; then
  echo "fuzz.sh: clang++ not found; install clang (tools/install-deps.sh)" >&2
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
cmake --build "$build_dir" --target decoder_fuzz --parallel "${FUZZ_JOBS:-$(nproc)}"
if [[ "$seconds" == 0 ]]; then
  echo "fuzz.sh: built, not run (0 seconds)"
  exit 0
fi

# Seed corpus: consecutive runs of captured messages in the fuzz input format
# (version byte, then length u16 | message ...).
corpus="$build_dir/corpus"
mkdir -p "$corpus"
python3 - "$corpus" tests/fixtures/pgoutput <<'PY'
import os, struct, sys
corpus, fixtures = sys.argv[1], sys.argv[2]
versions = {"v1": 1, "v2_binary": 2, "v3": 3, "bench_insert": 3, "bench_mix": 3}
for name, version in versions.items():
    path = os.path.join(fixtures, name + ".bin")
    if not os.path.exists(path):
        continue
    data = open(path, "rb").read()
    messages, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos + 8:pos + 12])
        messages.append(data[pos + 12:pos + 12 + length])
        pos += 12 + length
    step = 6
    for i in range(0, min(len(messages), 1200), step):
        seed = bytes([version - 1])
        for m in messages[i:i + step]:
            if len(m) < 65536:
                seed += struct.pack(">H", len(m)) + m
        with open(os.path.join(corpus, f"{name}-{i:05d}"), "wb") as out:
            out.write(seed)
PY

mkdir -p "$build_dir/crashes"
echo "fuzz.sh: running decoder_fuzz for ${seconds}s"
"$build_dir/fuzz/decoder_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
  -rss_limit_mb=2048 -artifact_prefix="$build_dir/crashes/" -print_final_stats=1 "$corpus" \
  2>"$build_dir/fuzz.log" || {
  status=$?
  tail -50 "$build_dir/fuzz.log" >&2
  echo "fuzz.sh: decoder_fuzz failed (exit $status); reproducer in $build_dir/crashes/" >&2
  exit 1
}
grep -E "^stat::number_of_executed_runs|^stat::peak_rss_mb" "$build_dir/fuzz.log" || true
echo "fuzz.sh: no crash in ${seconds}s"
