#!/usr/bin/env bash
# The two choices of --direct-read (exec cat rather than SFTP, ls rather than xlog.db), measured on the real stack's sshd with OpenSSH's own clients over
# one multiplexed connection (ControlMaster), so only the protocol and the remote work differ:
#
#   A. how to read a stored file: an exec channel running `cat` per file, or SFTP (OpenSSH's sftp
#      client, which pipelines its reads: an upper bound for any SFTP client), one file after
#      another and 8 at a time (8 SFTP sessions, 4 files each), over 32 stored segments;
#   B. how to peek without Barman at 100 000 archived files: `ls` of one hash directory (at most
#      256 names however large the archive) or reading the server's xlog.db (every file ever
#      archived, one line each).
#
#   sudo scripts/measure-direct-read.sh OUT
#
# Needs a stack with the bench archive (stack.sh up DIR; stack.sh bench-archive DIR 32):
#   BWR_STACK_DIR=DIR (required). OUT/direct-read.txt gets the table.
set -euo pipefail

log() { printf '[measure %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

(( $# == 1 )) || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT=$1
DIR=${BWR_STACK_DIR:?set BWR_STACK_DIR to a stack made by fixtures/real-stack/stack.sh}
[[ $(id -u) == 0 ]] || die "must run as root (builds a test archive as user barman)"
[[ -f $DIR/bench.env ]] || die "$DIR/bench.env missing: run stack.sh bench-archive $DIR 32 first"
mkdir -p "$OUT"
# shellcheck disable=SC1091
. "$DIR/stack.env"
# shellcheck disable=SC1091
. "$DIR/bench.env"
REPS=${BWR_MEASURE_REPS:-5}

# The stack's sshd has no SFTP subsystem (like a locked-down Barman host); this one has Debian's.
STACK_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fixtures/real-stack/stack.sh"
PORT=$(bash "$STACK_SH" sshd-start "$DIR" measure-sftp "Subsystem sftp /usr/lib/openssh/sftp-server")
CTL="$DIR/run/measure-ctl"
SSH=(/usr/bin/ssh -F "$SSH_CONFIG" -p "$PORT" -o ControlMaster=auto -o "ControlPath=$CTL" -o ControlPersist=120)
SFTP=(/usr/bin/sftp -q -F "$SSH_CONFIG" -P "$PORT" -o "ControlPath=$CTL" -b -)
cleanup() {
    "${SSH[@]}" -O exit bwr-barman >/dev/null 2>&1 || true
    bash "$STACK_SH" sshd-stop "$DIR" measure-sftp >/dev/null 2>&1 || true
}
trap cleanup EXIT
"${SSH[@]}" bwr-barman true || die "ssh to the stack failed"

HOME_BENCH=$(dirname "$BENCH_CONFIG")/home/$SERVER
mapfile -t FILES < <(find "$HOME_BENCH/wals" -mindepth 2 -name '0000000*' -type f | sort | head -n 32)
(( ${#FILES[@]} == 32 )) || die "want 32 stored segments in $HOME_BENCH/wals, found ${#FILES[@]}"
STORED=$(cat "${FILES[@]}" | wc -c)

now() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) / 1e6 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

true_each() { local f; for f in "${FILES[@]}"; do "${SSH[@]}" bwr-barman true; done; }
cat_each() { local f; for f in "${FILES[@]}"; do "${SSH[@]}" bwr-barman cat "$f" >/dev/null; done; }
cat_8() { printf '%s\n' "${FILES[@]}" | xargs -P 8 -I{} "${SSH[@]}" bwr-barman cat {} >/dev/null; }
sftp_each() { printf 'get %s /dev/null\n' "${FILES[@]}" | "${SFTP[@]}" bwr-barman >/dev/null; }
sftp_8() {
    local i
    for (( i = 0; i < 8; i++ )); do
        printf 'get %s /dev/null\n' "${FILES[@]:i*4:4}" | "${SFTP[@]}" bwr-barman >/dev/null &
    done
    wait
}

# B: a 100 000-file archive (empty files: only names matter to a peek) and its xlog.db.
PEEK="$DIR/peek-archive"
if [[ ! -f $PEEK/done ]]; then
    log "building a 100 000-file archive layout in $PEEK"
    rm -rf "$PEEK"
    install -d -o barman -g barman "$PEEK"
    runuser -u barman -- /usr/bin/python3 - "$PEEK" <<'EOF'
import os, sys
root = sys.argv[1]
wals = os.path.join(root, "wals")
os.makedirs(wals)
with open(os.path.join(wals, "angus-xlog.db"), "w") as db:
    for n in range(100_000):
        log, seg = divmod(n, 256)
        name = "00000001%08X%08X" % (log, seg)
        d = os.path.join(wals, name[:16])
        if seg == 0:
            os.mkdir(d)
        open(os.path.join(d, name), "w").close()
        db.write("%s\t2543101\t1764110000.0\tzstd\tNone\n" % name)
open(os.path.join(root, "done"), "w").close()
EOF
fi
LAST_DIR=$(find "$PEEK/wals" -mindepth 1 -maxdepth 1 -type d | sort | tail -n 1)
XLOG="$PEEK/wals/angus-xlog.db"
ls_dir() { "${SSH[@]}" bwr-barman ls "$LAST_DIR" >/dev/null; }
cat_xlog() { "${SSH[@]}" bwr-barman cat "$XLOG" >/dev/null; }

declare -A RUNS
measure() {   # measure NAME FUNCTION: REPS timed runs, medians reported
    local name=$1 fn=$2 r t0
    "$fn"   # warm-up
    for (( r = 0; r < REPS; r++ )); do
        t0=$(now); "$fn"; RUNS[$name]+="$(ms_since "$t0") "
    done
    log "$name: ${RUNS[$name]}ms"
}
for m in true_each cat_each sftp_each cat_8 sftp_8 ls_dir cat_xlog; do measure "$m" "$m"; done
med() { tr ' ' '\n' | grep . | median; }

{
    echo "date: $(date -Is); $(nproc) cores; OpenSSH $(/usr/bin/ssh -V 2>&1 | cut -d' ' -f1); medians of $REPS runs after a warm-up"
    echo
    echo "A. 32 stored segments ($STORED bytes, zstd), one multiplexed connection:"
    printf '  %-44s %6s ms\n' "exec true, 32 times (the ssh client's share)" "$(med <<<"${RUNS[true_each]}")"
    printf '  %-44s %6s ms\n' "exec cat, one file after another" "$(med <<<"${RUNS[cat_each]}")"
    printf '  %-44s %6s ms\n' "SFTP get, one session, one after another" "$(med <<<"${RUNS[sftp_each]}")"
    printf '  %-44s %6s ms\n' "exec cat, 8 at a time" "$(med <<<"${RUNS[cat_8]}")"
    printf '  %-44s %6s ms\n' "SFTP, 8 sessions of 4 files" "$(med <<<"${RUNS[sftp_8]}")"
    echo
    echo "B. peek at 100 000 archived files ($(find "$PEEK/wals" -mindepth 1 -maxdepth 1 -type d | wc -l) hash directories):"
    printf '  %-44s %6s ms  (%s bytes)\n' "ls of one hash directory" "$(med <<<"${RUNS[ls_dir]}")" \
        "$("${SSH[@]}" bwr-barman ls "$LAST_DIR" | wc -c)"
    printf '  %-44s %6s ms  (%s bytes)\n' "cat of xlog.db" "$(med <<<"${RUNS[cat_xlog]}")" "$(wc -c <"$XLOG")"
} | tee "$OUT/direct-read.txt"
