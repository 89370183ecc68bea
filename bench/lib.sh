# shellcheck shell=bash
# ducto's benchmarks' shared shell pieces, sourced by bench/run and bench/scale/run: a
# throw-away PostgreSQL 15 cluster, psql on one of its databases, the ledger installed as
# the migrations install it, and a median.
#
# The sourcing script sets ROOT (the repository), PGBIN (PostgreSQL's binaries) and
# LOG_PREFIX (what its messages start with) first.

log() { printf '%s: %s\n' "${LOG_PREFIX:-bench}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# PostgreSQL refuses to run as root: run its server tools as the `postgres` OS user
# (from /, which it can read).
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# cluster_start PORT [SETTING...]: a new cluster in a new temp dir, started on 127.0.0.1:PORT
# with PostgreSQL's defaults (fsync, synchronous_commit and full_page_writes on) but the
# `-c name=value` SETTINGs given. Sets DIR (the temp dir: data/, server.log; anything the
# caller keeps there goes with it) and URL (postgresql://postgres@127.0.0.1:PORT, no
# database). The caller deletes it all with cluster_stop, from its EXIT trap.
cluster_start() {
    local port=$1
    shift
    DIR=$(mktemp -d /tmp/ducto-bench.XXXXXX)
    if [[ $EUID -eq 0 ]]; then
        chown postgres:postgres "$DIR"
    fi
    log "throw-away cluster in $DIR on port $port"
    as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$DIR/initdb.log" 2>&1 || die "initdb failed: $(cat "$DIR/initdb.log")"
    as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o \
        "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$DIR $*" \
        start >/dev/null || die "the cluster did not start: $(cat "$DIR/server.log")"
    URL=postgresql://postgres@127.0.0.1:$port
}

# cluster_stop: stop the cluster of cluster_start and delete its temp dir (safe to call
# when it never started).
cluster_stop() {
    [[ -n ${DIR:-} ]] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}

# psql_on DATABASE ARGS...
psql_on() {
    local db=$1
    shift
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@" "$URL/$db"
}

# ledger_install DATABASE: the Supabase compat bootstrap and every migration, in order.
ledger_install() {
    local migration
    psql_on "$1" -f "$ROOT/scripts/supabase-compat.sql" >/dev/null
    for migration in "$ROOT"/supabase/migrations/*.sql; do
        psql_on "$1" -f "$migration" >/dev/null
    done
}

# median: the median of the numbers on stdin (separated by blanks or newlines).
median() {
    tr -s ' ' '\n' | grep . | sort -g |
        awk '{ v[NR] = $1 }
            END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
