#!/usr/bin/env bash
# Stops and removes throwaway clusters left behind by an interrupted test run
# (temp dirs named pgferry-test-*): immediate shutdown of each postmaster, then rm -rf.
set -uo pipefail
tmp="${TMPDIR:-/tmp}"
for dir in "$tmp"/pgferry-test-*; do
  [[ -d "$dir" ]] || continue
  pidfile="$dir/data/postmaster.pid"
  if [[ -f "$pidfile" ]]; then
    pid=$(head -n 1 "$pidfile")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill -QUIT "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -rf "$dir"
done
