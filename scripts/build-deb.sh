#!/usr/bin/env bash
# Builds the Debian package barman-wal-restore-rs (Cargo.toml [package.metadata.deb]).
#
#   scripts/build-deb.sh [extra cargo-deb args...]
#
# 1. cargo-deb, pinned, installed from crates.io when missing or of another version (~2 min).
# 2. The man page and the bash/zsh/fish completions, generated from the CLI definition into
#    target/deb-assets/ under the source tree (where Cargo.toml's assets name them, whatever
#    CARGO_TARGET_DIR says).
# 3. cargo deb: release build of barman-wal-restore (not the bench), then the .deb, to which
#    DEBIAN/md5sums is added.
# Prints the path of the .deb as its last line of stdout.
set -euo pipefail

CARGO_DEB_VERSION=3.6.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[build-deb] %s\n' "$*" >&2; }

have=$(cargo deb --version 2>/dev/null || true)
if [[ $have != "cargo-deb $CARGO_DEB_VERSION" ]]; then
    log "installing cargo-deb $CARGO_DEB_VERSION (found: ${have:-none})"
    cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb >&2
fi

assets="$ROOT/target/deb-assets"
rm -rf "$assets"
log "generating the man page and completions into $assets"
cargo run --quiet --example gen-docs -- "$assets" >&2
for f in barman-wal-restore.1 completions/barman-wal-restore.bash completions/_barman-wal-restore \
    completions/barman-wal-restore.fish; do
    [[ -s $assets/$f ]] || { log "ERROR: gen-docs did not write $assets/$f"; exit 1; }
done

log "cargo deb $*"
out=$(cargo deb "$@")
deb=$(tail -n1 <<<"$out")
[[ -f $deb ]] || { log "ERROR: cargo deb did not report a package (output: $out)"; exit 1; }

# cargo-deb writes no DEBIAN/md5sums: add it (Debian policy; `dpkg --verify` and debsums read it)
# by unpacking the package and building it again with dpkg-deb.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -R "$deb" "$work/pkg"
(cd "$work/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$work/pkg/DEBIAN/md5sums"
chmod 0644 "$work/pkg/DEBIAN/md5sums"
dpkg-deb --root-owner-group -b "$work/pkg" "$deb" >/dev/null
log "built $deb ($(du -k "$deb" | cut -f1) KiB)"
echo "$deb"
