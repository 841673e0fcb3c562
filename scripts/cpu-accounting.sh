# CPU accounting for the bench scripts (sourced, not run): who used the 2 CPUs during a step.
#
# Groups are cgroup v1 cpuacct groups under /sys/fs/cgroup/cpuacct, made only when that is
# writable (root, cgroup v1); without it every group reads as 0 and CG stays empty, so callers
# print the machine-wide figures alone. A process put in a group takes every child it starts.
#
#   cg_init GROUP...     make the groups (once)
#   cg_join GROUP PID    move a running process (e.g. the stack's main sshd) into GROUP
#   in_cg GROUP CMD...   run CMD inside GROUP
#   cg_usage GROUP...    CPU nanoseconds used by each group so far, space-separated
#   cg_cleanup           move everything back to the root group and remove the groups
#   cpu_jiffies          whole machine: busy and idle jiffies so far (user+nice+system+irq+softirq, idle+iowait)

CG=
CG_ROOT=/sys/fs/cgroup/cpuacct

cg_init() {
    [[ -w $CG_ROOT/cgroup.procs ]] && mkdir "$CG_ROOT/bwr-bench-$$" 2>/dev/null || return 0
    CG="$CG_ROOT/bwr-bench-$$"
    local g
    for g in "$@"; do mkdir "$CG/$g"; done
}

cg_join() {
    [[ -n $CG ]] || return 0
    echo "$2" >"$CG/$1/cgroup.procs"
}

in_cg() {
    if [[ -n $CG ]]; then
        bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' in_cg "$CG/$1" "${@:2}"
    else
        "${@:2}"
    fi
}

cg_usage() {
    local g out=()
    for g in "$@"; do
        if [[ -n $CG ]]; then out+=("$(<"$CG/$g/cpuacct.usage")"); else out+=(0); fi
    done
    echo "${out[*]}"
}

cg_cleanup() {
    [[ -n $CG ]] || return 0
    local g p try
    for g in "$CG"/*/; do
        # A process still exiting (the sshd session of a ControlMaster just
        # stopped) keeps the group busy for a moment: retry, for at most 2 s.
        for (( try = 0; try < 20; try++ )); do
            for p in $(cat "$g/cgroup.procs" 2>/dev/null); do
                echo "$p" >"$CG_ROOT/cgroup.procs" 2>/dev/null || true
            done
            rmdir "$g" 2>/dev/null && break
            sleep 0.1   # polling interval of a bounded wait
        done
    done
    rmdir "$CG" 2>/dev/null || true
}

cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
