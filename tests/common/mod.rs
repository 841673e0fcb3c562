//! Shared harness of the hermetic tests: the real `barman-wal-restore` binary
//! run as a subprocess against an [`EmbeddedBarman`] on 127.0.0.1.
//!
//! Every call passes `-F /dev/null -U barman --port PORT -i KEY --known-hosts
//! FILE`, so the invoking user's ssh setup plays no part, and every test has
//! its own [`Work`] directory (spool, `pg_wal/`). Waits are bounded deadline
//! loops on a condition, never a bare sleep.

// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_barman::{
    Archive, ArchiveSpec, BackgroundBarman, EmbeddedBarman, EmbeddedConfig, FaultRule, Faults,
    StoredCompression,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_barman-wal-restore");
/// Segment size of every test archive: small, so the suite stays fast.
pub const SEGMENT_SIZE: u64 = 1 << 20;
/// The statuses the binary may ever exit with outside archive recovery.
pub const ALLOWED: [i32; 6] = [0, 1, 2, 3, 130, 143];
/// The spool's own file names, as the binary spells them.
#[allow(unused_imports)] // each test binary uses some of them
pub use barman_wal_restore::spool::names::{is_bookkeeping, TEMP_PREFIX, WORKER_LOCK, WORKER_LOG};
/// The WAL_DEST name PostgreSQL uses.
pub const DEST_NAME: &str = "RECOVERYXLOG";
/// Upper bound of any single call; a call that runs longer is a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// First segment name of the default test archive.
pub const FIRST: &str = "000000010000000000000001";

/// An archive of `count` 1 MiB segments from [`FIRST`], no backup label.
pub fn spec(compression: StoredCompression, count: usize) -> ArchiveSpec {
    ArchiveSpec {
        first_segment: FIRST.to_string(),
        segment_count: count,
        segment_size: SEGMENT_SIZE,
        compression,
        backup_label: false,
        ..ArchiveSpec::default()
    }
}

/// Starts an embedded Barman serving `spec` with `faults`.
pub fn server_with(spec: ArchiveSpec, faults: Faults) -> BackgroundBarman {
    EmbeddedBarman::start_in_background(EmbeddedConfig {
        archive: spec,
        faults,
        ..EmbeddedConfig::default()
    })
    .expect("embedded Barman starts")
}

/// Faults made of these rules alone.
pub fn rules(rules: Vec<FaultRule>) -> Faults {
    Faults {
        rules,
        ..Faults::default()
    }
}

/// A fake PostgreSQL data directory (`work/data`) with the given signal
/// files: PostgreSQL runs restore_command there, and the call reads its
/// recovery mode from them.
pub fn data_dir(work: &Work, signals: &[&str]) -> PathBuf {
    let dir = work.path().join("data");
    fs::create_dir_all(&dir).unwrap();
    for signal in signals {
        fs::write(dir.join(signal), b"").unwrap();
    }
    dir
}

/// Starts an embedded Barman serving `spec`, no faults.
pub fn server(spec: ArchiveSpec) -> BackgroundBarman {
    server_with(spec, Faults::default())
}

/// The name `n` segments after [`FIRST`] (`seg(0) == FIRST`), 1 MiB segments.
pub fn seg(n: usize) -> String {
    // 1 MiB segments: 4096 per log id.
    let number = 1 + n as u64;
    format!("00000001{:08X}{:08X}", number / 4096, number % 4096)
}

/// A test's own directory: `spool/` (not created: the binary creates it)
/// and `pg_wal/` (created), beside whatever the test adds.
pub struct Work {
    pub dir: tempfile::TempDir,
    pub spool: PathBuf,
    pub pg_wal: PathBuf,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::Builder::new()
            .prefix("bwr-test")
            .tempdir()
            .expect("tempdir");
        let spool = dir.path().join("spool");
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir(&pg_wal).expect("pg_wal");
        Work { dir, spool, pg_wal }
    }

    /// `pg_wal/RECOVERYXLOG`, where PostgreSQL has restore_command write.
    pub fn dest(&self) -> PathBuf {
        self.pg_wal.join(DEST_NAME)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit status; 128+n after death by signal n.
    pub code: i32,
    pub signaled: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line that ran, for messages.
    pub command: String,
}

impl Outcome {
    /// The command, how it ended, its output (stdout cut at 2000 bytes): for a failure message.
    pub fn describe(&self) -> String {
        let mut cut = self.stdout.len().min(2000);
        while !self.stdout.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "`{}` -> exit {} after {:.2?}\n--- stdout: {}\n--- stderr:\n{}",
            self.command,
            self.code,
            self.elapsed,
            &self.stdout[..cut],
            self.stderr
        )
    }

    /// `Err` (saying what ran and how it ended) unless the exit status is `want`.
    pub fn check_code(&self, want: i32) -> Result<(), String> {
        if self.code == want {
            Ok(())
        } else {
            Err(format!("expected exit {want}, got:\n{}", self.describe()))
        }
    }

    /// The `ERROR:` lines of stderr (after the time and pid that `-v`
    /// puts in front).
    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .map(unstamped)
            .filter(|l| l.starts_with("ERROR:"))
            .collect()
    }

    /// Asserts exactly one `ERROR:` line, containing every `needle`.
    pub fn assert_one_error(&self, needles: &[&str]) {
        let errors = self.errors();
        assert_eq!(
            errors.len(),
            1,
            "expected one ERROR line, stderr:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                errors[0].contains(needle),
                "ERROR line lacks {needle:?}: {}",
                errors[0]
            );
        }
    }

    /// Asserts that stderr says `needle` somewhere (an INFO or WARNING line:
    /// how the call got its file).
    pub fn assert_says(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit status {} (expected {code}); stderr:\n{}",
            self.code, self.stderr
        );
    }
}

/// A line without the `2026-12-03 10:00:00.123 [4242] ` that the debug
/// level (`-v`) and the worker's log put before the level.
pub fn unstamped(line: &str) -> &str {
    let stamped = line.len() > 26
        && line.as_bytes()[..23]
            .iter()
            .enumerate()
            .all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                10 => *b == b' ',
                13 | 16 => *b == b':',
                19 => *b == b'.',
                _ => b.is_ascii_digit(),
            });
    let rest = if stamped {
        line[23..].strip_prefix(" [")
    } else {
        None
    };
    rest.and_then(|r| r.split_once("] "))
        .filter(|(pid, _)| pid.bytes().all(|b| b.is_ascii_digit()))
        .map_or(line, |(_, rest)| rest)
}

/// One invocation of the binary, built up like a command line.
#[derive(Clone)]
pub struct Call {
    connection: Vec<OsString>,
    options: Vec<OsString>,
    host: String,
    server: String,
    cwd: Option<PathBuf>,
    allow_abort: bool,
    timeout: Duration,
    env: Vec<(OsString, OsString)>,
}

impl Call {
    /// The base command line against `barman`, spool `work.spool`.
    pub fn new(barman: &EmbeddedBarman, work: &Work) -> Call {
        let connection: Vec<OsString> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-U".into(),
            "barman".into(),
            "--port".into(),
            barman.port().to_string().into(),
            "-i".into(),
            barman.client_key_path().into(),
            "--known-hosts".into(),
            barman.known_hosts_path().into(),
            "--spool-dir".into(),
            work.spool.clone().into(),
        ];
        Call {
            connection,
            options: Vec::new(),
            host: "127.0.0.1".to_string(),
            server: "angus".to_string(),
            cwd: None,
            allow_abort: false,
            timeout: CALL_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable of the call (by default the calls see
    /// no settings variable and no settings file: see [`spawn_argv`]).
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Call {
        self.env.push((name.into(), value.as_ref().to_os_string()));
        self
    }

    /// Adds options (after the connection options, before the positionals).
    pub fn args<I, S>(mut self, args: I) -> Call
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.options
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Replaces the value following `flag` in the connection options.
    pub fn set(mut self, flag: &str, value: impl AsRef<OsStr>) -> Call {
        let at = self
            .connection
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} is not a base option"));
        self.connection[at + 1] = value.as_ref().to_os_string();
        self
    }

    pub fn server_name(mut self, server: &str) -> Call {
        self.server = server.to_string();
        self
    }

    /// Runs in `dir` (PostgreSQL runs restore_command in its data directory).
    pub fn cwd(mut self, dir: &Path) -> Call {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Allows status 255 (only the archive-recovery policy may use it).
    pub fn allow_abort(mut self) -> Call {
        self.allow_abort = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = timeout;
        self
    }

    /// The full argument vector for `wal` and `dest`.
    pub fn argv(&self, wal: &str, dest: &Path) -> Vec<OsString> {
        let mut argv = self.connection.clone();
        argv.extend(self.options.iter().cloned());
        argv.push(self.host.clone().into());
        argv.push(self.server.clone().into());
        argv.push(wal.into());
        argv.push(dest.into());
        argv
    }

    /// Starts the binary for `wal` into `dest`.
    pub fn spawn(&self, wal: &str, dest: &Path) -> Running {
        spawn_argv(
            &self.argv(wal, dest),
            self.cwd.as_deref(),
            self.allow_abort,
            self.timeout,
            &self.env,
        )
    }

    /// Runs the binary for `wal` into `dest` and waits (bounded).
    pub fn run(&self, wal: &str, dest: &Path) -> Outcome {
        self.spawn(wal, dest).wait()
    }
}

/// Runs the binary with exactly `argv` (for argument-order tests).
pub fn run_argv<S: AsRef<OsStr>>(argv: &[S]) -> Outcome {
    let argv: Vec<OsString> = argv.iter().map(|a| a.as_ref().to_os_string()).collect();
    spawn_argv(&argv, None, false, CALL_TIMEOUT, &[]).wait()
}

fn spawn_argv(
    argv: &[OsString],
    cwd: Option<&Path>,
    allow_abort: bool,
    timeout: Duration,
    env: &[(OsString, OsString)],
) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(argv)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RUST_LOG");
    // Hermetic: neither this machine's /etc/barman-wal-restore.conf nor
    // the test runner's settings variables play a part, unless the test
    // sets them.
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .starts_with("BARMAN_WAL_RESTORE_OPT_")
        {
            command.env_remove(name);
        }
    }
    command.env("BARMAN_WAL_RESTORE_OPT_CONFIG_FILE", "none");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut running = Running::start(&mut command, timeout).expect("the binary starts");
    running.allow_abort = allow_abort;
    running
}

/// `program arg...` as one line, for messages.
pub fn describe_command(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn reader<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A call in progress.
pub struct Running {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
    allow_abort: bool,
    timeout: Duration,
    command: String,
}

impl Running {
    /// Starts `command` (stdin closed, stdout and stderr collected) to run for at most
    /// `timeout`; neither its arguments nor its environment are touched.
    pub fn start(command: &mut Command, timeout: Duration) -> std::io::Result<Running> {
        let line = describe_command(command);
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = reader(child.stdout.take().expect("stdout piped"));
        let stderr = reader(child.stderr.take().expect("stderr piped"));
        Ok(Running {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            started,
            allow_abort: false,
            timeout,
            command: line,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Whether it has exited (without reaping it for [`Running::wait`]).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL now (nothing happens if it has already ended); [`Running::finish`] still
    /// reports how it ended.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the end, whatever the status; `Err` if it outlived its timeout (it is killed
    /// then): for commands other than the binary under test, and callers that must clean up.
    pub fn finish(mut self) -> Result<Outcome, String> {
        self.wait_bounded().map_err(|_| {
            format!(
                "`{}` did not finish within {:?} (killed)",
                self.command, self.timeout
            )
        })
    }

    /// Waits (bounded by the call's timeout) and checks the status is one
    /// the binary may use; death by SIGKILL is the caller's business.
    pub fn wait(mut self) -> Outcome {
        let outcome = self.wait_raw();
        let allowed = ALLOWED.contains(&outcome.code)
            || (self.allow_abort && outcome.code == 255)
            || outcome.signaled == Some(libc::SIGKILL);
        assert!(
            allowed,
            "exit status {} is not one barman-wal-restore may use; stderr:\n{}",
            outcome.code, outcome.stderr
        );
        outcome
    }

    fn wait_raw(&mut self) -> Outcome {
        match self.wait_bounded() {
            Ok(outcome) => outcome,
            Err(stderr) => panic!(
                "the call did not end within {:?} (a hang); stderr:\n{stderr}",
                self.timeout
            ),
        }
    }

    /// The outcome, or (after killing it at its timeout) its stderr.
    fn wait_bounded(&mut self) -> Result<Outcome, String> {
        let deadline = self.started + self.timeout;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    return Err(stderr.unwrap_or_default());
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
        let signaled = status.signal();
        Ok(Outcome {
            code: status.code().unwrap_or_else(|| 128 + signaled.unwrap_or(0)),
            signaled,
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
            elapsed,
            command: self.command.clone(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A panicking test must not leave the binary running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `condition` holds, polling for at most `limit`; false if it
/// never did.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let waited = poll(limit, Duration::from_millis(2), || {
        Ok::<_, std::convert::Infallible>(condition().then_some(()))
    });
    matches!(waited, Ok(Some(())))
}

/// Polls `probe` every `every` until it yields a value, for at most `limit`:
/// `Ok(None)` if it never did. An `Err` from the probe ends the wait at once
/// (the thing waited for can no longer happen).
pub fn poll<T, E>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe()? {
            return Ok(Some(value));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// The offset of the first byte where `a` and `b` differ (the shorter length
/// if one is a prefix of the other).
pub fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// `Err` unless the file `got` holds exactly the bytes of the file `want`;
/// says where they part, without printing megabytes.
pub fn compare_files(got: &Path, want: &Path) -> Result<(), String> {
    let g = fs::read(got).map_err(|e| format!("{}: {e}", got.display()))?;
    let w = fs::read(want).map_err(|e| format!("{}: {e}", want.display()))?;
    if g == w {
        return Ok(());
    }
    Err(format!(
        "{} differs from {}: {} vs {} bytes, first difference at offset {}",
        got.display(),
        want.display(),
        g.len(),
        w.len(),
        first_difference(&g, &w)
    ))
}

/// Asserts the file at `path` holds exactly `expected`, without printing
/// megabytes on failure.
pub fn assert_bytes(path: &Path, expected: &[u8]) {
    let actual = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if actual != expected {
        let first_diff = first_difference(&actual, expected);
        panic!(
            "{}: {} bytes, expected {}; first difference at offset {first_diff}",
            path.display(),
            actual.len(),
            expected.len()
        );
    }
}

/// The raw content of `name` in `archive` (see [`Archive::raw_file`]).
/// Segments are generated once per process: their bytes depend only on
/// (system identifier, segment size, name), and generating one takes tens
/// of milliseconds in a debug build.
pub fn raw(archive: &Archive, name: &str) -> Option<Arc<Vec<u8>>> {
    type Cache = Mutex<std::collections::HashMap<(u64, u64, String), Arc<Vec<u8>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let is_segment = barman_wal_restore::wal::WalName::parse(name).is_ok_and(|w| w.is_segment());
    if !is_segment {
        return archive.raw_file(name).map(Arc::new);
    }
    let key = (
        archive.spec().system_identifier,
        archive.segment_size(),
        name.to_string(),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(bytes) = cache.lock().unwrap().get(&key) {
        return Some(bytes.clone());
    }
    let bytes = Arc::new(archive.raw_segment(name)?);
    cache.lock().unwrap().insert(key, bytes.clone());
    Some(bytes)
}

/// Asserts WAL_DEST holds the raw content of `wal`.
pub fn assert_delivered(archive: &Archive, dest: &Path, wal: &str) {
    let raw = raw(archive, wal).unwrap_or_else(|| panic!("{wal} has no content in this archive"));
    assert_bytes(dest, &raw);
}

/// File names in `dir` (empty if it does not exist), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !is_bookkeeping(n))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Temp files (`.bwr-tmp.*`) in `dir`.
pub fn temps(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

/// What a directory holds, judged against the archive.
#[derive(Debug, Default)]
pub struct Audit {
    /// Final-named files whose bytes are right.
    pub complete: Vec<String>,
    /// Temp files (`.bwr-tmp.*`).
    pub temps: Vec<String>,
    /// Final-named files with wrong bytes, or files that should not exist.
    pub bad: Vec<String>,
}

/// Checks every file in `dir`: a WAL-named file must hold that WAL's raw
/// bytes; `dest` (if given, as (path, WAL requested)) must hold the raw
/// bytes of the WAL requested; temp files are listed apart.
pub fn audit(dir: &Path, archive: &Archive, dest: Option<(&Path, &str)>) -> Audit {
    audit_against(dir, dest, |wal| raw(archive, wal))
}

/// [`audit`] against another source of truth: `expected(name)` is the raw
/// content of the WAL `name`, `None` if there is no such WAL.
pub fn audit_against(
    dir: &Path,
    dest: Option<(&Path, &str)>,
    expected: impl Fn(&str) -> Option<Arc<Vec<u8>>>,
) -> Audit {
    let mut audit = Audit::default();
    for name in names(dir) {
        let path = dir.join(&name);
        if name.starts_with(TEMP_PREFIX) {
            audit.temps.push(name);
            continue;
        }
        let expected = match dest {
            Some((dest_path, wal)) if dest_path == path => expected(wal),
            _ => expected(&name),
        };
        match (expected, fs::read(&path)) {
            (Some(expected), Ok(actual)) if *expected == actual => audit.complete.push(name),
            (Some(expected), Ok(actual)) => audit.bad.push(format!(
                "{name}: {} bytes, expected {}{}",
                actual.len(),
                expected.len(),
                if actual.len() == expected.len() {
                    " (same size, other bytes)"
                } else {
                    ""
                }
            )),
            (None, _) => audit
                .bad
                .push(format!("{name}: not a file of this archive")),
            (_, Err(e)) => audit.bad.push(format!("{name}: unreadable: {e}")),
        }
    }
    audit
}

/// Asserts that `dir` holds only complete, correct files (and no temp files).
pub fn assert_clean(dir: &Path, archive: &Archive, dest: Option<(&Path, &str)>) -> Vec<String> {
    let audit = audit(dir, archive, dest);
    assert!(
        audit.bad.is_empty(),
        "{}: final names holding wrong or partial data: {:?}",
        dir.display(),
        audit.bad
    );
    assert!(
        audit.temps.is_empty(),
        "{}: temp files left behind: {:?}",
        dir.display(),
        audit.temps
    );
    audit.complete
}

/// Outcome counts for the fault-matrix summary printed by each test.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<String, usize>,
    codes: BTreeMap<i32, usize>,
    iterations: usize,
}

impl Tally {
    pub fn new() -> Tally {
        Tally::default()
    }

    /// Counts one call's exit status (and, if non-empty, an outcome label).
    pub fn code(&mut self, code: i32) {
        *self.codes.entry(code).or_default() += 1;
    }

    pub fn note(&mut self, label: impl Into<String>) {
        *self.counts.entry(label.into()).or_default() += 1;
    }

    pub fn iteration(&mut self) {
        self.iterations += 1;
    }

    pub fn codes(&self) -> &BTreeMap<i32, usize> {
        &self.codes
    }

    pub fn count(&self, label: &str) -> usize {
        self.counts.get(label).copied().unwrap_or(0)
    }

    /// Prints `FAULT-MATRIX | fault | iterations | exit codes | outcomes`
    /// (visible with `--nocapture`), for docs/.
    pub fn print(&self, fault: &str) {
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(c, n)| format!("exit {c}: {n}"))
            .collect();
        let outcomes: Vec<String> = self
            .counts
            .iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect();
        let iterations = if self.iterations > 0 {
            self.iterations
        } else {
            self.codes.values().sum()
        };
        eprintln!(
            "FAULT-MATRIX | {fault} | {iterations} iterations | {} | {}",
            codes.join(", "),
            outcomes.join(", ")
        );
    }
}

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "3m") on a new directory under `parent`.
    /// `Err` says why it could not (not root, no CAP_SYS_ADMIN).
    pub fn mount(parent: &Path, size: &str) -> Result<Tmpfs, String> {
        let dir = parent.join("tmpfs");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy: detach it so the tempdir can go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a missing prerequisite must fail the run instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// The `--async` worker's log in the spool.
pub fn worker_log(work: &Work) -> String {
    worker_log_in(&work.spool)
}

/// The `--async` worker's log in `spool` (empty if there is none).
pub fn worker_log_in(spool: &Path) -> String {
    std::fs::read_to_string(spool.join(WORKER_LOG)).unwrap_or_default()
}

/// Pids of the workers that took the spool's lock, in order: the log's
/// "worker PID serves spool" lines.
pub fn worker_pids(work: &Work) -> Vec<i32> {
    worker_log(work)
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(" worker ")?.1;
            let (pid, tail) = rest.split_once(' ')?;
            tail.starts_with("serves spool").then(|| pid.parse().ok())?
        })
        .collect()
}
