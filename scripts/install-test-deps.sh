#!/usr/bin/env bash
# Installs what the real-stack tests need on Debian 12, as root, non-interactively, and skips what is
# already there: OpenSSH server, PostgreSQL 15, man, zsh and fish (the generated docs' tests), a Barman
# 3.19.x venv built from Debian's python3 at a world-readable place (users barman and postgres run it),
# with Barman's compression modules.
#
#   scripts/install-test-deps.sh          install / check
#   BWR_BARMAN_VENV=/path ...             another venv location (default /opt/bwr-test/barman-venv)
#
# Exit status non-zero if anything could not be installed.
set -euo pipefail

VENV=${BWR_BARMAN_VENV:-/opt/bwr-test/barman-venv}
BARMAN_SPEC='barman[lz4,snappy,zstandard]>=3.19,<3.20'
PGBIN=/usr/lib/postgresql/15/bin

log() { printf '[deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (apt-get, /opt, system users)"
[[ -r /etc/debian_version ]] || die "Debian (12) expected"

# ---- Debian packages
want=()
[[ -x /usr/sbin/sshd ]] || want+=(openssh-server)
[[ -x /usr/bin/ssh && -x /usr/bin/ssh-keygen ]] || want+=(openssh-client)
[[ -x $PGBIN/postgres && -x $PGBIN/pg_basebackup ]] || want+=(postgresql-15)
[[ -x /usr/bin/python3 ]] || want+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || want+=(python3-venv)
# psycopg2 (a Barman dependency) is built from source by pip:
command -v pg_config >/dev/null 2>&1 || want+=(libpq-dev)
[[ -n $(compgen -G '/usr/include/python3*/Python.h' || true) ]] || want+=(python3-dev)
command -v gcc >/dev/null 2>&1 || want+=(gcc)
command -v runuser >/dev/null 2>&1 || want+=(util-linux)
command -v cmp >/dev/null 2>&1 || want+=(diffutils)
# The generated man page and shell completions are checked in their programs (tests/generated_docs.rs).
command -v man >/dev/null 2>&1 || want+=(man-db)
command -v zsh >/dev/null 2>&1 || want+=(zsh)
command -v fish >/dev/null 2>&1 || want+=(fish)
# Debian's own Barman (3.4.0 on Debian 12), the second Barman of the real stack; python3-barman
# comes with barman-cli, which the Debian package test needs installed anyway.
/usr/bin/python3 -c 'import barman' 2>/dev/null || want+=(barman-cli)

if (( ${#want[@]} )); then
    log "apt-get install ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Services must not start on install (no init here; and never an sshd on 0.0.0.0:22).
    made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
    [[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi
[[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd still missing"
[[ -x $PGBIN/postgres ]] || die "PostgreSQL 15 still missing in $PGBIN"
id postgres >/dev/null 2>&1 || die "user postgres missing (comes with postgresql-common)"
mkdir -p /run/sshd && chmod 0755 /run/sshd

# ---- Barman venv
venv_ok() {
    [[ -x $VENV/bin/barman && -x $VENV/bin/barman-wal-restore ]] || return 1
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, zstandard, lz4.frame, snappy
v = m.version("barman")
assert v.startswith("3.19."), v
PY
}
if venv_ok; then
    log "Barman venv OK: $VENV ($("$VENV/bin/barman" --version 2>&1 | head -1))"
else
    log "creating Barman venv at $VENV"
    mkdir -p "$(dirname "$VENV")"
    # Debian's python3, not a per-user interpreter (pyenv under /root is unreadable for other users).
    [[ -x $VENV/bin/python ]] || /usr/bin/python3 -m venv "$VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q "$BARMAN_SPEC"
    venv_ok || die "Barman venv at $VENV is incomplete after pip install"
    log "Barman venv ready: $("$VENV/bin/barman" --version 2>&1 | head -1)"
fi
chmod -R a+rX "$VENV"
cd /
runuser -u postgres -- "$VENV/bin/python" -c 'import barman' \
    || die "user postgres cannot run $VENV (every directory above it must be world-searchable)"
log "all test dependencies present"
