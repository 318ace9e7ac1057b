#!/usr/bin/env bash
# Installs every Debian package that pgferry's build, tests, benchmarks and demo need.
# Idempotent, and fast when everything is already there (no apt-get update then).
# Usage: tools/install-deps.sh [--postgres-build]
#   --postgres-build: also what tools/build-postgres.sh needs to build PostgreSQL from source.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-14-dev
  libpq-dev libboost-dev libzstd-dev zstd libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  postgresql postgresql-contrib postgresql-client pgbouncer
  procps util-linux
  python3-yaml systemd
)
if [[ "${1:-}" == "--postgres-build" ]]; then
  packages+=(dpkg-dev bison flex libreadline-dev zlib1g-dev xz-utils bzip2 make gcc debootstrap patchelf)
elif [[ $# -gt 0 ]]; then
  echo "install-deps: unknown option '$1' (the only one is --postgres-build)" >&2
  exit 2
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian package creates and starts a default cluster; pgferry never uses it.
if command -v pg_lsclusters >/dev/null 2>&1; then
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
