#!/usr/bin/env bash
# barman-wal-bench against the real stack (OpenSSH sshd + Barman 3.19 + PostgreSQL 15 on 127.0.0.1),
# side by side with the Python barman-wal-restore: the figures of docs/benchmarks.md.
#
#   sudo scripts/bench-real-stack.sh OUTDIR [STEP...]
#
# STEPs (default: all, in this order):
#   p8 p16 p0 ours vs Python at that -p, --keep-compression on,off, --direct-read off,on
#   floor     64 `barman get-wal` run locally as user barman, 8 at a time, no SSH (3 runs each,
#             without and with --keep-compression)
#   cm        ours vs Python through OpenSSH ControlMaster (ControlPersist 60), -p 8
#   p32       ours alone at -p 32 (zero failed calls required)
#   ours      ours alone at -p 8, --keep-compression on,off: env.txt then splits the CPU time of our
#             calls alone between the Barman side and the client (not in the default list)
#   costs     what one call costs the Barman side, one at a time (no contention): 16 `barman get-wal
#             --keep-compression` run locally, the same 16 through one OpenSSH ControlMaster
#             connection, and an empty `true` each way; CPU ms per call from the accounting groups
#             (not in the default list)
#   async     -p 8 --keep-compression with --async off,on and --direct-read off,on, calls spaced by
#             an emulated replay (BWR_BENCH_REPLAY_MS, default 100 ms per segment), Python beside
#             (not in the default list: run it by name)
#   wan       -p 8 --keep-compression, --async off,on, at --rtt 0,50 (the bench's relay; BWR_BENCH_RTT
#             overrides the list), Python beside through the same relay (not in the default list)
#   bandwidth -p 8 at --bandwidth 100 (BWR_BENCH_MBIT), --keep-compression on,off, Python beside (not in
#             the default list)
#   fleet     4 clients at once (BWR_BENCH_CLIENTS), -p 8 --keep-compression, --direct-read off,on; the
#             Barman side's CPU per delivered segment from the accounting group (not in the default list)
# Each step writes OUTDIR/<step>.txt (the table) and OUTDIR/<step>.json; OUTDIR/env.txt records the
# machine, the archive, and per step the load and how busy the CPUs were. Before each step the
# script waits (at most BWR_BENCH_QUIET_WAIT seconds, default 900) for the 1-minute load average to
# drop under BWR_BENCH_MAX_LOAD (default 1.0): other work on the machine skews every figure.
#
# Needs root, target/release/barman-wal-{restore,bench} (cargo build --release) and what
# fixtures/real-stack/stack.sh needs. Environment:
#   BWR_STACK_DIR=DIR   use this stack (already up) and leave it up; else a fresh one is made under
#                       /tmp and torn down at the end
#   BWR_BENCH_COUNT     calls per setting (default 64)
#   BWR_BENCH_SEGMENTS  segments of real WAL in config "bench" (default 70; must be > COUNT)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_SH="$ROOT/fixtures/real-stack/stack.sh"
BENCH="$ROOT/target/release/barman-wal-bench"
RESTORE="$ROOT/target/release/barman-wal-restore"
COUNT=${BWR_BENCH_COUNT:-64}
SEGMENTS=${BWR_BENCH_SEGMENTS:-70}
REPLAY_MS=${BWR_BENCH_REPLAY_MS:-100}
RTTS=${BWR_BENCH_RTT:-0,50}
MBIT=${BWR_BENCH_MBIT:-100}
CLIENTS=${BWR_BENCH_CLIENTS:-4}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

(( $# >= 1 )) || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT=$1; shift
STEPS=${*:-p8 floor cm p16 p32 p0}
MAX_LOAD=${BWR_BENCH_MAX_LOAD:-1.0}
QUIET_WAIT=${BWR_BENCH_QUIET_WAIT:-900}
[[ $(id -u) == 0 ]] || die "must run as root (the stack runs sshd, PostgreSQL and Barman as their users)"
[[ -x $BENCH && -x $RESTORE ]] || die "build first: cargo build --release"
(( SEGMENTS > COUNT )) || die "BWR_BENCH_SEGMENTS ($SEGMENTS) must exceed BWR_BENCH_COUNT ($COUNT)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source=scripts/cpu-accounting.sh
. "$ROOT/scripts/cpu-accounting.sh"   # before the traps that call cg_cleanup

# ------------------------------------------------------------------ the stack
if [[ -n ${BWR_STACK_DIR:-} ]]; then
    DIR=$BWR_STACK_DIR
    [[ -f $DIR/stack.env ]] || die "$DIR/stack.env missing"
else
    DIR=/tmp/bwr-bench-$$
    log "stack up in $DIR"
    BWR_STACK_OWNER_PID=$$ bash "$STACK_SH" up "$DIR" >"$OUT/stack-up.log" 2>&1 \
        || { tail -20 "$OUT/stack-up.log" >&2; die "stack.sh up failed"; }
    trap 'cm_stop; cg_cleanup; bash "$STACK_SH" down "$DIR" >/dev/null 2>&1 || true' EXIT
fi
if [[ ! -f $DIR/bench.env ]]; then
    log "bench-archive: $SEGMENTS segments of real WAL into config bench (zstd)"
    bash "$STACK_SH" bench-archive "$DIR" "$SEGMENTS" 2>&1 | tee "$OUT/bench-archive.log" >&2
fi
# shellcheck disable=SC1091
. "$DIR/stack.env"
# shellcheck disable=SC1091
. "$DIR/bench.env"
read -r -a SEGS <<<"$BENCH_SEGMENTS"
(( ${#SEGS[@]} >= COUNT )) || die "config bench has ${#SEGS[@]} segments, fewer than $COUNT"
FIRST=${SEGS[0]}

HOME_DIR="$DIR/bench-home"        # empty HOME: nothing of root's ~/.ssh is read
WORK="$DIR/bench-work"            # spools and destinations (same filesystem as the archive)
mkdir -p "$HOME_DIR" "$WORK"

# Our connection options; the bench passes them to our binary.
CONN=(-U barman --port "$SSH_PORT" -i "$SSH_KEY" --known-hosts "$KNOWN_HOSTS" -F /dev/null
      -c "$BENCH_CONFIG")
# The Python original, through the stack's `ssh -F` wrapper, against the same (default) sshd.
PY="PATH=$SSH_WRAPPER_DIR:/usr/bin:/bin $ORACLE -U barman --port $SSH_PORT -c $BENCH_CONFIG -p %j %k --spool-dir %s 127.0.0.1 $SERVER %f %p"

# The same through the bench's relay (--rtt, --bandwidth): %H %P are the relay's address. Its ports are
# fixed (RELAY_PORT and the next ones, one per round trip) so that OpenSSH's known_hosts can trust them
# before the run; ours is told the keys by the bench itself.
PY_RELAY="PATH=$SSH_WRAPPER_DIR:/usr/bin:/bin $ORACLE -U barman --port %P -c $BENCH_CONFIG -p %j %k --spool-dir %s %H $SERVER %f %p"
RELAY_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trust_relays() {   # trust_relays COUNT: known_hosts lines for the relay ports, in the stack's file
    local i key
    key=$(grep -m1 "^\[127.0.0.1\]:$SSH_PORT " "$KNOWN_HOSTS" | cut -d' ' -f2-)
    for (( i = 0; i < $1; i++ )); do
        grep -q "^\[127.0.0.1\]:$(( RELAY_PORT + i )) " "$KNOWN_HOSTS" \
            || echo "[127.0.0.1]:$(( RELAY_PORT + i )) $key" >>"$KNOWN_HOSTS"
    done
}

# The same with OpenSSH connection multiplexing, as a DBA would configure it.
CM_DIR="$DIR/client-cm"
mkdir -p "$CM_DIR/bin"
chmod 0700 "$CM_DIR"
{
    cat "$SSH_CONFIG"
    printf '    ControlMaster auto\n    ControlPath %s/cm-%%C\n    ControlPersist 60\n' "$CM_DIR"
} >"$CM_DIR/ssh_config"
printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$CM_DIR/ssh_config" >"$CM_DIR/bin/ssh"
chmod 0755 "$CM_DIR/bin/ssh"
PY_CM="PATH=$CM_DIR/bin:/usr/bin:/bin $ORACLE -U barman --port $SSH_PORT -c $BENCH_CONFIG -p %j %k --spool-dir %s 127.0.0.1 $SERVER %f %p"
cm_stop() {   # stop the ControlPersist master, if any (bounded: ssh -O exit returns at once)
    [[ -n ${CM_DIR:-} && -f $CM_DIR/ssh_config ]] || return 0
    timeout 10 /usr/bin/ssh -F "$CM_DIR/ssh_config" -O exit -p "$SSH_PORT" barman@127.0.0.1 >/dev/null 2>&1 || true
}

{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2/1024/1024 " GiB"}' /proc/meminfo)"
    echo "OpenSSH: $(/usr/sbin/sshd -V 2>&1 | head -1)"
    echo "Barman: $("$BARMAN_VENV/bin/barman" --version 2>&1 | head -1)"
    echo "ours: $("$RESTORE" --version)"
    echo "archive: config bench (zstd), ${#SEGS[@]} segments from $FIRST, $BENCH_RAW_BYTES bytes stored as $BENCH_STORED_BYTES"
    echo "stack: $DIR (sshd port $SSH_PORT, default MaxStartups/MaxSessions)"
} >"$OUT/env.txt"

# CPU accounting: "server" = the main sshd and everything it starts (sessions, shells, Barman's
# Python) plus the local get-wal floor, "client" = the bench and everything it starts (our binary,
# the Python client, its ssh processes). The rest of the busy CPU time is other work on the machine.
cg_init server client
cg_join server "$(<"$DIR/run/sshd-main.pid")"
[[ -n ${BWR_STACK_DIR:-} ]] && trap 'cm_stop; cg_cleanup' EXIT

load1() { cut -d' ' -f1 /proc/loadavg; }

# wait_quiet STEP: bounded wait for the machine to calm down (a poll, not a synchronisation delay)
wait_quiet() {
    local end=$(( $(date +%s) + QUIET_WAIT ))
    until awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; do
        if (( $(date +%s) >= end )); then
            log "$1: load $(load1) still >= $MAX_LOAD after ${QUIET_WAIT}s; measuring anyway"
            echo "$1: NOT QUIET (load $(load1) after waiting ${QUIET_WAIT}s)" >>"$OUT/env.txt"
            return 0
        fi
        sleep 5   # polling interval of a bounded wait
    done
}

# step NAME CMD...: run CMD with the load and CPU use around it recorded in env.txt
step() {
    local name=$1; shift
    wait_quiet "$name"
    local b0 i0 b1 i1 t0 t1 s0 c0 s1 c1 rc=0 hz
    hz=$(getconf CLK_TCK)
    read -r b0 i0 < <(cpu_jiffies); read -r s0 c0 < <(cg_usage server client); t0=$(date +%s%N)
    echo "$name: start $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
    "$@" || rc=$?
    read -r b1 i1 < <(cpu_jiffies); read -r s1 c1 < <(cg_usage server client); t1=$(date +%s%N)
    echo "$name: end $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg), exit $rc" >>"$OUT/env.txt"
    awk -v n="$name" -v b=$(( b1 - b0 )) -v i=$(( i1 - i0 )) -v hz="$hz" -v s=$(( s1 - s0 )) \
        -v c=$(( c1 - c0 )) -v w=$(( t1 - t0 )) -v cg="${CG:+1}" 'BEGIN {
        busy = b / hz; wall = w / 1e9
        printf "%s: %.0f s wall, CPUs busy %.0f%% (%.1f CPU-s of %.1f)", n, wall, 100 * b / (b + i), busy, (b + i) / hz
        if (cg) printf "; barman side (sshd, shells, Barman) %.1f CPU-s, client side %.1f CPU-s, other work on the machine %.1f CPU-s", s / 1e9, c / 1e9, busy - s / 1e9 - c / 1e9
        printf "\n" }' >>"$OUT/env.txt"
}

bench() {   # bench NAME ARGS...: one barman-wal-bench run, table to OUT/NAME.txt
    local name=$1; shift
    log "$name: barman-wal-bench $*"
    HOME=$HOME_DIR in_cg client "$BENCH" "${CONN[@]}" 127.0.0.1 "$SERVER" --from "$FIRST" --count "$COUNT" \
        --work-dir "$WORK" --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" || true
    cat "$OUT/$name.txt"
}

floor() {   # 64 local get-wal as barman, 8 at a time, 3 runs without and with --keep-compression
    local names="$WORK/floor-names" keep i t0 t1
    printf '%s\n' "${SEGS[@]:0:COUNT}" >"$names"
    chmod 0644 "$names"
    : >"$OUT/floor.txt"
    for keep in "" "--keep-compression"; do
        for i in 1 2 3; do
            t0=$(date +%s%N)
            (cd / && in_cg server runuser -u barman -- xargs -P 8 -n 1 "$BARMAN_VENV/bin/barman" -c "$BENCH_CONFIG" \
                get-wal $keep "$SERVER" <"$names" >/dev/null)
            t1=$(date +%s%N)
            printf '%d local get-wal %-18s 8 at a time, run %d: %6.2f s\n' "$COUNT" "${keep:-(decompressed)}" \
                "$i" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')" | tee -a "$OUT/floor.txt"
        done
    done
}

costs() {   # Barman-side CPU and wall time per call, one call at a time
    local segs=("${SEGS[@]:8:16}") kind seg s0 s1 t0 t1 r
    local_true() { (cd / && in_cg server runuser -u barman -- true); }
    local_get() { (cd / && in_cg server runuser -u barman -- "$BARMAN_VENV/bin/barman" -c "$BENCH_CONFIG" \
                      get-wal --keep-compression "$SERVER" "$1" | cat >/dev/null); }
    ssh_true() { /usr/bin/ssh -F "$CM_DIR/ssh_config" -p "$SSH_PORT" barman@127.0.0.1 true; }
    ssh_get() { /usr/bin/ssh -F "$CM_DIR/ssh_config" -p "$SSH_PORT" barman@127.0.0.1 \
                    "barman -c $BENCH_CONFIG get-wal --keep-compression $SERVER $1" >/dev/null; }
    ssh_true   # the master connection, outside the measurement
    : >"$OUT/costs.txt"
    for r in 1 2; do
        for kind in local_true local_get ssh_true ssh_get; do
            read -r s0 < <(cg_usage server); t0=$(date +%s%N)
            for seg in "${segs[@]}"; do "$kind" "$seg"; done
            read -r s1 < <(cg_usage server); t1=$(date +%s%N)
            awk -v k="$kind" -v r="$r" -v c=$(( s1 - s0 )) -v w=$(( t1 - t0 )) -v n="${#segs[@]}" -v cg="${CG:+1}" \
                'BEGIN { printf "round %d %-10s %2d calls: %4.0f ms wall per call", r, k, n, w / 1e6 / n
                         if (cg) printf ", Barman side %4.0f CPU-ms per call", c / 1e6 / n
                         printf "\n" }' | tee -a "$OUT/costs.txt"
        done
    done
    cm_stop
}

for s in $STEPS; do
    case $s in
        p0|p8|p16) step "$s" bench "$s" -p "${s#p}" --keep-compression on,off --direct-read off,on --compare "$PY" ;;
        p32) step p32 bench p32 -p 32 --keep-compression on,off --direct-read off,on ;;
        ours) step ours bench ours -p 8 --keep-compression on,off ;;
        async) step async bench async -p 8 --keep-compression on --direct-read off,on --async off,on \
                   --replay-ms "$REPLAY_MS" --compare "$PY" ;;
        cm) step cm bench cm -p 8 --keep-compression on,off --direct-read off,on --compare "$PY_CM"; cm_stop ;;
        wan) trust_relays 4
             step wan bench wan -p 8 --keep-compression on --async off,on --rtt "$RTTS" \
                 --relay-port "$RELAY_PORT" --replay-ms "$REPLAY_MS" --compare "$PY_RELAY" ;;
        bandwidth) trust_relays 1
             step bandwidth bench bandwidth -p 8 --keep-compression on,off --bandwidth "$MBIT" \
                 --relay-port "$RELAY_PORT" --compare "$PY_RELAY" ;;
        fleet) step fleet bench fleet -p 8 --keep-compression on --direct-read off,on --clients "$CLIENTS" \
                   ${CG:+--barman-cgroup "$CG/server"} ;;
        floor) step floor floor ;;
        costs) step costs costs ;;
        *) die "unknown step $s" ;;
    esac
done
log "done: $OUT"
