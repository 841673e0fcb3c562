//! Measurement: runs restore_command calls one after another, each a new
//! process as PostgreSQL makes them, and records what each cost.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use barman_wal_restore::wal::WalName;

/// One restore_command to measure, with its argument list ready but for
/// the WAL name, destination and spool.
#[derive(Debug, Clone)]
pub enum Program {
    /// Our binary: `program args... WAL DEST`, with `--spool-dir` set.
    Ours { bin: PathBuf, args: Vec<String> },
    /// Any command line, through `sh -c`, placeholders substituted.
    Template(String),
}

/// One combination of the settings being compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub parallel: usize,
    pub keep_compression: bool,
    /// Ours only: `--direct-read`.
    pub direct_read: bool,
    /// Ours only: `--async`.
    pub async_mode: bool,
    /// The round trip the relay adds (`--rtt`), 0 for none.
    pub rtt_ms: u64,
    /// How many restore sequences run at once (`--clients`), each its own
    /// standby with its own spool and destination.
    pub clients: usize,
}

/// How long the `--async` worker may take to leave once the run's spool is
/// removed (it checks every few milliseconds).
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(10);

/// What an `--async` worker reported when it left: its own costs, which
/// no call's `wait4` sees.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerRecord {
    pub connections: u64,
    pub channels: u64,
    pub cpu_seconds: f64,
    pub max_rss_kib: u64,
}

/// The calls of one setting, and the worker's costs if one ran.
#[derive(Debug, Clone)]
pub struct Run {
    /// From the first call's start to the last call's end (not counting
    /// the wait for the worker to leave).
    pub wall_seconds: f64,
    pub records: Vec<CallRecord>,
    pub worker: Option<WorkerRecord>,
}

/// What one call did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallRecord {
    pub wal: String,
    pub status: i32,
    pub seconds: f64,
    /// The file was in the spool before the call.
    pub spool_hit: bool,
    pub cpu_seconds: f64,
    pub max_rss_kib: u64,
    pub bytes: u64,
    /// Our binary's own count of connections and channels (none for others).
    pub connections: Option<u64>,
    pub channels: Option<u64>,
    /// The bytes differ from the first run's.
    pub mismatch: bool,
    /// The last stderr line of a failed call.
    pub error: Option<String>,
}

/// Digests of what the first run delivered: every later run must match.
#[derive(Debug, Default)]
pub struct Oracle {
    digests: HashMap<String, u128>,
}

impl Oracle {
    /// Records or checks a digest; `true` when it differs from the record.
    /// Shared by concurrent clients, hence the lock.
    fn check(this: &std::sync::Mutex<Oracle>, wal: &str, digest: u128) -> bool {
        let mut this = this.lock().unwrap_or_else(|e| e.into_inner());
        match this.digests.get(wal) {
            Some(known) => *known != digest,
            None => {
                this.digests.insert(wal.to_string(), digest);
                false
            }
        }
    }
}

/// The digest runs between two calls, on the clock of the catch-up being
/// measured: XXH3-128 rather than a cryptographic hash, an order of
/// magnitude slower (docs/benchmarks.md) and time no restore_command
/// caused. It guards against a wrong or
/// corrupt delivery, not against an adversary.
fn digest_file(path: &Path) -> std::io::Result<(u128, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.digest128(), total))
}

fn shell_quote(s: &str) -> String {
    barman_wal_restore::remote::shell_quote(s)
}

/// Replaces each `%X` of `template` for which `value(X)` gives a value; any
/// other `%X` (and `%%`, unless `value('%')` says otherwise) stays as it is.
fn substitute(template: &str, value: impl Fn(char) -> Option<String>) -> String {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(x) => match value(x) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('%');
                    out.push(x);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

/// Substitutes the template's placeholders (`%f %p %s %j %k %%`).
pub fn expand_template(
    template: &str,
    wal: &str,
    dest: &Path,
    spool: &Path,
    parallel: usize,
    keep: bool,
) -> String {
    substitute(template, |x| match x {
        'f' => Some(shell_quote(wal)),
        'p' => Some(shell_quote(&dest.to_string_lossy())),
        's' => Some(shell_quote(&spool.to_string_lossy())),
        'j' => Some(parallel.to_string()),
        'k' => Some(if keep { "--keep-compression" } else { "" }.to_string()),
        '%' => Some("%".to_string()),
        _ => None,
    })
}

/// Where the compared command connects, and with what: the same as ours.
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The identity file ours is given (`-i`), if any.
    pub identity: Option<&'a str>,
    /// The known_hosts file ours is given (the relay's under `--rtt`).
    pub known_hosts: Option<&'a str>,
}

/// Substitutes `%H` and `%P`, where the compared command connects (the
/// relay's address under `--rtt`/`--bandwidth`), and `%i` and `%K`, the
/// identity and known_hosts files ours uses there (so that an OpenSSH
/// client can reach the embedded Barman too); the other placeholders are
/// left for [`expand_template`], call by call. `%i` or `%K` where ours has
/// none is an error, not an empty word.
pub fn expand_endpoint(template: &str, at: &Endpoint<'_>) -> Result<String, String> {
    let missing = std::cell::Cell::new(None);
    let expanded = substitute(template, |x| match x {
        'H' => Some(shell_quote(at.host)),
        'P' => Some(at.port.to_string()),
        'i' | 'K' => {
            let file = if x == 'i' {
                at.identity
            } else {
                at.known_hosts
            };
            if file.is_none() {
                missing.set(Some(x));
            }
            Some(shell_quote(file.unwrap_or_default()))
        }
        _ => None,
    });
    match missing.get() {
        Some('i') => Err("--compare uses %i, but ours is given no identity file (-i)".into()),
        Some(_) => Err("--compare uses %K, but ours is given no --known-hosts".into()),
        None => Ok(expanded),
    }
}

/// Runs one process and waits for it with `wait4`, which gives its CPU
/// time and peak RSS (std's `wait` does not).
fn run_measured(mut command: Command) -> std::io::Result<(i32, Duration, f64, u64, String)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn()?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain syscall on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Ok((code, elapsed, cpu, usage.ru_maxrss as u64, stderr))
}

/// Runs a call for each of `names`, in a fresh spool and destination under
/// `work`, as PostgreSQL would: one after another, each a new process,
/// `replay` apart (the time PostgreSQL would spend replaying a segment).
pub fn run_calls(
    program: &Program,
    names: &[WalName],
    work: &Path,
    setting: Setting,
    replay: Duration,
    oracle: &std::sync::Mutex<Oracle>,
    progress: &(dyn Fn() + Sync),
) -> std::io::Result<Run> {
    let (parallel, keep) = (setting.parallel, setting.keep_compression);
    let run_dir = tempfile::Builder::new().prefix("bench-").tempdir_in(work)?;
    let spool = run_dir.path().join("spool");
    let dest_dir = run_dir.path().join("pg_wal");
    std::fs::create_dir(&dest_dir)?;
    let dest = dest_dir.join("RECOVERYXLOG");
    let stats_file = run_dir.path().join("stats");
    let worker_stats = run_dir.path().join("stats.worker");
    let mut records = Vec::with_capacity(names.len());
    let started = Instant::now();
    for (i, wal) in names.iter().enumerate() {
        if i > 0 && !replay.is_zero() {
            std::thread::sleep(replay);
        }
        let spool_hit = spool.join(wal.as_str()).exists();
        let _ = std::fs::remove_file(&stats_file);
        let command = match program {
            Program::Ours { bin, args } => {
                let mut c = Command::new(bin);
                c.args(args)
                    .args(setting.direct_read.then_some("--direct-read"))
                    .args(setting.async_mode.then_some("--async"))
                    .arg("-p")
                    .arg(parallel.to_string())
                    .arg(if keep {
                        "--keep-compression"
                    } else {
                        "--no-keep-compression"
                    })
                    .arg("--spool-dir")
                    .arg(&spool)
                    .arg(wal.as_str())
                    .arg(&dest)
                    .env("BARMAN_WAL_RESTORE_STATS", &stats_file)
                    .env("BARMAN_WAL_RESTORE_WORKER_STATS", &worker_stats);
                c
            }
            Program::Template(template) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(expand_template(
                    template,
                    wal.as_str(),
                    &dest,
                    &spool,
                    parallel,
                    keep,
                ));
                c
            }
        };
        let (status, elapsed, cpu, rss, stderr) = run_measured(command)?;
        let (connections, channels, own_rss) = match std::fs::read_to_string(&stats_file) {
            Ok(text) => {
                let n: Vec<u64> = text
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                (n.first().copied(), n.get(1).copied(), n.get(3).copied())
            }
            Err(_) => (None, None, None),
        };
        let (mismatch, bytes) = if status == 0 {
            match digest_file(&dest) {
                Ok((digest, bytes)) => (Oracle::check(oracle, wal.as_str(), digest), bytes),
                Err(_) => (true, 0),
            }
        } else {
            (false, 0)
        };
        // PostgreSQL too unlinks the previous RECOVERYXLOG before each call.
        let _ = std::fs::remove_file(&dest);
        records.push(CallRecord {
            wal: wal.to_string(),
            status,
            seconds: elapsed.as_secs_f64(),
            spool_hit,
            cpu_seconds: cpu,
            max_rss_kib: own_rss.unwrap_or(rss),
            bytes,
            connections,
            channels,
            mismatch,
            error: (status != 0).then(|| stderr.lines().last().unwrap_or("").to_string()),
        });
        progress();
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let worker = setting
        .async_mode
        .then(|| stop_worker(&spool, &worker_stats))
        .flatten();
    Ok(Run {
        wall_seconds,
        records,
        worker,
    })
}

/// `setting.clients` sequences of [`run_calls`] at once, as that many
/// standbys would fetch from one Barman; one [`Run`] of all their calls,
/// whose wall time is the slowest's.
pub fn run_clients(
    program: &Program,
    names: &[WalName],
    work: &Path,
    setting: Setting,
    replay: Duration,
    oracle: &std::sync::Mutex<Oracle>,
    progress: &(dyn Fn() + Sync),
) -> std::io::Result<Run> {
    if setting.clients <= 1 {
        return run_calls(program, names, work, setting, replay, oracle, progress);
    }
    let runs: Vec<std::io::Result<Run>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..setting.clients)
            .map(|_| {
                scope.spawn(|| run_calls(program, names, work, setting, replay, oracle, progress))
            })
            .collect();
        clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a client thread panicked")))
            })
            .collect()
    });
    let mut all = Run {
        wall_seconds: 0.0,
        records: Vec::new(),
        worker: None,
    };
    for run in runs {
        let run = run?;
        all.wall_seconds = all.wall_seconds.max(run.wall_seconds);
        all.records.extend(run.records);
        if let Some(w) = run.worker {
            let sum = all.worker.get_or_insert_with(WorkerRecord::default);
            sum.connections += w.connections;
            sum.channels += w.channels;
            sum.cpu_seconds += w.cpu_seconds;
            sum.max_rss_kib = sum.max_rss_kib.max(w.max_rss_kib);
        }
    }
    Ok(all)
}

/// CPU seconds a cgroup has used so far: `cpuacct.usage` (v1, ns) or
/// `cpu.stat`'s `usage_usec` (v2).
pub fn cgroup_cpu_seconds(dir: &Path) -> std::io::Result<f64> {
    if let Ok(text) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        let ns: u64 = text.trim().parse().map_err(std::io::Error::other)?;
        return Ok(ns as f64 / 1e9);
    }
    let text = std::fs::read_to_string(dir.join("cpu.stat"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us as f64 / 1e6)
        .ok_or_else(|| std::io::Error::other("no usage_usec in cpu.stat"))
}

/// Removes the run's spool, which makes its `--async` worker leave, and
/// reads what the worker wrote on its way out.
fn stop_worker(spool: &Path, stats: &Path) -> Option<WorkerRecord> {
    let deadline = Instant::now() + WORKER_EXIT_WAIT;
    loop {
        // The worker may create a temp file while the directory is being
        // emptied (remove_dir_all then fails): try again until it is gone.
        if spool.exists() {
            let _ = std::fs::remove_dir_all(spool);
        }
        if let Ok(text) = std::fs::read_to_string(stats) {
            let n: Vec<f64> = text
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if n.len() >= 5 && !spool.exists() {
                return Some(WorkerRecord {
                    connections: n[0] as u64,
                    channels: n[1] as u64,
                    max_rss_kib: n[3] as u64,
                    cpu_seconds: n[4],
                });
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Bounded wait for a file another process writes as it exits.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_and_quote() {
        let s = expand_template(
            "bwr -p %j %k --spool-dir %s h s %f %p 100%%",
            "000000010000000000000001",
            Path::new("/d/RECOVERYXLOG"),
            Path::new("/tmp/it's"),
            8,
            true,
        );
        assert_eq!(
            s,
            "bwr -p 8 --keep-compression --spool-dir '/tmp/it'\\''s' h s '000000010000000000000001' '/d/RECOVERYXLOG' 100%"
        );
    }

    #[test]
    fn the_endpoint_is_substituted_first_and_the_rest_left_for_each_call() {
        let at = Endpoint {
            host: "127.0.0.1",
            port: 7000,
            identity: Some("/k/id"),
            known_hosts: Some("/k/known hosts"),
        };
        let s = expand_endpoint("ID=%i KH=%K ssh-wrap --port %P %H s %f %p 100%%", &at).unwrap();
        assert_eq!(
            s,
            "ID='/k/id' KH='/k/known hosts' ssh-wrap --port 7000 '127.0.0.1' s %f %p 100%%"
        );
        let bare = Endpoint {
            identity: None,
            ..at
        };
        assert!(expand_endpoint("x %i", &bare).unwrap_err().contains("%i"));
        assert_eq!(expand_endpoint("x %P", &bare).unwrap(), "x 7000");
    }
}
