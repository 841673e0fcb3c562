#!/usr/bin/env bash
# Prints the commands of the README's first ```sh block, one per line, comments dropped: the main job
# on the embedded default, then the test command. .ci/run runs exactly these, so the commands a
# newcomer copies are the ones CI checks; the README is the one place that defines them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
commands=$(awk '/^```sh$/ { inside = 1; next } inside && /^```/ { exit } inside && NF && !/^#/' README.md)
count=$(printf '%s\n' "$commands" | grep -c .)
if [[ $count != 2 ]]; then
    echo "scripts/readme-commands.sh: the README's first sh block must hold 2 commands (main job, tests), found $count" >&2
    exit 1
fi
printf '%s\n' "$commands"
