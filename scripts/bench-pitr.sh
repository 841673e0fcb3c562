#!/usr/bin/env bash
# Times a real PostgreSQL 15 PITR (archive recovery to the end of the archive) through several
# restore_commands, side by side in one run: the figures of docs/benchmarks.md and the README's --async row.
#
#   sudo scripts/bench-pitr.sh OUTDIR [MODE...]
#
# MODEs (default: copy async async-direct p8; python is slow, ask for it):
#   copy          restore_command = 'cp ARCHIVE_COPY/%f %p': the segments already on local disk (the
#                 floor; a warm-up run comes first and is not counted)
#   async         ours, --async -p 8 --keep-compression
#   async-direct  ours, --async --direct-read -p 8 --keep-compression
#   p8            ours, -p 8 --keep-compression (no --async: the per-call barrier)
#   python        the Python barman-wal-restore 3.19 at -p 8
# Every run restores the same base backup (stack.sh bench-archive takes it just before the bench
# WAL), with recovery.signal and no target, and is timed from `pg_ctl start` to the log line
# "database system is ready to accept connections" (after the promotion at the end of the archive);
# the row count is then checked against the primary's. Modes are interleaved round by round
# (BWR_PITR_ROUNDS, default 3) and the medians compared, so a noisy machine affects all alike.
# OUTDIR/pitr.txt gets the table, OUTDIR/pitr-runs.txt every run.
#
# Needs root, target/release/barman-wal-restore and what fixtures/real-stack/stack.sh needs.
#   BWR_STACK_DIR=DIR     use this stack (already up) and leave it up; else a fresh one under /tmp
#   BWR_BENCH_SEGMENTS    segments of WAL in config bench when it is made here (default 72)
#   BWR_BENCH_MAX_LOAD    wait (bounded, BWR_BENCH_QUIET_WAIT s, default 600) for the 1-minute load
#                         average to drop under this before each round (default 1.0)
#   BWR_PITR_TRACE=1      wrap every restore_command call: OUTDIR/trace-MODE-ROUND.txt lists each
#                         call's start (ms after pg_ctl start), duration, exit status and file, to
#                         find where a recovery waits
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_SH="$ROOT/fixtures/real-stack/stack.sh"
RESTORE="$ROOT/target/release/barman-wal-restore"
SEGMENTS=${BWR_BENCH_SEGMENTS:-72}
ROUNDS=${BWR_PITR_ROUNDS:-3}
MAX_LOAD=${BWR_BENCH_MAX_LOAD:-1.0}
QUIET_WAIT=${BWR_BENCH_QUIET_WAIT:-600}
RECOVERY_LIMIT=600   # seconds one PITR may take before the run is declared hung

log() { printf '[pitr %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

(( $# >= 1 )) || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT=$1; shift
MODES=${*:-copy async async-direct p8}
[[ $(id -u) == 0 ]] || die "must run as root (PostgreSQL runs as postgres, the stack as its users)"
[[ -x $RESTORE ]] || die "build first: cargo build --release"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# CPU accounting, per recovery: "barman" = the main sshd and everything it starts (sessions, shells,
# Barman's Python), "pg" = PostgreSQL and everything it starts (the startup process replaying WAL,
# every restore_command call, an --async worker). What a recovery needs from the 2 CPUs, and how
# much of them it left idle, is what bounds the ratios.
# shellcheck source=scripts/cpu-accounting.sh
. "$ROOT/scripts/cpu-accounting.sh"
if [[ -n ${BWR_STACK_DIR:-} ]]; then
    DIR=$BWR_STACK_DIR
    [[ -f $DIR/stack.env ]] || die "$DIR/stack.env missing"
    trap 'cg_cleanup' EXIT
else
    DIR=/tmp/bwr-pitr-$$
    log "stack up in $DIR"
    BWR_STACK_OWNER_PID=$$ bash "$STACK_SH" up "$DIR" >"$OUT/stack-up.log" 2>&1 \
        || { tail -20 "$OUT/stack-up.log" >&2; die "stack.sh up failed"; }
    trap 'cg_cleanup; bash "$STACK_SH" down "$DIR" >/dev/null 2>&1 || true' EXIT
fi
if [[ ! -f $DIR/bench.env ]]; then
    log "bench-archive: $SEGMENTS segments of real WAL into config bench (zstd), with a base backup"
    bash "$STACK_SH" bench-archive "$DIR" "$SEGMENTS" 2>&1 | tee "$OUT/bench-archive.log" >&2
fi
# shellcheck disable=SC1091
. "$DIR/stack.env"
# shellcheck disable=SC1091
. "$DIR/bench.env"
[[ -n ${BENCH_BASE_BACKUP:-} && -d $BENCH_BASE_BACKUP ]] \
    || die "$DIR/bench.env has no base backup: made by an older stack.sh; use a fresh stack"

cg_init barman pg
cg_join barman "$(<"$DIR/run/sshd-main.pid")"
HZ=$(getconf CLK_TCK)

WORK="$DIR/pitr-work"
mkdir -p "$WORK"
chown postgres:postgres "$WORK"
as_pg() { runuser -u postgres -- "$@"; }

OURS="$RESTORE -U barman --port $SSH_PORT -i $PG_SSH_KEY --known-hosts $PG_KNOWN_HOSTS -F /dev/null -c $BENCH_CONFIG"
PY="PATH=$PG_SSH_WRAPPER_DIR:/usr/bin:/bin $ORACLE -U barman --port $SSH_PORT -c $BENCH_CONFIG"
TRACE=${BWR_PITR_TRACE:-}
TRACER="$WORK/trace-call.sh"
cat >"$TRACER" <<'EOF'
#!/bin/sh
# trace-call.sh LOG WAL COMMAND...: runs COMMAND, appends "start_ns end_ns status WAL" to LOG
log=$1 wal=$2; shift 2
t0=$(date +%s%N); "$@"; rc=$?; t1=$(date +%s%N)
echo "$t0 $t1 $rc $wal" >>"$log"
exit $rc
EOF
chmod 0755 "$TRACER"
restore_command() {   # restore_command MODE SPOOL [TRACE_LOG]
    if [[ -n ${3:-} ]]; then
        printf '%s %s %%f ' "$TRACER" "$3"
    fi
    case $1 in
        copy)         echo "cp $BENCH_ORIG_DIR/%f %p" ;;
        async)        echo "$OURS --async -p 8 --keep-compression --spool-dir $2 127.0.0.1 $SERVER %f %p" ;;
        async-direct) echo "$OURS --async --direct-read -p 8 --keep-compression --spool-dir $2 127.0.0.1 $SERVER %f %p" ;;
        p8)           echo "$OURS -p 8 --keep-compression --spool-dir $2 127.0.0.1 $SERVER %f %p" ;;
        python)       echo "$PY -p 8 --spool-dir $2 127.0.0.1 $SERVER %f %p" ;;
        *) die "unknown mode $1" ;;
    esac
}

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_quiet() {
    local end=$(( $(date +%s) + QUIET_WAIT ))
    until awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; do
        if (( $(date +%s) >= end )); then
            log "load $(cut -d' ' -f1 /proc/loadavg) still >= $MAX_LOAD; measuring anyway"
            echo "round $1: NOT QUIET (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$OUT/pitr-runs.txt"
            return 0
        fi
        sleep 5   # polling interval of a bounded wait
    done
}

# wait_ready LOG LIMIT: waits (at most LIMIT seconds) for PostgreSQL's log to say it is ready and
# prints when it saw that (ns since the epoch, 10 ms resolution); fails on FATAL or PANIC. One
# process polling the file: a grep and a sleep forked every 10 ms took ~14 % of this 2-CPU machine,
# CPU the recovery being timed needed.
wait_ready() {
    /usr/bin/python3 - "$1" "$2" <<'EOF'
import sys, time
path, limit = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + limit
pos, tail = 0, b""
while time.monotonic() < end:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
    except FileNotFoundError:
        chunk = b""
    if chunk:
        now = time.time_ns()
        pos += len(chunk)
        tail = tail[-256:] + chunk
        if b"database system is ready to accept connections" in tail:
            print(now)
            sys.exit(0)
        if b"FATAL" in tail or b"PANIC" in tail:
            sys.exit(1)
    time.sleep(0.01)  # polling interval of a bounded wait
sys.exit(2)
EOF
}

# pitr MODE ROUND: one recovery; prints its seconds
pitr() {
    local mode=$1 round=$2 data="$WORK/data-$1" spool="$WORK/spool-$1" port t0 t1 log rows
    rm -rf "$data" "$spool"
    as_pg cp -a "$BENCH_BASE_BACKUP" "$data"
    chmod 0700 "$data"
    as_pg mkdir -m 0700 "$spool"
    port=$(free_port)
    log="$WORK/pg-$mode-$round.log"
    rm -f "$log"
    cat >>"$data/postgresql.auto.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
hot_standby = on
primary_conninfo = ''
restore_command = '$(restore_command "$mode" "$spool" "${TRACE:+$WORK/trace-$mode-$round.raw}")'
EOF
    rm -f "$WORK/trace-$mode-$round.raw"
    as_pg touch "$data/recovery.signal"
    sync
    local b0 i0 b1 i1 s0 p0 s1 p1
    read -r b0 i0 < <(cpu_jiffies); read -r s0 p0 < <(cg_usage barman pg)
    t0=$(date +%s%N)
    in_cg pg runuser -u postgres -- "$PG_BIN/pg_ctl" start -D "$data" -l "$log" >/dev/null
    if ! t1=$(wait_ready "$log" "$RECOVERY_LIMIT"); then
        as_pg "$PG_BIN/pg_ctl" stop -D "$data" -m immediate >/dev/null 2>&1 || true
        tail -5 "$log" >&2
        die "$mode: recovery did not finish (log $log)"
    fi
    read -r b1 i1 < <(cpu_jiffies); read -r s1 p1 < <(cg_usage barman pg)
    rows=$(as_pg "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "SELECT count(*) FROM bwr_bench")
    as_pg "$PG_BIN/pg_ctl" stop -D "$data" -m fast -w >/dev/null
    [[ $rows == "$BENCH_ROWS" ]] || die "$mode: $rows rows after recovery, the primary has $BENCH_ROWS"
    local restored; restored=$(grep -c "restored log file" "$log" || true)
    if [[ -n $TRACE && -f $WORK/trace-$mode-$round.raw ]]; then
        awk -v t0="$t0" -v t1="$t1" '{ printf "%8.0f ms  %6.0f ms  exit %3d  %s\n", ($1 - t0) / 1e6, ($2 - $1) / 1e6, $3, $4 }
            END { printf "%8.0f ms  ready\n", (t1 - t0) / 1e6 }' "$WORK/trace-$mode-$round.raw" >"$OUT/trace-$mode-$round.txt"
    fi
    # The spool goes: an --async worker leaves when its spool disappears.
    rm -rf "$data" "$spool"
    awk -v a="$t0" -v b="$t1" -v m="$mode" -v r="$round" -v n="$restored" -v hz="$HZ" \
        -v busy=$(( b1 - b0 )) -v idle=$(( i1 - i0 )) -v s=$(( s1 - s0 )) -v p=$(( p1 - p0 )) -v cg="${CG:+1}" \
        'BEGIN { printf "round %d %-13s %7.2f s  (%d segments restored); CPUs busy %.1f of %.1f CPU-s", r, m, (b - a) / 1e9, n, busy / hz, (busy + idle) / hz
                 if (cg) printf ": Barman side %.1f, PostgreSQL and restore_command %.1f, other %.1f", s / 1e9, p / 1e9, busy / hz - (s + p) / 1e9
                 printf "\n" }' >>"$OUT/pitr-runs.txt"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'
}

{
    echo "date: $(date -Is); host: $(uname -srm), $(nproc) cores"
    echo "archive: config bench (zstd), $(wc -w <<<"$BENCH_SEGMENTS") segments, $BENCH_RAW_BYTES bytes stored as $BENCH_STORED_BYTES; $BENCH_ROWS rows"
} >"$OUT/pitr-runs.txt"

declare -A TIMES
if [[ " $MODES " == *" copy "* ]]; then
    log "warm-up: copy"
    pitr copy 0 >/dev/null
fi
for (( r = 1; r <= ROUNDS; r++ )); do
    wait_quiet "$r"
    for m in $MODES; do
        log "round $r: $m"
        TIMES[$m]+="$(pitr "$m" "$r") "
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
{
    echo "PITR of $(wc -w <<<"$BENCH_SEGMENTS") segments (zstd archive, real sshd + Barman 3.19 on 127.0.0.1), median of $ROUNDS rounds"
    echo
    printf '%-13s %9s  %s\n' mode "median s" "runs (s)"
    for m in $MODES; do
        printf '%-13s %9.2f  %s\n' "$m" "$(median <<<"${TIMES[$m]}")" "${TIMES[$m]}"
    done
    if [[ -n ${TIMES[copy]:-} ]]; then
        local_floor=$(median <<<"${TIMES[copy]}")
        echo
        for m in $MODES; do
            [[ $m == copy ]] && continue
            awk -v m="$m" -v t="$(median <<<"${TIMES[$m]}")" -v f="$local_floor" \
                'BEGIN { printf "%-13s %.2f x the local copy\n", m, t / f }'
        done
    fi
} | tee "$OUT/pitr.txt"
