#!/usr/bin/env bash
# Builds PostgreSQL MAJOR (17 or 18) from its Debian source package into a cache directory
# outside the checkout, for the cross-version tests, benchmarks and demo.
# Usage: tools/build-postgres.sh MAJOR
# Progress goes to standard error; the last line of standard output is the bin directory.
# Environment: PGFERRY_PG_CACHE (default /var/cache/pgferry): the build lands in
# $PGFERRY_PG_CACHE/postgresql-MAJOR, reused when its stamp file is there.
#
# NOTES
# - The source comes from the Debian archive this machine already uses: its address is read
#   from the system's apt sources at run time (the stanza or line for this release's own
#   suite), never written here. Apt runs with a private state, cache and source list in a
#   temporary directory (one deb-src line for the suite that carries MAJOR), so the
#   system's apt setup and package lists stay as they are.
# - Only the upstream tarball inside the source package is used (Debian's patches are
#   packaging ones); it is configured without docs, ICU or LLVM, and the server, the client
#   programs (psql, pg_dump, pg_restore, pg_recvlogical, initdb, pg_ctl ...) and a few
#   contrib extensions are installed. pgoutput is part of the server build.
# - The stamp file (.pgferry-stamp) names the version and is written last: a build that
#   failed half-way is redone from scratch on the next run. A lock file in the cache lets
#   one build of a major run at a time.
# - When the archive lists the source package but does not serve its files, Debian's binary
#   packages of the same version are used instead (install_debian_build below).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-postgres: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

major="${1:-}"
case "$major" in
  17) suite=trixie ;;
  18) suite=sid ;;
  *) die "usage: tools/build-postgres.sh MAJOR   (MAJOR is 17 or 18, got '${major}')" ;;
esac

cache_root="${PGFERRY_PG_CACHE:-/var/cache/pgferry}"
prefix="${cache_root}/postgresql-${major}"
stamp="${prefix}/.pgferry-stamp"
# Contrib extensions built besides the server (the tests and the demo use these).
contrib_modules=(pg_trgm hstore citext btree_gist pg_visibility pg_stat_statements)

reuse() {
  if [[ -f "$stamp" && -x "${prefix}/bin/postgres" ]]; then
    log "reusing $(cat "$stamp") in ${prefix}"
    echo "${prefix}/bin"
    exit 0
  fi
}
reuse
# One build at a time per major (two test runs may start together); the second reuses it.
if ! mkdir -p "$cache_root" 2>/dev/null || [[ ! -w "$cache_root" ]]; then
  die "cannot write to the cache directory ${cache_root}: run as root, or set PGFERRY_PG_CACHE to a writable directory"
fi
exec 9>"${cache_root}/.postgresql-${major}.lock"
if ! flock -n 9; then
  log "another build of PostgreSQL ${major} is running; waiting for it"
  flock 9
fi
reuse

tools/install-deps.sh --postgres-build >&2

# The archive address: the apt source that serves this release's own suite.
# shellcheck source=/dev/null
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[[ -n "$codename" ]] || die "no VERSION_CODENAME in /etc/os-release: cannot tell which apt source is the Debian archive"
archive_uri() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" ]] || continue
    # deb822 stanzas are separated by blank lines; pick the first whose Suites has the codename.
    awk -v want="$codename" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
          if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); n = split($i, s, /[ \t]+/)
            for (j = 1; j <= n; j++) if (s[j] == want) ok = 1 }
        }
        if (ok && uris != "") { print uris; exit }
      }' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$file" ]] || continue
    # One-line form: deb [options] URI SUITE COMPONENTS...
    sed -E 's/\[[^]]*\]//' "$file" | awk -v want="$codename" '$1 == "deb" && $3 == want { print $2; exit }'
  done
}
uri="$(archive_uri | head -n 1)"
[[ -n "$uri" ]] || die "no apt source for suite '${codename}' in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources: add the Debian archive there"
log "PostgreSQL ${major}: source package postgresql-${major} from suite ${suite} of the system's Debian archive"

work="$(mktemp -d "/tmp/pgferry-build-pg${major}.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/sources.list.d" \
  "$work/apt/preferences.d" "$work/src"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
if [[ -f "$keyring" ]]; then signed="[signed-by=${keyring}] "; fi
echo "deb-src ${signed}${uri} ${suite} main" >"$work/apt/sources.list"
apt_private=(
  -o "Dir::State=$work/apt" -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::State::status=/var/lib/dpkg/status"
  -o "Dir::Cache=$work/apt/cache" -o "Dir::Cache::Archives=$work/apt/cache/archives"
  -o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
  -o "Dir::Etc::Preferences=$work/apt/preferences" -o "Dir::Etc::PreferencesParts=$work/apt/preferences.d"
  -o "APT::Sandbox::User=root" -qq
)
log "downloading the source index (private apt state in ${work}/apt)"
apt-get "${apt_private[@]}" update >&2 || die "apt-get update of the private deb-src list for suite ${suite} failed"
listed="$(apt-cache "${apt_private[@]}" showsrc "postgresql-${major}" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)"
[[ -n "$listed" ]] || die "suite ${suite} of the system's Debian archive lists no source package postgresql-${major}"

# Fallback when the archive lists the source package but does not serve its files (seen for
# postgresql-17 on this machine's mirror, whose binary packages of the same version it
# serves): Debian's own build of that version. A minimal root of the suite (debootstrap)
# gets the postgresql-MAJOR packages, and their programs are pointed at that root's dynamic
# loader and libraries (patchelf: interpreter and an RPATH that also covers the libraries
# those load), so they run on this system as they are, without a chroot. The server finds
# its share and lib directories relative to its own path, inside the root.
install_debian_build() {
  local root="${prefix}/root" loader libdir file
  rm -rf "$prefix"
  mkdir -p "$prefix"
  log "installing Debian's binary packages postgresql-${major} ${listed} of suite ${suite} into a minimal root ${root} (debootstrap; a few minutes)"
  start=$SECONDS
  debootstrap --variant=minbase --include="postgresql-${major},postgresql-client-${major}" \
    "$suite" "$root" "$uri" >"$work/debootstrap.log" 2>&1 || {
    umount "$root/proc" "$root/sys" 2>/dev/null || true
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap of suite ${suite} with postgresql-${major} failed (log above)"
  }
  umount "$root/proc" "$root/sys" 2>/dev/null || true
  rm -rf "$root/var/lib/postgresql" "$root/var/cache/apt/archives"/*.deb
  loader="$(find "$root/usr/lib" -maxdepth 2 -name 'ld-linux*.so.*' | head -n 1)"
  [[ -n "$loader" ]] || die "the ${suite} root has no dynamic loader (ld-linux*.so.*) under ${root}/usr/lib"
  libdir="$(dirname "$loader")"
  for file in "$root/usr/lib/postgresql/${major}/bin"/*; do
    [[ "$(head -c 4 "$file" | tail -c 3)" == "ELF" ]] || continue
    patchelf --set-interpreter "$loader" --force-rpath --set-rpath "$libdir" "$file" ||
      die "patchelf of ${file} failed"
  done
  ln -s "root/usr/lib/postgresql/${major}/bin" "${prefix}/bin"
  "${prefix}/bin/postgres" --version >&2 || die "the patched postgres of ${root} does not run"
  echo "PostgreSQL $("${prefix}/bin/postgres" --version | awk '{print $3}') (Debian binary packages postgresql-${major} ${listed} of ${suite}, installed $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start))s; the source package's files were not served)" >"$stamp"
  log "done: $(cat "$stamp")"
  echo "${prefix}/bin"
  exit 0
}
if ! (cd "$work/src" && apt-get "${apt_private[@]}" source --download-only "postgresql-${major}" >&2); then
  log "suite ${suite} lists postgresql-${major} ${listed}, but the archive did not serve its source files (apt-get output above); falling back to Debian's binary packages of that version"
  install_debian_build
fi

tarball="$(find "$work/src" -maxdepth 1 -name "postgresql-${major}_*.orig.tar.*" | head -n 1)"
[[ -n "$tarball" ]] || die "the source package postgresql-${major} has no upstream tarball (*.orig.tar.*)"
log "unpacking $(basename "$tarball")"
tar -xf "$tarball" -C "$work/src"
srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name "postgresql-${major}*" | head -n 1)"
[[ -n "$srcdir" && -x "$srcdir/configure" ]] || die "unpacked $(basename "$tarball") but found no configure script"
version="$(sed -nE "s/^PACKAGE_VERSION='([^']+)'.*/\1/p" "$srcdir/configure")"

jobs="$(nproc)"
rm -rf "$prefix"
log "configuring PostgreSQL ${version} for ${prefix}"
(cd "$srcdir" && ./configure --prefix="$prefix" --without-icu --without-llvm --with-zlib --with-readline \
  --disable-nls >"$work/configure.log" 2>&1) || {
  tail -n 30 "$work/configure.log" >&2
  die "configure of PostgreSQL ${version} failed (log above)"
}
log "building with make -j${jobs} (this takes a while)"
start=$SECONDS
# Progress while make runs: object files compiled so far against the C files of the tree
# (an estimate: a few are not built), redrawn in place on a terminal, a line a minute otherwise.
show_progress() {
  local total done_files percent line every=60
  total="$(find "$srcdir/src" -name '*.c' | wc -l)"
  if [[ -t 2 ]]; then every=2; fi
  while sleep "$every"; do
    done_files="$(find "$srcdir/src" -name '*.o' | wc -l)"
    # Some files are compiled twice (frontend and backend variants): never claim 100% early.
    percent=$((done_files * 100 / (total > 0 ? total : 1)))
    ((percent > 99)) && percent=99
    line="$(printf 'build-postgres: compiling PostgreSQL %s: %d objects of ~%d source files (~%d%%), %ds' \
      "$version" "$done_files" "$total" "$percent" $((SECONDS - start)))"
    if [[ -t 2 ]]; then printf '\r%s\033[K' "$line" >&2; else echo "$line" >&2; fi
  done
}
show_progress &
progress_pid=$!
trap 'kill "$progress_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
if ! (cd "$srcdir" && make -j"$jobs" -s >"$work/make.log" 2>&1); then
  kill "$progress_pid" 2>/dev/null
  [[ -t 2 ]] && echo >&2
  tail -n 30 "$work/make.log" >&2
  die "make of PostgreSQL ${version} failed (log above)"
fi
kill "$progress_pid" 2>/dev/null
wait "$progress_pid" 2>/dev/null || true
if [[ -t 2 ]]; then echo >&2; fi
for module in "${contrib_modules[@]}"; do
  (cd "$srcdir/contrib/$module" && make -j"$jobs" -s >>"$work/make.log" 2>&1) || {
    tail -n 30 "$work/make.log" >&2
    die "make of contrib/${module} failed (log above)"
  }
done
log "installing into ${prefix}"
(cd "$srcdir" && make -s install >>"$work/make.log" 2>&1) || {
  tail -n 30 "$work/make.log" >&2
  die "make install failed (log above)"
}
for module in "${contrib_modules[@]}"; do
  (cd "$srcdir/contrib/$module" && make -s install >>"$work/make.log" 2>&1) || die "install of contrib/${module} failed"
done
"${prefix}/bin/postgres" --version >&2
echo "PostgreSQL ${version} ($(basename "$tarball"), built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start))s)" >"$stamp"
log "done: $(cat "$stamp")"
echo "${prefix}/bin"
