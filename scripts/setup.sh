#!/usr/bin/env bash
# Make a Debian 12 (bookworm) machine ready to build, test and run cloudlens:
#   - PostgreSQL 15 server + contrib (Debian packages)
#   - TimescaleDB (Apache-2 part only) and pgvector, built from the Debian 13 (trixie)
#     source packages against PostgreSQL 15, because bookworm has neither for PG 15
#   - prometheus/promtool and wrk for end-to-end tests and benchmarks
#
# Idempotent: when everything is already present it does not touch apt at all and
# finishes in well under a second. Installing needs root. Safe against concurrent
# runs (flock). Starts no server.
#
#   scripts/setup.sh                 check, and install what is missing (as root)
#   scripts/setup.sh --print-mirror  print the Debian mirror URL that the TimescaleDB
#                                    source fetch would use, then exit (no root, no apt,
#                                    no lock); exits 1 with a message when none is found
#
# Environment:
#   CLOUDLENS_BUILD_DIR   work directory for the TimescaleDB and pgvector builds
#                         (default /var/tmp/cloudlens-build; removed after success)
#   CLOUDLENS_SETUP_LOCK  lock file (default /var/tmp/cloudlens-setup.lock)
#   CLOUDLENS_APT_ROOT    directory holding etc/apt/ whose sources are searched for the
#                         Debian mirror (default /; for tests)
set -euo pipefail
# Functions whose output is captured (`x=$(f)`) stop at their first failure too.
shopt -s inherit_errexit

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin
PG_CONFIG=${PG_BIN}/pg_config
PG_LIBDIR=/usr/lib/postgresql/${PG_MAJOR}/lib
BUILD_ROOT=${CLOUDLENS_BUILD_DIR:-/var/tmp/cloudlens-build}
LOCK_FILE=${CLOUDLENS_SETUP_LOCK:-/var/tmp/cloudlens-setup.lock}
APT_ROOT=${CLOUDLENS_APT_ROOT:-/}
# The Debian release whose mirror is looked for (also accepted under the name "stable").
DEBIAN_SUITE=bookworm
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
vector_control() { echo "$(pg_sharedir)/extension/vector.control"; }

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# --- what is missing? (cheap file/command checks only) -----------------------------
MISSING_PKGS=()
NEED_TSDB=0
NEED_VECTOR=0

check_state() {
    MISSING_PKGS=()
    NEED_TSDB=0
    NEED_VECTOR=0
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
    # The server's TLS to the database links OpenSSL (native-tls); the TLS test makes
    # its certificates with the openssl command.
    if ! pkg_installed libssl-dev; then
        MISSING_PKGS+=(libssl-dev)
    fi
    if ! command -v pkg-config >/dev/null 2>&1; then
        MISSING_PKGS+=(pkg-config)
    fi
    if ! command -v openssl >/dev/null 2>&1; then
        MISSING_PKGS+=(openssl)
    fi
    if [ ! -f "$PG_LIBDIR/timescaledb.so" ] || [ ! -f "$(tsdb_control)" ]; then
        NEED_TSDB=1
    fi
    if [ ! -f "$PG_LIBDIR/vector.so" ] || [ ! -f "$(vector_control)" ]; then
        NEED_VECTOR=1
    fi
}

control_version() {
    sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$1" | head -n 1
}

report_ok() {
    local control version
    control=$(tsdb_control)
    [ -f "$PG_LIBDIR/timescaledb.so" ] || die "missing $PG_LIBDIR/timescaledb.so after setup"
    [ -f "$control" ] || die "missing $control after setup"
    [ -f "$PG_LIBDIR/vector.so" ] || die "missing $PG_LIBDIR/vector.so after setup"
    [ -f "$(vector_control)" ] || die "missing $(vector_control) after setup"
    for f in "$PG_BIN/postgres" "$PG_BIN/initdb" "$PG_BIN/pg_ctl" "$PG_CONFIG"; do
        [ -x "$f" ] || die "missing $f after setup"
    done
    for c in prometheus promtool wrk pkg-config openssl; do
        command -v "$c" >/dev/null 2>&1 || die "missing command $c after setup"
    done
    version=$(control_version "$control")
    [ -n "$version" ] || die "cannot read default_version from $control"
    log "ok (postgres ${PG_MAJOR}, timescaledb ${version}, pgvector $(control_version "$(vector_control)"))"
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

# --- Debian mirror detection ---------------------------------------------------------
# The apt source files under $APT_ROOT, in the order apt reads them: etc/apt/sources.list,
# then etc/apt/sources.list.d/*.list and *.sources sorted by name (apt ignores other names,
# e.g. *.disabled or *.dpkg-old).
apt_source_files() {
    local etc="${APT_ROOT%/}/etc/apt" f name
    if [ -f "$etc/sources.list" ] && [ -r "$etc/sources.list" ]; then printf '%s\n' "$etc/sources.list"; fi
    [ -d "$etc/sources.list.d" ] || return 0
    while IFS= read -r f; do
        name=${f##*/}
        [[ "$name" =~ ^[A-Za-z0-9_.-]+\.(list|sources)$ ]] || continue
        if [ -f "$f" ] && [ -r "$f" ]; then printf '%s\n' "$f"; fi
    done < <(find "$etc/sources.list.d" -mindepth 1 -maxdepth 1 2>/dev/null | LC_ALL=C sort)
    return 0
}

# URL (no trailing slash) of the Debian mirror configured in apt: the first enabled
# deb/deb-src entry, in deb822 (*.sources) or one-line (sources.list, *.list) format,
# for suite $DEBIAN_SUITE or "stable" with component main. Skipped: cdrom entries,
# security mirrors, and entries signed by a keyring that is not Debian's (third-party
# repositories such as apt.postgresql.org, packages.microsoft.com, ...). Entries signed
# by a Debian keyring win over unsigned ones whose URL names Debian, which win over
# any other unsigned entry (a local mirror). Reads files only: no root, no apt.
debian_mirror() {
    local -a files=()
    local f uri=
    while IFS= read -r f; do files+=("$f"); done < <(apt_source_files)
    if [ "${#files[@]}" -gt 0 ]; then
        uri=$(awk -v suites="$DEBIAN_SUITE stable" '
            function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
            function has_word(list, w,    n, a, i) {
                n = split(list, a, /[ \t]+/)
                for (i = 1; i <= n; i++) if (a[i] == w) return 1
                return 0
            }
            function suite_ok(list,    n, a, i) {
                n = split(list, a, /[ \t]+/)
                for (i = 1; i <= n; i++) if (a[i] in SUITE) return 1
                return 0
            }
            function consider(types, uri, suites, comps, signedby,    score, u, l) {
                if (!has_word(types, "deb") && !has_word(types, "deb-src")) return
                u = uri; l = tolower(u)
                if (l ~ /^cdrom:/ || l ~ /security\.debian\.org/ || l ~ /debian-security/) return
                if (!suite_ok(suites) || !has_word(comps, "main")) return
                if (signedby != "" && signedby !~ /BEGIN PGP/) {
                    if (tolower(signedby) !~ /debian/) return
                    score = 3
                } else if (l ~ /debian/) {
                    score = 2
                } else {
                    score = 1
                }
                sub(/\/+$/, "", u)
                if (u != "" && score > best) { best = score; best_uri = u }
            }
            # deb822: one stanza collected in F[lower-case field name]
            function flush(    n, a, i) {
                if (in_stanza && tolower(F["enabled"]) != "no") {
                    n = split(F["uris"], a, /[ \t]+/)
                    for (i = 1; i <= n; i++)
                        consider(F["types"], a[i], F["suites"], F["components"], F["signed-by"])
                }
                split("", F); in_stanza = 0; last = ""
            }
            BEGIN { n = split(suites, a, /[ \t]+/); for (i = 1; i <= n; i++) SUITE[a[i]] = 1; best = 0 }
            FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
            deb822 {
                line = $0; sub(/\r$/, "", line)
                if (line ~ /^[ \t]*#/) next
                if (line ~ /^[ \t]*$/) { flush(); next }
                if (line ~ /^[ \t]/) { if (last != "") F[last] = F[last] " " trim(line); next }
                p = index(line, ":")
                if (p == 0) { last = ""; next }
                last = tolower(trim(substr(line, 1, p - 1)))
                F[last] = trim(substr(line, p + 1)); in_stanza = 1
                next
            }
            {   # one-line format: type [options] uri suite [component...]   # comment
                line = $0
                p = index(line, "#"); if (p) line = substr(line, 1, p - 1)
                line = trim(line)
                if (line == "") next
                match(line, /^[^ \t]+/)
                type = substr(line, 1, RLENGTH); rest = trim(substr(line, RLENGTH + 1))
                opts = ""
                if (substr(rest, 1, 1) == "[") {
                    p = index(rest, "]"); if (p == 0) next
                    opts = substr(rest, 2, p - 2); rest = trim(substr(rest, p + 1))
                }
                n = split(rest, a, /[ \t]+/)
                if (n < 2) next
                comps = ""
                for (i = 3; i <= n; i++) comps = comps " " a[i]
                signedby = ""
                m = split(opts, o, /[ \t]+/)
                for (i = 1; i <= m; i++)
                    if (tolower(o[i]) ~ /^signed-by=/) signedby = substr(o[i], 11)
                consider(type, a[1], a[2], comps, signedby)
            }
            END { flush(); if (best > 0) print best_uri }
        ' "${files[@]}")
    fi
    if [ -z "$uri" ]; then
        printf 'setup: error: cannot find the Debian mirror: no enabled deb/deb-src entry for suite %s (or stable) with component main in %s\n' \
            "$DEBIAN_SUITE" "${APT_ROOT%/}/etc/apt/sources.list, sources.list.d/*.list or sources.list.d/*.sources" >&2
        return 1
    fi
    printf '%s\n' "$uri"
}

# Downloads and unpacks the trixie source package $1 into $2/src; prints the source
# directory. The private apt configuration holds only the trixie *source* index: nothing
# of trixie ever reaches the system's binary package sources.
fetch_trixie_source() {
    local pkg=$1 work=$2 mirror orig srcdir
    local -a apt_src
    mirror=$(debian_mirror)
    [ -f "$ARCHIVE_KEYRING" ] || die "missing $ARCHIVE_KEYRING (package debian-archive-keyring)"
    rm -rf "$work"
    mkdir -p "$work/apt/lists/partial" "$work/src"
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
    log "fetching $pkg source from $mirror $TSDB_SOURCE_SUITE"
    run apt-get "${apt_src[@]}" update
    (cd "$work/src" && run apt-get "${apt_src[@]}" source --download-only "$pkg")
    orig=$(find "$work/src" -maxdepth 1 -name "${pkg}_*.orig.tar.*" | head -n 1)
    [ -n "$orig" ] || die "no $pkg .orig.tar.* downloaded into $work/src"
    run tar -xf "$orig" -C "$work/src"
    srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name "${pkg}*" | head -n 1)
    [ -n "$srcdir" ] || die "unexpected layout of $orig"
    printf '%s\n' "$srcdir"
}

build_timescaledb() {
    local srcdir
    srcdir=$(fetch_trixie_source timescaledb "$BUILD_ROOT/timescaledb")
    [ -x "$srcdir/bootstrap" ] || die "unexpected layout of the timescaledb source"
    log "building $(basename "$srcdir") against PostgreSQL ${PG_MAJOR}"
    (cd "$srcdir" && run env BUILD_DIR=build ./bootstrap \
        -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
        -DPG_CONFIG="$PG_CONFIG")
    run make -C "$srcdir/build" -j"$(nproc)"
    log "installing timescaledb"
    run make -C "$srcdir/build" install
}

# pgvector (vector search, optional to the server: without it vector queries are
# refused). OPTFLAGS="" drops upstream's -march=native, as Debian's own build does, so the
# library runs on any CPU of the architecture.
build_pgvector() {
    local srcdir
    srcdir=$(fetch_trixie_source pgvector "$BUILD_ROOT/pgvector")
    [ -f "$srcdir/Makefile" ] || die "unexpected layout of the pgvector source"
    log "building $(basename "$srcdir") against PostgreSQL ${PG_MAJOR}"
    run make -C "$srcdir" OPTFLAGS="" PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
    log "installing pgvector"
    run make -C "$srcdir" OPTFLAGS="" PG_CONFIG="$PG_CONFIG" install
}

# --- main -----------------------------------------------------------------------------
main() {
    take_lock
    check_state
    if [ "${#MISSING_PKGS[@]}" -eq 0 ] && [ "$NEED_TSDB" -eq 0 ] && [ "$NEED_VECTOR" -eq 0 ]; then
        report_ok
        return 0
    fi

    if ! is_root; then
        local what=("${MISSING_PKGS[@]}")
        [ "$NEED_TSDB" -eq 0 ] || what+=("timescaledb (built from source)")
        [ "$NEED_VECTOR" -eq 0 ] || what+=("pgvector (built from source)")
        die "missing: ${what[*]}; run this script as root to install them"
    fi

    mkdir -p "$BUILD_ROOT"
    LOG_FILE="$BUILD_ROOT/setup.log"
    : >"$LOG_FILE"

    local -a pkgs=("${MISSING_PKGS[@]}")
    if [ "$NEED_TSDB" -eq 1 ] || [ "$NEED_VECTOR" -eq 1 ]; then
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
    if [ "$NEED_VECTOR" -eq 1 ]; then
        build_pgvector
    fi

    report_ok
    rm -rf "$BUILD_ROOT"
}

usage() {
    printf 'usage: %s [--print-mirror]\n' "${0##*/}" >&2
}

case "$#:${1:-}" in
    0:) main ;;
    1:--print-mirror) debian_mirror ;;
    1:-h | 1:--help) usage ;;
    *) usage; exit 2 ;;
esac
