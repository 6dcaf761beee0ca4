# shellcheck shell=bash
# Shared helpers of loadtest/run.sh and loadtest/reads.sh (sourced, not run).

PG_BIN=/usr/lib/postgresql/15/bin

# Stops the local cluster of a cloudlens data directory if one is running: a cluster left
# by an earlier, killed run would survive `rm -rf` of its directory.
stop_stale_cluster() { # DATA_DIR
  local pgdata
  [ -f "$1/pgdata/postmaster.pid" ] || return 0
  pgdata=$(cd "$1/pgdata" && pwd)
  if [ "$(id -u)" = 0 ]; then
    runuser -u "${CLOUDLENS_PG_OS_USER:-postgres}" -- "$PG_BIN/pg_ctl" -D "$pgdata" stop -m fast >/dev/null || true
  else
    "$PG_BIN/pg_ctl" -D "$pgdata" stop -m fast >/dev/null || true
  fi
}

# Reads "value" lines on stdin, prints "median [min–max]" with the given printf format.
median_spread() { # FORMAT
  sort -g | awk -v f="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf f " [" f "–" f "]\n", m, v[1], v[NR] }'
}
