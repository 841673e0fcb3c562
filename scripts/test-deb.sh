#!/usr/bin/env bash
# Proves the Debian package end to end, on this machine, as root (scripts/test.sh runs it after
# cargo test):
#
#   scripts/test-deb.sh
#
#  1. builds the .deb (scripts/build-deb.sh);
#  2. installs Debian's barman-cli first (apt-get, without recommends) when it is installable;
#  3. dpkg -i ours: /usr/bin/barman-wal-restore is ours ("Rust implementation" in --version),
#     barman-cli's command and man page sit at their diverted *.barman-cli names, byte for byte
#     what barman-cli shipped; man, bash, zsh and fish find our page and completions where they
#     look by default; reinstalling barman-cli (the upgrade path) and ours keeps all that;
#  4. a PITR on the real stack (fixtures/real-stack/stack.sh): a clone of the base backup
#     recovers to the restore point through a restore_command as Barman writes it, naming the
#     command without a path and only options the Python original has; the row count after
#     promotion must be the restore point's;
#  5. dpkg -r then dpkg -P: every file dpkg listed for us is gone, no diversion is left, and
#     /usr/bin/barman-wal-restore and its man page are barman-cli's again (or absent without it).
#
# Whatever happens, the machine is left without our package (other people use
# /usr/bin/barman-wal-restore too) and the stack is torn down.
# Environment: BWR_BARMAN_VENV (the stack's Barman), BWR_STACK_BASE (default /tmp).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PKG=barman-wal-restore-rs
CMD=/usr/bin/barman-wal-restore
MAN=/usr/share/man/man1/barman-wal-restore.1.gz
CMD_DIVERTED=/usr/bin/barman-wal-restore.barman-cli
MAN_DIVERTED=/usr/share/man/man1/barman-wal-restore.barman-cli.1.gz
RECOVERY_TIMEOUT=240

is_ci() { case "${CI:-}" in true|TRUE|True|1|yes) return 0 ;; *) return 1 ;; esac; }
log() { printf '[test-deb %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

[[ $(id -u) == 0 ]] || die "must run as root (dpkg -i, apt-get, the real stack)"

installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
# md5 that dpkg recorded for PATH (as shipped, without the leading /) in PACKAGE
shipped_md5() { awk -v p="${2#/}" '$2 == p { print $1 }' "/var/lib/dpkg/info/$1.md5sums"; }
md5() { md5sum "$1" | cut -d' ' -f1; }
our_diversions() { dpkg-divert --list | grep -F "by $PKG" || true; }

STACK=""
cleanup() {
    local rc=$?
    if [[ -n $STACK && -f $STACK/stack.env ]]; then
        bash fixtures/real-stack/stack.sh down "$STACK" >/dev/null 2>&1 || true
    fi
    purge_ours
    exit "$rc"
}
# Leaves the machine without our package and without our diversions even if our postrm failed to
# remove them (barman-cli's files renamed back).
purge_ours() {
    if [[ -n $(dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null | grep -v not-installed) ]]; then
        log "cleanup: purging $PKG"
        dpkg -P "$PKG" >/dev/null 2>&1 || true
    fi
    local line from to
    while read -r line; do
        from=$(awk '{print $3}' <<<"$line"); to=$(awk '{print $5}' <<<"$line")
        log "cleanup: removing the diversion of $from left behind"
        dpkg-divert --package "$PKG" --remove --rename --divert "$to" "$from" >/dev/null || true
    done < <(our_diversions)
}
trap cleanup EXIT

# A leftover of an interrupted run would make every check below meaningless.
purge_ours

# ---- 1. build
log "building the package"
deb=$(bash scripts/build-deb.sh | tail -n1)
log "built $deb in $(elapsed)"

# ---- 2. Debian's barman-cli first
with_cli=0
if installed barman-cli; then
    with_cli=1
    log "barman-cli $(dpkg-query -W -f='${Version}' barman-cli) already installed"
else
    t=$(date +%s)
    log "installing Debian's barman-cli (python3 dependencies, no recommends)"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends barman-cli >/dev/null 2>&1 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends barman-cli >/dev/null 2>&1; }
    then
        with_cli=1
        log "barman-cli installed in $(( $(date +%s) - t ))s"
    elif is_ci; then
        die "Debian's barman-cli could not be installed: the coexistence cannot be checked"
    else
        log "WARNING: barman-cli is not installable here: only our own install and removal are checked"
    fi
fi
if (( with_cli )); then
    [[ $(md5 "$CMD") == $(shipped_md5 barman-cli "$CMD") ]] || die "$CMD is not barman-cli's before we start"
    v=$("$CMD" --version 2>&1 || true)
    [[ $v != *"Rust implementation"* ]] || die "$CMD already says '$v' before we install"
fi

# ---- 3. install ours
check_ours_installed() {
    local what=$1 v
    v=$("$CMD" --version 2>&1) || die "$what: $CMD --version failed: $v"
    [[ $v == *"Rust implementation"* ]] || die "$what: $CMD --version says '$v', not ours"
    [[ -z $(dpkg --verify "$PKG") ]] || die "$what: dpkg --verify $PKG: $(dpkg --verify "$PKG")"
    [[ $(md5 "$CMD") == $(shipped_md5 "$PKG" "$CMD") ]] || die "$what: $CMD is not the file we shipped"
    [[ $(md5 "$MAN") == $(shipped_md5 "$PKG" "$MAN") ]] || die "$what: $MAN is not the page we shipped"
    gzip -dc "$MAN" | grep -q '^\.SH "EXIT STATUS"' || die "$what: our man page has no EXIT STATUS section"
    [[ $(our_diversions | wc -l) == 2 ]] || die "$what: want 2 diversions by $PKG, have: $(our_diversions)"
    if (( with_cli )); then
        [[ $(md5 "$CMD_DIVERTED") == $(shipped_md5 barman-cli "$CMD") ]] \
            || die "$what: $CMD_DIVERTED is not barman-cli's $CMD"
        [[ $(md5 "$MAN_DIVERTED") == $(shipped_md5 barman-cli "$MAN") ]] \
            || die "$what: $MAN_DIVERTED is not barman-cli's man page"
        "$CMD_DIVERTED" --help >/dev/null 2>&1 || die "$what: $CMD_DIVERTED --help failed"
    fi
    bash -c 'source /usr/share/bash-completion/completions/barman-wal-restore && complete -p barman-wal-restore' \
        >/dev/null || die "$what: the bash completion does not register barman-wal-restore"
    # zsh and fish find theirs where they look by default (no fpath or path of ours given)
    local home; home=$(mktemp -d)
    if command -v zsh >/dev/null; then
        [[ $(HOME=$home zsh -fc 'autoload -Uz compinit && compinit -u -d "$HOME/.zcompdump" && print -r -- ${_comps[barman-wal-restore]}') \
            == _barman-wal-restore ]] || die "$what: zsh's compinit does not find _barman-wal-restore"
    fi
    if command -v fish >/dev/null; then
        [[ $(HOME=$home XDG_CONFIG_HOME=$home XDG_DATA_HOME=$home fish -c 'complete -C"barman-wal-restore --keep-c"') \
            == --keep-compression* ]] || die "$what: fish does not complete barman-wal-restore --keep-c"
    fi
    rm -rf "$home"
    if command -v man >/dev/null; then
        [[ $(man -w barman-wal-restore) == "$MAN" ]] || die "$what: man -w barman-wal-restore is not $MAN"
        if (( with_cli )); then
            [[ $(man -w barman-wal-restore.barman-cli) == "$MAN_DIVERTED" ]] \
                || die "$what: man -w barman-wal-restore.barman-cli is not $MAN_DIVERTED"
        fi
    fi
}
log "dpkg -i $(basename "$deb")"
dpkg -i "$deb" >/dev/null || die "dpkg -i $deb failed"
check_ours_installed "after dpkg -i"
log "installed: $("$CMD" --version 2>&1 | head -n1)"

if (( with_cli )); then
    # barman-cli unpacked while our diversion stands: the path of an upgrade of barman-cli.
    log "reinstalling barman-cli over us (as an upgrade of it would unpack)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall --no-install-recommends barman-cli \
        >/dev/null 2>&1 || die "reinstalling barman-cli failed"
    check_ours_installed "after reinstalling barman-cli"
fi
log "reinstalling ours (preinst/postrm in upgrade mode)"
dpkg -i "$deb" >/dev/null || die "dpkg -i $deb (again) failed"
check_ours_installed "after reinstalling $PKG"

# ---- 4. PITR through the installed command
STACK=$(mktemp -d "${BWR_STACK_BASE:-/tmp}/bwr-deb-stack.XXXXXX")
chmod 0755 "$STACK"
t=$(date +%s)
log "real stack up in $STACK"
BWR_STACK_OWNER_PID=$$ bash fixtures/real-stack/stack.sh up "$STACK" >"$STACK.setup.log" 2>&1 \
    || { tail -30 "$STACK.setup.log" >&2; die "stack.sh up failed"; }
rm -f "$STACK.setup.log"
log "stack up in $(( $(date +%s) - t ))s"
# shellcheck disable=SC1091
. "$STACK/stack.env"

data="$STACK/pg/deb-pitr"
runuser -u postgres -- cp -a "$PG_BASE_BACKUP" "$data"
chmod 0700 "$data"
echo "$data" >>"$STACK/run/pgdata.list"   # stack.sh down stops it
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
spool="$STACK/spool/deb-pitr"
runuser -u postgres -- mkdir -p "$spool"
# As `barman restore` writes it: the bare command name, options of the Python original only. The
# ssh wrapper first on the server's PATH points ssh (and our `ssh -G`) at the stack's ssh_config,
# exactly as it does for the Python reference; nothing in ~postgres/.ssh is read.
restore="barman-wal-restore -U barman --port $SSH_PORT -c $BARMAN_CONFIG_zstd -p 4 --spool-dir $spool $SSH_HOST $SERVER %f %p"
cat >>"$data/postgresql.auto.conf" <<EOF
# scripts/test-deb.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$STACK/pg/sock'
archive_mode = off
hot_standby = on
primary_conninfo = ''
restore_command = '$restore'
recovery_target_name = '$TARGET_NAME'
recovery_target_action = 'promote'
EOF
runuser -u postgres -- touch "$data/recovery.signal"
pglog="$STACK/log/pg-deb-pitr.log"
t=$(date +%s)
log "PITR to '$TARGET_NAME' with restore_command = '$restore'"
# -w: `pg_ctl start -W` returns before the postmaster has written its pid file, and a `pg_ctl status`
# asked in that gap says "no server running" (CI once stopped here on a server that was starting).
# With -w pg_ctl returns once the server accepts connections (hot standby or promoted) or has died.
runuser -u postgres -- env PATH="$PG_SSH_WRAPPER_DIR:/usr/bin:/bin" \
    "$PG_BIN/pg_ctl" start -w -t "$RECOVERY_TIMEOUT" -D "$data" -l "$pglog" >/dev/null \
    || { tail -30 "$pglog" >&2; die "the PITR server did not start within ${RECOVERY_TIMEOUT}s (or died)"; }
q() {
    runuser -u postgres -- "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "$1" 2>/dev/null
}
end=$(( $(date +%s) + RECOVERY_TIMEOUT ))
until [[ $(q "SELECT pg_is_in_recovery()") == f ]]; do
    if (( $(date +%s) > end )) || ! runuser -u postgres -- "$PG_BIN/pg_ctl" status -D "$data" >/dev/null; then
        tail -30 "$pglog" >&2
        die "the PITR did not promote within ${RECOVERY_TIMEOUT}s (or the server died)"
    fi
    sleep 0.2   # poll interval of a bounded wait
done
rows=$(q "SELECT count(*) FROM $PG_TABLE")
[[ $rows == "$TARGET_ROWS" ]] || die "after the PITR: $rows rows, want $TARGET_ROWS (restore point $TARGET_NAME)"
grep -q "recovery stopping at restore point" "$pglog" || die "the server log does not show the restore point"
grep -q 'restored log file "0000000100000000000000' "$pglog" || die "the server log shows no restored segment"
bad=$(grep -E 'PANIC|FATAL|terminated by signal|could not restore file' "$pglog" \
    | grep -vE 'the database system is starting up|not yet accepting connections' || true)
[[ -z $bad ]] || die "the server log has failures: $bad"
log "PITR promoted with $rows rows in $(( $(date +%s) - t ))s ($(grep -c 'restored log file' "$pglog") files restored)"
bash fixtures/real-stack/stack.sh down "$STACK" >/dev/null 2>&1 || die "stack.sh down failed"
STACK=""

# ---- 5. remove, purge, nothing of ours left
# (dpkg -L also prints "package diverts others to: ..." lines: paths only)
mapfile -t ours < <(dpkg -L "$PKG" | grep '^/')
(( ${#ours[@]} > 5 )) || die "dpkg -L $PKG lists only ${#ours[@]} paths"
log "dpkg -r $PKG (${#ours[@]} paths listed)"
dpkg -r "$PKG" >/dev/null || die "dpkg -r $PKG failed"
dpkg -P "$PKG" >/dev/null || die "dpkg -P $PKG failed"
installed "$PKG" && die "$PKG still installed after dpkg -P"
[[ -z $(dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null | grep -v not-installed) ]] \
    || die "dpkg still knows $PKG: $(dpkg-query -W -f='${db:Status-Status}' "$PKG")"
compgen -G "/var/lib/dpkg/info/$PKG.*" >/dev/null && die "dpkg info files left: $(ls /var/lib/dpkg/info/$PKG.*)"
[[ -z $(our_diversions) ]] || die "diversions left: $(our_diversions)"
for p in "${ours[@]}"; do
    [[ $p == /. ]] && continue
    if [[ $p == "$CMD" || $p == "$MAN" ]]; then
        continue   # barman-cli's again, checked below
    elif [[ -d $p ]]; then
        # a directory may stay only as another package's (/usr/share/man/man1, ...)
        dpkg-query -S "$p" >/dev/null 2>&1 || die "directory $p left behind, owned by no package"
    elif [[ -e $p || -L $p ]]; then
        die "$p left behind after dpkg -P"
    fi
done
if (( with_cli )); then
    [[ $(md5 "$CMD") == $(shipped_md5 barman-cli "$CMD") ]] || die "$CMD is not barman-cli's again"
    [[ $(md5 "$MAN") == $(shipped_md5 barman-cli "$MAN") ]] || die "$MAN is not barman-cli's again"
    [[ ! -e $CMD_DIVERTED && ! -e $MAN_DIVERTED ]] || die "a *.barman-cli file is left behind"
    v=$("$CMD" --version 2>&1) || die "$CMD --version (barman-cli's) failed: $v"
    [[ $v != *"Rust implementation"* ]] || die "$CMD still says '$v'"
    log "the Python original is the command again: $v"
else
    [[ ! -e $CMD && ! -e $MAN ]] || die "$CMD or $MAN left behind"
fi

log "OK: built, installed beside barman-cli=$with_cli, PITR through $CMD, removed cleanly, in $(elapsed)"
