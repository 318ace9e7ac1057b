#!/usr/bin/env bash
# Stops and removes throwaway clusters left behind by an interrupted test run (temp dirs
# named pgferry-test-*): immediate shutdown of each postmaster, then rm -rf. A cluster
# whose owner (the process that made it, owner.pid) still runs belongs to another run on
# this machine and is left alone.
# Usage: tools/stop-stray-clusters.sh [--list-left]
#   --list-left: stop nothing; print the server processes of ownerless clusters, exit 1 if any.
set -uo pipefail
tmp="${TMPDIR:-/tmp}"

owner_alive() {
  local pid
  pid=$(head -n 1 "$1/owner.pid" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

if [[ "${1:-}" == "--list-left" ]]; then
  left=0
  while read -r pid args; do
    [[ "$args" =~ (${tmp}/pgferry-test-[^/ ]*) ]] || continue
    owner_alive "${BASH_REMATCH[1]}" && continue
    echo "$pid $args"
    left=1
  done < <(pgrep -a -u postgres -f 'pgferry-test-' 2>/dev/null)
  exit $left
fi

for dir in "$tmp"/pgferry-test-*; do
  [[ -d "$dir" ]] || continue
  owner_alive "$dir" && continue
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
