//! `--async`: how a restore_command call and the background worker of its
//! spool talk, through files in the spool.
//!
//! The spool is already the one place both can read and write safely (ours
//! alone, checked by [`Spool::open`]), and files survive either side being
//! killed, so the protocol is files too:
//!
//! - `.bwr-worker.lock`: the worker holds an exclusive `flock` on it for its
//!   whole life, so there is never more than one per spool, and a caller can
//!   tell whether one runs without trusting a pid file.
//! - `.bwr-want.<token>`: a call that missed the spool asks for one segment.
//!   The token carries the caller's pid, so the worker drops the requests of
//!   callers that died.
//! - the segment itself under its final name, when the worker delivered it;
//!   or `.bwr-answer.<token>` when it could not: Barman's confirmed "not
//!   found" (the call exits 1 like a direct fetch would) or a failure (the
//!   call fetches the file itself, so `--async` never turns a restore that
//!   would have worked into a failure).
//! - `.bwr-worker.log`: the worker's stderr, for the DBA (and
//!   `.bwr-worker.log.1`, the one before: see [`crate::logging`]).
//!
//! The worker itself gets its settings from the call that starts it, on
//! its stdin (an [`Assignment`]).
//!
//! Every file is written under a temp name and renamed, like the segments.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Error;
use crate::spool::{Spool, TempFile};
use crate::wal::WalName;

use crate::spool::names::{
    ANSWER_PREFIX, WANT_PREFIX, WORKER_LOCK as LOCK_FILE, WORKER_LOG as LOG_FILE,
};

/// How often a waiting call looks for its file. A stat of one name: cheap
/// enough to keep the hand-over latency at a few milliseconds.
const CALL_POLL: Duration = Duration::from_millis(2);

/// How often a waiting call checks that a worker still holds the lock.
const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// How long a freshly started worker may take to take the lock before the
/// call stops counting on it.
const START_GRACE: Duration = Duration::from_secs(3);

/// How many workers one call starts (a worker killed while the call waits
/// is replaced once) before it fetches the file itself.
const STARTS_PER_CALL: u32 = 2;

/// A worker's answer to a request it could not fulfil with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Barman itself said it does not have the segment.
    Missing(String),
    /// Anything else: the call should try on its own.
    Failed(String),
}

impl Answer {
    fn encode(&self) -> String {
        match self {
            Answer::Missing(m) => format!("missing\n{m}\n"),
            Answer::Failed(m) => format!("failed\n{m}\n"),
        }
    }

    fn decode(text: &str) -> Option<Answer> {
        let (kind, message) = text.split_once('\n')?;
        let message = message.trim_end().to_string();
        match kind {
            "missing" => Some(Answer::Missing(message)),
            "failed" => Some(Answer::Failed(message)),
            _ => None,
        }
    }
}

/// One request as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub token: String,
    pub wal: WalName,
    /// The pid of the call that asked (0 if the token does not say).
    pub pid: i32,
}

/// Writes `text` to `dir/name` atomically.
fn write_file(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let (temp, mut file) = TempFile::create_in(dir, name)?;
    file.write_all(text.as_bytes())?;
    temp.commit(&file, &dir.join(name))
}

/// The pending requests in the spool, oldest first (by token: the
/// caller's clock, then pid).
pub fn pending_requests(spool: &Spool) -> Vec<Request> {
    let Ok(entries) = fs::read_dir(spool.dir()) else {
        return Vec::new();
    };
    let mut requests: Vec<(String, Request)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let token = name.to_str()?.strip_prefix(WANT_PREFIX)?.to_string();
            let text = fs::read_to_string(entry.path()).ok()?;
            let wal = WalName::parse(text.trim()).ok()?;
            let (nanos, pid) = token.split_once('-').unwrap_or(("", ""));
            let pid = pid.parse().unwrap_or(0);
            Some((nanos.to_string(), Request { token, wal, pid }))
        })
        .collect();
    requests.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.pid.cmp(&b.1.pid)));
    requests.into_iter().map(|(_, r)| r).collect()
}

/// Removes a request (and its answer) whose caller is gone.
pub fn drop_request(spool: &Spool, token: &str) {
    let _ = fs::remove_file(spool.dir().join(format!("{WANT_PREFIX}{token}")));
    let _ = fs::remove_file(spool.dir().join(format!("{ANSWER_PREFIX}{token}")));
}

pub fn answer(spool: &Spool, token: &str, answer: &Answer) -> std::io::Result<()> {
    write_file(
        spool.dir(),
        &format!("{ANSWER_PREFIX}{token}"),
        &answer.encode(),
    )
}

/// The worker's hold on its spool: dropping it releases the lock.
pub struct WorkerLock {
    _file: File,
}

/// Takes the worker lock of `spool`, trying for up to `patience` (a caller
/// checking liveness may hold it for an instant). `None`: another worker
/// runs.
pub fn lock_as_worker(spool: &Spool, patience: Duration) -> Option<WorkerLock> {
    let file = open_lock(spool)?;
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Some(WorkerLock { _file: file }),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

fn open_lock(spool: &Spool) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(spool.dir().join(LOCK_FILE))
        .ok()
}

/// Whether a worker holds the lock of `spool` now.
pub fn worker_running(spool: &Spool) -> bool {
    let Some(file) = open_lock(spool) else {
        return false;
    };
    // A shared lock is refused only while a worker holds the exclusive one;
    // ours is released when `file` drops, at once.
    file.try_lock_shared().is_err()
}

/// The first argument of a process started as a spool's worker. It reads
/// its [`Assignment`] from stdin; the rest of its command line is the
/// starting call's effective settings as a label for `ps` and the DBA,
/// never parsed.
pub const WORKER_FLAG: &str = "--async-worker";

/// The most of an assignment read: a few hundred bytes of settings.
const ASSIGNMENT_LIMIT: u64 = 1 << 20;

/// What a call hands the worker it starts, through the worker's stdin:
/// the call's resolved settings (its relative paths made absolute), and
/// what only that call knows. The worker takes them as they are: it reads
/// no settings file, no environment, no command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The segment to fetch before any request names one (a recovery's
    /// first, from its backup_label).
    pub first: Option<String>,
    /// The data directory of the PostgreSQL the worker serves (where the
    /// starting call ran), to tell a standby from an archive recovery and
    /// whose cluster the spool is for.
    pub data_dir: Option<PathBuf>,
    pub config: Config,
}

/// Whether this process was started as a spool's worker.
pub fn started_as_worker() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == WORKER_FLAG)
}

/// The worker's side: its assignment, from stdin.
pub fn read_assignment() -> Result<Assignment, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(format!(
            "{WORKER_FLAG} is started by a call with --async, not by hand"
        ));
    }
    let mut text = String::new();
    stdin
        .lock()
        .take(ASSIGNMENT_LIMIT)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the worker's settings: {e}"))?;
    toml::from_str(&text).map_err(|e| format!("unreadable worker settings: {e}"))
}

/// Starts a worker for this call's spool: this same program, given this
/// call's resolved settings on its stdin (its relative paths made absolute
/// against this call's working directory: the worker runs in `/`, so as
/// not to keep the data directory busy), in a session of its own (so
/// neither PostgreSQL's signals to its children nor a terminal reach it),
/// stdout and stderr to the spool's log.
pub fn start_worker(spool: &Spool, config: &Config, from: Option<&WalName>) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let here = std::env::current_dir().ok();
    let mut config = config.clone();
    if let Some(here) = &here {
        config.resolve_paths_against(here);
    }
    let assignment = Assignment {
        first: from.map(WalName::to_string),
        data_dir: here,
        config,
    };
    let text = toml::to_string(&assignment).map_err(std::io::Error::other)?;
    let log_path = spool.dir().join(LOG_FILE);
    // The worker rotates its log as it writes; an old one is rotated here.
    crate::logging::rotate_if_over(&log_path, crate::logging::worker_log_limit());
    let log = crate::logging::open_log(&log_path)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(WORKER_FLAG)
        .args(crate::config_file::worker_args())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe, which is all pre_exec asks.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The child is not waited for: when this call exits, init adopts it.
    // Its settings fit in the pipe's buffer: writing them never waits.
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("a piped stdin");
    stdin.write_all(text.as_bytes())
}

/// Starts a worker for `spool` unless one runs, without asking it for
/// anything yet, but for `from`, the segment it may start fetching. Best
/// effort: a worker that fails to start here is started again by the
/// first request.
pub fn start_worker_unless_running(spool: &Spool, config: &Config, from: Option<&WalName>) {
    if !worker_running(spool) {
        let _ = start_worker(spool, config, from);
    }
}

/// How a call's request to the worker ended.
#[derive(Debug)]
pub enum Handed {
    /// The segment is at WAL_DEST.
    Delivered,
    /// Barman does not have it.
    Missing(String),
    /// The worker could not help (not started, died, failed, or silent):
    /// the call should fetch the file itself.
    Unanswered(String),
}

/// A call's request: made on creation, withdrawn on drop.
struct Want<'a> {
    spool: &'a Spool,
    token: String,
}

impl<'a> Want<'a> {
    fn post(spool: &'a Spool, wal: &WalName) -> Result<Want<'a>, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!("{nanos:024}-{}", std::process::id());
        write_file(
            spool.dir(),
            &format!("{WANT_PREFIX}{token}"),
            &format!("{wal}\n"),
        )
        .map_err(|e| Error::io(format!("cannot ask the --async worker: {e}"), e))?;
        Ok(Want { spool, token })
    }

    fn answer_path(&self) -> PathBuf {
        self.spool
            .dir()
            .join(format!("{ANSWER_PREFIX}{}", self.token))
    }
}

impl Drop for Want<'_> {
    fn drop(&mut self) {
        drop_request(self.spool, &self.token);
    }
}

/// Asks the spool's worker for `wal` (starting one if none runs) and waits
/// up to `timeout` for the segment, then moves it to `dest`.
pub async fn ask_worker(
    spool: &Spool,
    config: &Config,
    wal: &WalName,
    dest: &Path,
    timeout: Duration,
) -> Result<Handed, Error> {
    let want = Want::post(spool, wal)?;
    let deadline = Instant::now() + timeout;
    let mut starts = 0;
    let mut started_at: Option<Instant> = None;
    let mut next_liveness = Instant::now();
    loop {
        if spool.take(wal, dest)? {
            return Ok(Handed::Delivered);
        }
        if let Ok(text) = fs::read_to_string(want.answer_path()) {
            match Answer::decode(&text) {
                Some(Answer::Missing(message)) => return Ok(Handed::Missing(message)),
                Some(Answer::Failed(message)) => return Ok(Handed::Unanswered(message)),
                None => {}
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Handed::Unanswered(format!(
                "no answer from the --async worker within {} s",
                timeout.as_secs()
            )));
        }
        if now >= next_liveness {
            next_liveness = now + LIVENESS_POLL;
            if !worker_running(spool) {
                let starting = started_at.is_some_and(|t| now.duration_since(t) < START_GRACE);
                if !starting {
                    if starts >= STARTS_PER_CALL {
                        return Ok(Handed::Unanswered("the --async worker does not run".into()));
                    }
                    if let Err(e) = start_worker(spool, config, None) {
                        return Ok(Handed::Unanswered(format!(
                            "cannot start the --async worker: {e}"
                        )));
                    }
                    starts += 1;
                    started_at = Some(now);
                }
            }
        }
        tokio::time::sleep(CALL_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_encoding() {
        for a in [
            Answer::Missing("WAL 0000 not found".into()),
            Answer::Failed("connection reset".into()),
        ] {
            assert_eq!(Answer::decode(&a.encode()), Some(a));
        }
        assert_eq!(Answer::decode("maybe\nx"), None);
    }

    #[test]
    fn requests_are_read_oldest_first_and_withdrawn_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let a = WalName::parse("000000010000000000000003").unwrap();
        let b = WalName::parse("000000010000000000000004").unwrap();
        let first = Want::post(&spool, &a).unwrap();
        let second = Want::post(&spool, &b).unwrap();
        let seen = pending_requests(&spool);
        assert_eq!(
            seen.iter().map(|r| r.wal.clone()).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(seen[0].pid, std::process::id() as i32);
        drop(first);
        drop(second);
        assert!(pending_requests(&spool).is_empty());
    }

    #[test]
    fn one_worker_lock_per_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        assert!(!worker_running(&spool));
        let held = lock_as_worker(&spool, Duration::ZERO).expect("free lock");
        assert!(worker_running(&spool));
        assert!(lock_as_worker(&spool, Duration::from_millis(30)).is_none());
        drop(held);
        assert!(!worker_running(&spool));
    }
}
