#!/usr/bin/env bash
# Make a Debian 12 (bookworm) machine ready to build, test and run cloudlens:
#   - PostgreSQL 15 server + contrib (Debian packages)
#   - TimescaleDB (Apache-2 part only), built from the Debian 13 (trixie) source
#     package against PostgreSQL 15, because bookworm has no TimescaleDB package
#   - prometheus/promtool and wrk for end-to-end tests and benchmarks
#
# Idempotent: when everything is already present it does not touch apt at all and
# finishes in well under a second. Installing needs root. Safe against concurrent
# runs (flock). Starts no server.
#
# Environment:
#   CLOUDLENS_BUILD_DIR   work directory for the TimescaleDB build
#                         (default /var/tmp/cloudlens-build; removed after success)
#   CLOUDLENS_SETUP_LOCK  lock file (default /var/tmp/cloudlens-setup.lock)
set -euo pipefail

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin
PG_CONFIG=${PG_BIN}/pg_config
PG_LIBDIR=/usr/lib/postgresql/${PG_MAJOR}/lib
BUILD_ROOT=${CLOUDLENS_BUILD_DIR:-/var/tmp/cloudlens-build}
LOCK_FILE=${CLOUDLENS_SETUP_LOCK:-/var/tmp/cloudlens-setup.lock}
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources
ARCHIVE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
TSDB_SOURCE_SUITE=trixie
# Packages needed only to build TimescaleDB (libssl-dev comes in via libpq-dev).
TSDB_BUILD_PKGS=(postgresql-server-dev-${PG_MAJOR} cmake build-essential xz-utils)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

pg_sharedir() {
    if [ -x "$PG_CONFIG" ]; then
        "$PG_CONFIG" --sharedir
    else
        echo "/usr/share/postgresql/${PG_MAJOR}"
    fi
}

tsdb_control() { echo "$(pg_sharedir)/extension/timescaledb.control"; }

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# --- what is missing? (cheap file/command checks only) -----------------------------
MISSING_PKGS=()
NEED_TSDB=0

check_state() {
    MISSING_PKGS=()
    NEED_TSDB=0
    if [ ! -x "$PG_BIN/postgres" ] || [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_CONFIG" ]; then
        MISSING_PKGS+=("postgresql-${PG_MAJOR}")
    fi
    if [ ! -f "$(pg_sharedir)/extension/pg_stat_statements.control" ]; then
        MISSING_PKGS+=(postgresql-contrib)
    fi
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        MISSING_PKGS+=(prometheus)
    fi
    if ! command -v wrk >/dev/null 2>&1; then
        MISSING_PKGS+=(wrk)
    fi
    if [ ! -f "$PG_LIBDIR/timescaledb.so" ] || [ ! -f "$(tsdb_control)" ]; then
        NEED_TSDB=1
    fi
}

report_ok() {
    local control version
    control=$(tsdb_control)
    [ -f "$PG_LIBDIR/timescaledb.so" ] || die "missing $PG_LIBDIR/timescaledb.so after setup"
    [ -f "$control" ] || die "missing $control after setup"
    for f in "$PG_BIN/postgres" "$PG_BIN/initdb" "$PG_BIN/pg_ctl" "$PG_CONFIG"; do
        [ -x "$f" ] || die "missing $f after setup"
    done
    for c in prometheus promtool wrk; do
        command -v "$c" >/dev/null 2>&1 || die "missing command $c after setup"
    done
    version=$(sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$control" | head -n 1)
    [ -n "$version" ] || die "cannot read default_version from $control"
    log "ok (postgres ${PG_MAJOR}, timescaledb ${version})"
}

# --- locking ------------------------------------------------------------------------
# Held for the whole run so a concurrent run waits instead of building twice or
# seeing a half-installed extension. Non-root callers can still lock on a readable file.
take_lock() {
    if is_root || { [ -e "$LOCK_FILE" ] && [ -w "$LOCK_FILE" ]; } || { [ ! -e "$LOCK_FILE" ] && [ -w "$(dirname "$LOCK_FILE")" ]; }; then
        exec 9>>"$LOCK_FILE"
    elif [ -r "$LOCK_FILE" ]; then
        exec 9<"$LOCK_FILE"
    else
        return 0
    fi
    if ! flock -n 9; then
        log "another setup run holds $LOCK_FILE; waiting"
        flock 9
    fi
}

# --- helpers for the install path ---------------------------------------------------
LOG_FILE=

# Run a noisy command with its output in the log; show the tail on failure.
run() {
    if ! "$@" >>"$LOG_FILE" 2>&1; then
        log "command failed: $*"
        tail -n 40 "$LOG_FILE" >&2 || true
        die "see $LOG_FILE"
    fi
}

APT_UPDATED=0
apt_install() {
    [ "$#" -gt 0 ] || return 0
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        run apt-get -o DPkg::Lock::Timeout=600 update
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    run apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@"
}

# URI of the first stanza of debian.sources (the main, non-security suite).
debian_mirror() {
    local uri=
    if [ -f "$DEBIAN_SOURCES" ]; then
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { if (seen) exit; next }
            { seen = 1 }
            tolower($1) == "uris:" { print $2; exit }
        ' "$DEBIAN_SOURCES")
    fi
    [ -n "$uri" ] || die "cannot find the Debian mirror (URIs: line of the first stanza in $DEBIAN_SOURCES)"
    echo "${uri%/}"
}

build_timescaledb() {
    local work="$BUILD_ROOT/timescaledb" mirror orig srcdir
    local -a apt_src
    mirror=$(debian_mirror)
    [ -f "$ARCHIVE_KEYRING" ] || die "missing $ARCHIVE_KEYRING (package debian-archive-keyring)"

    rm -rf "$work"
    mkdir -p "$work/apt/lists/partial" "$work/src"
    # A private apt configuration holding only the trixie *source* index: nothing of
    # trixie ever reaches the system's binary package sources.
    printf 'deb-src [signed-by=%s] %s %s main\n' "$ARCHIVE_KEYRING" "$mirror" "$TSDB_SOURCE_SUITE" \
        >"$work/apt/sources.list"
    apt_src=(
        -o "Dir::Etc::sourcelist=$work/apt/sources.list"
        -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$work/apt/lists"
        -o Dir::Cache::pkgcache=
        -o Dir::Cache::srcpkgcache=
        -o APT::Sandbox::User=root
    )
    log "fetching timescaledb source from $mirror $TSDB_SOURCE_SUITE"
    run apt-get "${apt_src[@]}" update
    (cd "$work/src" && run apt-get "${apt_src[@]}" source --download-only timescaledb)

    orig=$(find "$work/src" -maxdepth 1 -name 'timescaledb_*.orig.tar.*' | head -n 1)
    [ -n "$orig" ] || die "no timescaledb .orig.tar.* downloaded into $work/src"
    run tar -xf "$orig" -C "$work/src"
    srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb*' | head -n 1)
    [ -n "$srcdir" ] && [ -x "$srcdir/bootstrap" ] || die "unexpected layout of $orig"

    log "building $(basename "$srcdir") against PostgreSQL ${PG_MAJOR}"
    (cd "$srcdir" && run env BUILD_DIR=build ./bootstrap \
        -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
        -DPG_CONFIG="$PG_CONFIG")
    run make -C "$srcdir/build" -j"$(nproc)"
    log "installing timescaledb"
    run make -C "$srcdir/build" install
}

# --- main -----------------------------------------------------------------------------
main() {
    take_lock
    check_state
    if [ "${#MISSING_PKGS[@]}" -eq 0 ] && [ "$NEED_TSDB" -eq 0 ]; then
        report_ok
        return 0
    fi

    if ! is_root; then
        local what=("${MISSING_PKGS[@]}")
        [ "$NEED_TSDB" -eq 0 ] || what+=("timescaledb (built from source)")
        die "missing: ${what[*]}; run this script as root to install them"
    fi

    mkdir -p "$BUILD_ROOT"
    LOG_FILE="$BUILD_ROOT/setup.log"
    : >"$LOG_FILE"

    local -a pkgs=("${MISSING_PKGS[@]}")
    if [ "$NEED_TSDB" -eq 1 ]; then
        for p in "${TSDB_BUILD_PKGS[@]}"; do
            pkg_installed "$p" || pkgs+=("$p")
        done
    fi
    apt_install "${pkgs[@]}"

    # postgresql-15 may only have arrived just now.
    check_state
    if [ "${#MISSING_PKGS[@]}" -ne 0 ]; then
        die "still missing after apt-get install: ${MISSING_PKGS[*]}"
    fi
    if [ "$NEED_TSDB" -eq 1 ]; then
        build_timescaledb
    fi

    report_ok
    rm -rf "$BUILD_ROOT"
}

main "$@"
