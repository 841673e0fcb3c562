//! What we print, and how: every line through one formatter, with its level
//! first as Barman prints it (`ERROR:`, `WARNING:`, `INFO:`, `DEBUG:`).
//!
//! The code emits `tracing` events at a level; which ones are printed is
//! decided here, once, from `--log-level`, `-q` and `-v` (see
//! [`crate::cli::RestoreArgs::log_level`]). On stderr (what PostgreSQL puts
//! in its log) a line is `LEVEL: message`; at the debug level, and always
//! in the `--async` worker's log, it starts with the local time and the
//! pid, as PostgreSQL's own lines do: `2026-12-03 10:00:00.123 [4242]
//! INFO: message`. The worker's log is rotated past [`WORKER_LOG_LIMIT`],
//! keeping one older file (`.1`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// `--log-level`: the least severe level printed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures only (what `-q` keeps)
    Error,
    /// And what went wrong but was worked around
    #[value(alias = "warn")]
    Warning,
    /// And what a DBA may want to know (the default)
    Info,
    /// And how each call got its file (what `-v` prints), with time and pid
    Debug,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warning => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
        }
    }
}

/// The worker's log is rotated when it would grow past this: it is for
/// reading the last incidents beside PostgreSQL's log, not an archive.
pub const WORKER_LOG_LIMIT: u64 = 1 << 20;

/// For tests only: `BARMAN_WAL_RESTORE_TEST_WORKER_LOG_BYTES` replaces
/// [`WORKER_LOG_LIMIT`], so that a test sees rotation without writing a
/// mebibyte of log.
const WORKER_LOG_LIMIT_VARIABLE: &str = "BARMAN_WAL_RESTORE_TEST_WORKER_LOG_BYTES";

/// Prints this process's events on stderr from `level` up; with time and
/// pid at the debug level.
pub fn to_stderr(level: LogLevel) {
    install(level, level == LogLevel::Debug, Sink::Stderr);
}

/// The `--async` worker: its events go to its log in the spool, always
/// with time and pid, and the log is rotated past its limit. The worker's
/// stderr (where a panic would be said) is pointed at the same file. If the
/// log cannot be opened, stderr is used as it is.
pub fn to_worker_log(path: &Path, level: LogLevel) {
    let sink = match RotatingLog::open(path, worker_log_limit(), true) {
        Ok(log) => Sink::Rotating(log),
        Err(_) => Sink::Stderr,
    };
    install(level, true, sink);
}

/// [`WORKER_LOG_LIMIT`], unless a test scaled it down.
pub fn worker_log_limit() -> u64 {
    std::env::var(WORKER_LOG_LIMIT_VARIABLE)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WORKER_LOG_LIMIT)
}

fn install(level: LogLevel, stamped: bool, sink: Sink) {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(Line { stamped })
        .with_writer(sink);
    let subscriber = tracing_subscriber::registry()
        .with(
            // Only our own events: a dependency that starts emitting
            // `tracing` events must not reach PostgreSQL's log.
            tracing_subscriber::filter::Targets::new()
                .with_target(env!("CARGO_CRATE_NAME"), level.filter()),
        )
        .with(layer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The one formatter.
struct Line {
    stamped: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut message = String::new();
        ctx.format_fields(format::Writer::new(&mut message), event)?;
        writer.write_str(&format_line(
            *event.metadata().level(),
            &message,
            self.stamped
                .then(|| (local_time(SystemTime::now()), std::process::id())),
        ))
    }
}

/// Barman's names for the levels.
fn label(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// `message` as lines that each carry the level (and the time and pid):
/// a message of several lines (`--test`'s description of the target) has
/// no line without one.
fn format_line(level: Level, message: &str, stamp: Option<(String, u32)>) -> String {
    let prefix = match stamp {
        Some((time, pid)) => format!("{time} [{pid}] {}: ", label(level)),
        None => format!("{}: ", label(level)),
    };
    let mut out = String::new();
    for line in message.trim_end().lines() {
        out.push_str(&prefix);
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(prefix.trim_end());
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in local time, as PostgreSQL's `%m` (without
/// the zone): the worker's log is read beside PostgreSQL's own. By hand
/// through libc: a date crate for one format is not worth it, and the
/// `time` crate refuses local offsets in a multi-threaded process.
fn local_time(at: SystemTime) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes into the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since_epoch.subsec_millis()
    )
}

/// Where formatted lines go.
enum Sink {
    Stderr,
    Rotating(RotatingLog),
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

/// One event's line(s), written with one call: lines of processes sharing
/// PostgreSQL's stderr do not interleave within a line.
struct SinkWriter<'a>(&'a Sink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0 {
            Sink::Stderr => io::stderr().lock().write_all(buf)?,
            Sink::Rotating(log) => log.append(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A log file that never grows past `limit` (but for one line): a line
/// that would take it past moves it to `PATH.1` (replacing the previous
/// one) and starts a new file.
pub struct RotatingLog {
    path: PathBuf,
    limit: u64,
    /// Point stderr (fd 2) at the current file as well.
    redirect_stderr: bool,
    file: Mutex<File>,
}

impl RotatingLog {
    pub fn open(path: &Path, limit: u64, redirect_stderr: bool) -> io::Result<RotatingLog> {
        let file = open_log(path)?;
        if redirect_stderr {
            point_stderr_at(&file);
        }
        Ok(RotatingLog {
            path: path.to_path_buf(),
            limit,
            redirect_stderr,
            file: Mutex::new(file),
        })
    }

    pub fn append(&self, line: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.limit {
            // Another process may have rotated it already (a worker and the
            // call starting the next one): only a file that is still ours
            // at PATH moves to .1.
            if is_same_file(&file, &self.path) {
                rotate(&self.path);
            }
            if let Ok(fresh) = open_log(&self.path) {
                if self.redirect_stderr {
                    point_stderr_at(&fresh);
                }
                *file = fresh;
            }
        }
        file.write_all(line)
    }
}

/// Moves the log at `path` to `PATH.1` if it is past `limit`: for the call
/// that starts a worker on an old log.
pub fn rotate_if_over(path: &Path, limit: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > limit) {
        rotate(path);
    }
}

fn rotate(path: &Path) {
    let mut old = path.as_os_str().to_os_string();
    old.push(".1");
    let _ = std::fs::rename(path, old);
}

/// Opens (or creates, owner-only) the worker's log for appending, never
/// through a symlink: the worker and the call that starts it alike.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn point_stderr_at(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 on two descriptors we hold; fd 2 stays open throughout.
    unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
}

/// How often a standby waiting at the archive's head says so.
pub const HEAD_NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// For tests only: `BARMAN_WAL_RESTORE_TEST_HEAD_NOTICE_SECS` replaces
/// [`HEAD_NOTICE_INTERVAL`], so that a test sees several intervals in
/// seconds.
const HEAD_NOTICE_VARIABLE: &str = "BARMAN_WAL_RESTORE_TEST_HEAD_NOTICE_SECS";

pub fn head_notice_interval() -> Duration {
    std::env::var(HEAD_NOTICE_VARIABLE)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(HEAD_NOTICE_INTERVAL)
}

/// Whether a notice that each process would repeat (every call of a
/// standby at the archive's head) is due: none was given in the last
/// `interval`, as the modification time of `stamp` remembers across
/// processes. A due notice renews the stamp. A stamp that cannot be read
/// or written lets the notice through: saying it too often beats hiding it.
pub fn notice_due(stamp: &Path, interval: Duration, now: SystemTime) -> bool {
    let recent = std::fs::symlink_metadata(stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| now.duration_since(at).ok())
        .is_some_and(|age| age < interval);
    if recent {
        return false;
    }
    // Truncating renews the modification time; O_NOFOLLOW: never through
    // a symlink.
    let _ = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(stamp)
        .and_then(|f| f.set_modified(now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_level_as_barman_names_it() {
        assert_eq!(format_line(Level::WARN, "x", None), "WARNING: x\n");
        assert_eq!(
            format_line(Level::INFO, "host 1\nport 22\n", None),
            "INFO: host 1\nINFO: port 22\n"
        );
        assert_eq!(
            format_line(
                Level::DEBUG,
                "x",
                Some(("2026-12-03 10:00:00.123".into(), 42))
            ),
            "2026-12-03 10:00:00.123 [42] DEBUG: x\n"
        );
        assert_eq!(format_line(Level::ERROR, "", None), "ERROR:\n");
    }

    #[test]
    fn local_time_has_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        let text = local_time(at);
        assert_eq!(text.len(), "2026-12-03 10:00:00.123".len(), "{text}");
        assert!(text.ends_with(".042"), "{text}");
    }

    #[test]
    fn the_log_rotates_past_its_limit_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = RotatingLog::open(&path, 1000, false).unwrap();
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..35 {
            log.append(&line).unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            assert!(size <= 1000, "{size} bytes");
        }
        let older = dir.path().join("log.1");
        assert_eq!(std::fs::metadata(&older).unwrap().len(), 1000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 500);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn a_notice_is_due_once_per_interval_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join(".stamp");
        let t0 = SystemTime::now();
        let minute = Duration::from_secs(60);
        assert!(notice_due(&stamp, minute, t0));
        assert!(!notice_due(&stamp, minute, t0 + Duration::from_secs(5)));
        assert!(!notice_due(&stamp, minute, t0 + Duration::from_secs(59)));
        assert!(notice_due(&stamp, minute, t0 + Duration::from_secs(61)));
        assert!(!notice_due(&stamp, minute, t0 + Duration::from_secs(62)));
    }

    #[test]
    fn a_stamp_that_cannot_be_written_lets_the_notice_through() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("missing-dir").join(".stamp");
        let now = SystemTime::now();
        assert!(notice_due(&stamp, Duration::from_secs(60), now));
        assert!(notice_due(&stamp, Duration::from_secs(60), now));
    }
}
