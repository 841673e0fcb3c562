//! What a run cost, for `barman-wal-bench`: written only when its
//! variable names a file, and read here because a parent's `wait4` may
//! count memory of the parent copied before `exec`, and never sees the
//! worker's.

use std::io::Write;

use crate::ssh::SessionStats;

/// `BARMAN_WAL_RESTORE_STATS=FILE` appends `connections channels refused
/// peak_rss_kib` of this call to FILE.
pub fn write_call_stats(stats: &SessionStats) {
    let Some(path) = std::env::var_os("BARMAN_WAL_RESTORE_STATS") else {
        return;
    };
    let (connections, channels, refused) = stats.snapshot();
    let peak_rss_kib = peak_rss_kib();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{connections} {channels} {refused} {peak_rss_kib}");
    }
}

/// `BARMAN_WAL_RESTORE_WORKER_STATS=FILE` gets `connections channels
/// refused peak_rss_kib cpu_seconds` of the `--async` worker when it
/// leaves.
pub fn write_worker_stats(stats: &SessionStats) {
    let Some(path) = std::env::var_os("BARMAN_WAL_RESTORE_WORKER_STATS") else {
        return;
    };
    let (connections, channels, refused) = stats.snapshot();
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    let line = format!(
        "{connections} {channels} {refused} {} {cpu:.3}\n",
        peak_rss_kib()
    );
    let _ = std::fs::write(path, line);
}

/// This process's peak resident set size, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
}
