//! Real-stack integration tests: our `barman-wal-restore` against a real OpenSSH sshd, Barman 3.19
//! (one config per archive compression, each with server `angus`) and PostgreSQL 15, all on
//! 127.0.0.1, built by `fixtures/real-stack/stack.sh` once for all trials and torn down at the end
//! (a watchdog in the stack tears it down too if this process dies).
//!
//! Needs root, /usr/sbin/sshd, PostgreSQL 15 and the Barman venv (`scripts/install-test-deps.sh`).
//! Environment:
//! - `CI=true` or `BWR_REAL_STACK=require`: a missing prerequisite fails every trial.
//! - otherwise a missing prerequisite skips every trial (reported as ignored, with a loud message);
//!   `BWR_REAL_STACK=skip` skips on purpose (never under CI).
//! - `BWR_KEEP_STACK=1`: keep the stack directory (logs, archives, clusters) after the run.
//! - `BWR_BARMAN_VENV`: Barman venv (default /opt/bwr-test/barman-venv).
//! - `BWR_STACK_BASE`: where the stack directory is made (default /tmp; must be reachable by
//!   the users postgres and barman).
//! - `BWR_STACK_DIR=DIR`: use a stack already up (`stack.sh up DIR`) and leave it up.
//! - `BWR_TIMINGS=1`: print every trial's duration at the end (default: the 8 slowest).
//!
//! Runs with `harness = false` (libtest-mimic): `cargo test --test real_stack -- FILTER`.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_barman-wal-restore");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const SERVER: &str = "angus";
const HOST: &str = "127.0.0.1";
/// Upper bound for one client call (a hang is a failure, not a stuck suite).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one PostgreSQL recovery to reach its goal.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(240);
const COMPRESSIONS: [&str; 7] = ["none", "gzip", "bzip2", "xz", "zstd", "lz4", "snappy"];
/// WAL_DEST as PostgreSQL passes it (%p, relative to the data directory).
const DEST: &str = "pg_wal/RECOVERYXLOG";

type TestResult = Result<(), Failed>;

#[path = "real_stack/logging.rs"]
mod logging_trials;
#[path = "real_stack/ssh_config.rs"]
mod ssh_config_trials;

fn fail(msg: impl Into<String>) -> Failed {
    msg.into().into()
}

// ------------------------------------------------------------------------------------------------
// Prerequisites

fn env_is(name: &str, values: &[&str]) -> bool {
    std::env::var(name)
        .map(|v| values.contains(&v.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn required() -> bool {
    env_is("CI", &["true", "1", "yes"]) || env_is("BWR_REAL_STACK", &["require", "required", "1"])
}

fn barman_venv() -> PathBuf {
    std::env::var_os("BWR_BARMAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/bwr-test/barman-venv".into())
}

/// Where stacks are made: every user of the stack (postgres, barman) must be able to reach it,
/// so not $TMPDIR (which may be private); BWR_STACK_BASE overrides.
fn stack_base() -> PathBuf {
    std::env::var_os("BWR_STACK_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
}

fn stack_script() -> PathBuf {
    Path::new(MANIFEST_DIR).join("fixtures/real-stack/stack.sh")
}

/// What is missing for the real stack, or empty.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        missing
            .push("root (the stack runs sshd, and PostgreSQL/Barman as their users)".to_string());
    }
    let venv = barman_venv();
    for p in [
        PathBuf::from("/usr/sbin/sshd"),
        PathBuf::from("/usr/bin/ssh-keygen"),
        PathBuf::from("/usr/lib/postgresql/15/bin/postgres"),
        PathBuf::from("/usr/lib/postgresql/15/bin/pg_basebackup"),
        PathBuf::from("/usr/sbin/runuser"),
        venv.join("bin/barman"),
        venv.join("bin/barman-wal-restore"),
        stack_script(),
    ] {
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    missing
}

// ------------------------------------------------------------------------------------------------
// Running processes with a deadline

#[derive(Debug)]
struct Out {
    /// The exit status; 128 + N after death by signal N.
    code: Option<i32>,
    /// The signal that ended the process, if one did.
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
    what: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "`{}` -> exit {:?} after {:.2?}\n--- stdout: {}\n--- stderr:\n{}",
            self.what,
            self.code,
            self.elapsed,
            String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(2000)]),
            self.stderr
        )
    }
    fn expect_code(&self, want: i32) -> TestResult {
        if self.code == Some(want) {
            Ok(())
        } else {
            Err(fail(format!(
                "expected exit {want}, got:\n{}",
                self.describe()
            )))
        }
    }
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` (stdin closed, output captured), killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Out, Failed> {
    spawn(cmd)?.wait(timeout)
}

/// A process started by [`spawn`], its output collected by two threads.
struct Running {
    child: std::process::Child,
    what: String,
    start: Instant,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Start `cmd` (stdin closed, output captured) without waiting for it.
fn spawn(cmd: &mut Command) -> Result<Running, Failed> {
    let what = describe_cmd(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start `{what}`: {e}")))?;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    Ok(Running {
        child,
        what,
        start,
        stdout,
        stderr,
    })
}

impl Running {
    /// Whether it has ended (it is reaped then; [`Running::wait`] still reports it).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (nothing happens if it has already been reaped).
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait for the end, killing it after `timeout` (counted from its start).
    fn wait(mut self, timeout: Duration) -> Result<Out, Failed> {
        let what = self.what;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if self.start.elapsed() > timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(fail(format!(
                        "`{what}` did not finish within {timeout:?} (killed)"
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)), // poll interval of a bounded wait
                Err(e) => return Err(fail(format!("waiting for `{what}`: {e}"))),
            }
        };
        let elapsed = self.start.elapsed();
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&self.stderr.join().unwrap_or_default()).into_owned();
        use std::os::unix::process::ExitStatusExt;
        let signal = status.signal();
        let code = status.code().or(signal.map(|s| 128 + s));
        Ok(Out {
            code,
            signal,
            stdout,
            stderr,
            elapsed,
            what,
        })
    }
}

/// Poll `probe` until it yields a value, for at most `timeout`; an `Err` from the probe ends the
/// wait at once (the thing waited for can no longer happen).
fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>, Failed>,
) -> Result<T, Failed> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(fail(format!("waited {timeout:?} in vain for {what}")));
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a bounded wait
    }
}

// ------------------------------------------------------------------------------------------------
// The stack

struct Stack {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Copy of the binary under test that the postgres user can execute.
    pg_bin: PathBuf,
    /// Empty HOME for our binary run as root: nothing of /root/.ssh leaks in.
    home: PathBuf,
    torn_down: AtomicBool,
    seq: AtomicUsize,
}

impl Stack {
    fn up() -> Result<Stack, String> {
        if let Some(existing) = std::env::var_os("BWR_STACK_DIR") {
            return Stack::reuse(PathBuf::from(existing));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = stack_base().join(format!(
            "bwr-real-stack-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000
        ));
        let log = stack_base().join(format!("bwr-real-stack-{}.setup.log", std::process::id()));
        let logf = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let start = Instant::now();
        let status = Command::new("bash")
            .arg(stack_script())
            .arg("up")
            .arg(&dir)
            .env("BWR_STACK_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .status()
            .map_err(|e| format!("cannot run stack.sh: {e}"))?;
        let setup_log = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        if !status.success() {
            return Err(format!(
                "stack.sh up {} failed ({status}):\n{setup_log}",
                dir.display()
            ));
        }
        let stack = Stack::open(dir, false)?;
        eprintln!(
            "real stack up in {:.1?}: {} (sshd port {}, {} segments, {} rows)",
            start.elapsed(),
            stack.dir.display(),
            stack.get("SSH_PORT"),
            stack.list("WAL_SEGMENTS").len(),
            stack.get("ROWS")
        );
        Ok(stack)
    }

    /// BWR_STACK_DIR: use a stack already up (`stack.sh up DIR`), leave it up afterwards.
    fn reuse(dir: PathBuf) -> Result<Stack, String> {
        eprintln!("real stack: reusing {} (BWR_STACK_DIR)", dir.display());
        Stack::open(dir, true)
    }

    fn open(dir: PathBuf, borrowed: bool) -> Result<Stack, String> {
        let env = parse_env(&dir.join("stack.env"))?;
        let bin_dir = dir.join("bin");
        fs::create_dir_all(&bin_dir).map_err(|e| e.to_string())?;
        let pg_bin = bin_dir.join("barman-wal-restore");
        fs::copy(BIN, &pg_bin).map_err(|e| format!("copy {BIN}: {e}"))?;
        fs::set_permissions(&pg_bin, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let home = dir.join("home-root");
        fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let stack = Stack {
            dir,
            env,
            pg_bin,
            home,
            torn_down: AtomicBool::new(borrowed),
            seq: AtomicUsize::new(0),
        };
        Ok(stack)
    }

    fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let r = Command::new("bash")
            .arg(stack_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "stack.sh down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("stack.sh down: {e}"),
        }
    }

    fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("stack.env has no {k}"))
    }
    fn list(&self, k: &str) -> Vec<String> {
        self.get(k).split_whitespace().map(str::to_string).collect()
    }
    fn config(&self, comp: &str) -> String {
        self.get(&format!("BARMAN_CONFIG_{comp}")).to_string()
    }
    fn orig(&self) -> PathBuf {
        PathBuf::from(self.get("WAL_ORIG_DIR"))
    }

    /// A fresh work directory for one trial (with pg_wal/ like a data directory).
    fn workdir(&self, name: &str) -> Result<PathBuf, Failed> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let d = self
            .dir
            .join("work")
            .join(format!("{}-{n:03}-{safe}", std::process::id()));
        fs::create_dir_all(d.join("pg_wal")).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        Ok(d)
    }

    /// Our binary as root, with explicit key / known_hosts / port (hermetic HOME).
    fn ours(&self, cfg: &str, opts: &[&str], wal: &str, dest: &str, cwd: &Path) -> Command {
        self.ours_full(self.get("SSH_PORT"), SERVER, cfg, opts, wal, dest, cwd)
    }
    /// Our binary with another client key (an account made by `stack.sh forced-key`).
    fn ours_keyed(
        &self,
        key: &Path,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        let key = key.to_string_lossy();
        self.ours_with(
            self.get("SSH_PORT"),
            &key,
            SERVER,
            cfg,
            opts,
            wal,
            dest,
            cwd,
        )
    }
    fn ours_to(
        &self,
        port: &str,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        self.ours_full(port, SERVER, cfg, opts, wal, dest, cwd)
    }
    #[allow(clippy::too_many_arguments)]
    fn ours_full(
        &self,
        port: &str,
        server: &str,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        self.ours_with(port, self.get("SSH_KEY"), server, cfg, opts, wal, dest, cwd)
    }
    #[allow(clippy::too_many_arguments)]
    fn ours_with(
        &self,
        port: &str,
        key: &str,
        server: &str,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(cwd)
            .env("HOME", &self.home)
            .env_remove("SSH_AUTH_SOCK");
        c.args([
            "-U",
            "barman",
            "--port",
            port,
            "-i",
            key,
            "--known-hosts",
            self.get("KNOWN_HOSTS"),
        ]);
        c.args(["-c", cfg])
            .args(opts)
            .args([HOST, server, wal, dest]);
        c
    }
    /// The Python reference, shelling out to `ssh` = wrapper with the stack's ssh_config.
    fn oracle(&self, cfg: &str, opts: &[&str], wal: &str, dest: &str, cwd: &Path) -> Command {
        let mut c = Command::new(self.get("ORACLE"));
        c.current_dir(cwd).env(
            "PATH",
            format!("{}:/usr/bin:/bin", self.get("SSH_WRAPPER_DIR")),
        );
        c.args([
            "-U",
            "barman",
            "--port",
            self.get("ORACLE_SSH_PORT"),
            "-c",
            cfg,
        ])
        .args(opts)
        .args([HOST, SERVER, wal, dest]);
        c
    }
    /// Command line for PostgreSQL's restore_command (run by postgres: its own key copy).
    fn restore_command(&self, cfg: &str, opts: &str) -> String {
        self.restore_command_keyed(Path::new(self.get("PG_SSH_KEY")), cfg, opts)
    }
    /// Same with another key readable by postgres (`forced_key(.., Owner::Postgres)`).
    fn restore_command_keyed(&self, key: &Path, cfg: &str, opts: &str) -> String {
        format!(
            "{} %f %p",
            self.restore_argv(self.get("SSH_PORT"), key, cfg, opts)
        )
    }
    /// Our binary as postgres runs it, to sshd `port`, up to (not including) WAL_NAME WAL_DEST.
    fn restore_argv(&self, port: &str, key: &Path, cfg: &str, opts: &str) -> String {
        self.restore_argv_for(SERVER, port, key, cfg, opts)
    }
    /// [`Stack::restore_argv`] for another Barman server (`bravo`: the second cluster).
    fn restore_argv_for(
        &self,
        server: &str,
        port: &str,
        key: &Path,
        cfg: &str,
        opts: &str,
    ) -> String {
        format!(
            "{} {opts} -U barman --port {port} -i {} --known-hosts {} -c {cfg} {HOST} {server}",
            self.pg_bin.display(),
            key.display(),
            self.get("PG_KNOWN_HOSTS"),
        )
    }

    /// A new client key whose authorized_keys line forces `forced-command.sh MODE`
    /// (`barman-only`: a restricted Barman account; `log-all`: runs anything); every command
    /// the account is asked to run is logged. Returns the key and the log.
    fn forced_key(&self, name: &str, mode: &str, owner: &str) -> Result<ForcedKey, Failed> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let name: String = format!("{name}-{}-{n}", std::process::id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let out = run(
            Command::new("bash").arg(stack_script()).args([
                "forced-key",
                &self.dir.to_string_lossy(),
                &name,
                mode,
                owner,
            ]),
            Duration::from_secs(60),
        )?;
        out.expect_code(0)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        match (it.next(), it.next()) {
            (Some(key), Some(log)) => Ok(ForcedKey {
                key: key.into(),
                log: log.into(),
            }),
            _ => Err(fail(format!("stack.sh forced-key printed {text:?}"))),
        }
    }
}

/// A client key of a forced-command account, and the log of the commands it was asked to run.
struct ForcedKey {
    key: PathBuf,
    log: PathBuf,
}

impl ForcedKey {
    /// The commands run so far, one per line, in order.
    fn commands(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "commands run by the account:\n{}",
            self.commands().join("\n")
        )
    }

    /// Every name was read with `cat` (in the named directory, if given) and none was asked of
    /// `barman get-wal` (nor peeked at through it); only `missing` names may be.
    fn expect_direct(
        &self,
        names: &[String],
        within: Option<&str>,
        missing: &[&str],
    ) -> TestResult {
        let cmds = self.commands();
        for name in names {
            let read = cmds.iter().any(|c| {
                c.starts_with("cat -- ")
                    && c.contains(name.as_str())
                    && within.is_none_or(|d| c.contains(&format!("/{d}/{name}'")))
            });
            if !read {
                return Err(fail(format!(
                    "{name} was not read with cat{}; {}",
                    within.map(|d| format!(" from {d}/")).unwrap_or_default(),
                    self.describe()
                )));
            }
        }
        if let Some(c) = cmds
            .iter()
            .find(|c| c.contains(" get-wal ") && !missing.iter().any(|m| c.contains(m)))
        {
            return Err(fail(format!(
                "direct read still asked barman get-wal: `{c}`; {}",
                self.describe()
            )));
        }
        Ok(())
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.commands().iter().filter(|c| pred(c)).count()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn parse_env(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut m = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("bad line in stack.env: {line}"))?;
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v);
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// One stack for all trials, built by the first trial that runs.
struct Shared {
    cell: OnceLock<Result<Stack, String>>,
    skip: Option<String>,
    timings: std::sync::Mutex<Vec<(Duration, String)>>,
}

impl Shared {
    fn stack(&self) -> Result<&Stack, Failed> {
        match self.cell.get_or_init(Stack::up) {
            Ok(s) => Ok(s),
            Err(e) => Err(fail(format!("real stack unavailable: {e}"))),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Checks

fn compare_file(got: &Path, want: &Path) -> TestResult {
    let g = fs::read(got).map_err(|e| fail(format!("{}: {e}", got.display())))?;
    let w = fs::read(want).map_err(|e| fail(format!("{}: {e}", want.display())))?;
    if g == w {
        return Ok(());
    }
    let first = g
        .iter()
        .zip(w.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    Err(fail(format!(
        "{} differs from {}: {} vs {} bytes, first difference at offset {first}",
        got.display(),
        want.display(),
        g.len(),
        w.len()
    )))
}

fn is_wal_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// WAL-named files left anywhere under the spool directory (all must have been delivered).
fn spool_leftovers(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![spool.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .file_name()
                .to_str()
                .map(is_wal_segment_name)
                .unwrap_or(false)
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Tool<'a> {
    Ours,
    /// Ours with the key of a forced-command account.
    OursKeyed(&'a Path),
    Oracle,
}

/// Call the tool once per name, in order, as PostgreSQL would (fresh spool for the run), and
/// compare every delivered file with what PostgreSQL archived. With our tool, finish with a name
/// that is not in the archive (must exit 1) and check that the spool holds no leftover WAL.
#[allow(clippy::too_many_arguments)]
fn fetch_sequence(
    st: &Stack,
    tool: Tool<'_>,
    cfg: &str,
    names: &[String],
    orig: &Path,
    opts: &[&str],
    missing_after: Option<&str>,
    work: &Path,
) -> TestResult {
    let spool = work.join("spool");
    let spool_s = spool.to_string_lossy().into_owned();
    let mut all_opts: Vec<&str> = opts.to_vec();
    all_opts.extend(["--spool-dir", &spool_s]);
    let dest = work.join(DEST);
    let mut timings = String::new();
    for name in names {
        let _ = fs::remove_file(&dest);
        let mut cmd = match tool {
            Tool::Ours => st.ours(cfg, &all_opts, name, DEST, work),
            Tool::OursKeyed(key) => st.ours_keyed(key, cfg, &all_opts, name, DEST, work),
            Tool::Oracle => st.oracle(cfg, &all_opts, name, DEST, work),
        };
        let out = run(&mut cmd, CALL_TIMEOUT)?;
        write!(timings, " {:.0?}", out.elapsed).ok();
        out.expect_code(0)
            .map_err(|e| fail(format!("fetching {name}: {}", e.message().unwrap_or(""))))?;
        compare_file(&dest, &orig.join(name))?;
    }
    let _ = fs::remove_file(&dest);
    if tool != Tool::Oracle {
        if let Some(m) = missing_after {
            let mut cmd = match tool {
                Tool::OursKeyed(key) => st.ours_keyed(key, cfg, &all_opts, m, DEST, work),
                _ => st.ours(cfg, &all_opts, m, DEST, work),
            };
            let out = run(&mut cmd, CALL_TIMEOUT)?;
            out.expect_code(1).map_err(|e| {
                fail(format!(
                    "{m} is not in the archive: {}",
                    e.message().unwrap_or("")
                ))
            })?;
        }
        let left = spool_leftovers(&spool);
        if !left.is_empty() {
            return Err(fail(format!("spool not empty after the run: {left:?}")));
        }
    }
    let _ = timings; // per-call durations, handy when debugging: eprintln!("{timings}")
    Ok(())
}

/// Segments for a fetch sequence, always including one full of real data (a segment that was
/// switched early is mostly empty). `AtEnd`: the last `n` of the archive, so that a prefetch runs
/// into the end of the archive; `AroundData`: `n` starting just before the last data segment.
#[derive(Clone, Copy)]
enum Window {
    AtEnd(usize),
    AroundData(usize),
}

fn window(st: &Stack, w: Window) -> Result<Vec<String>, Failed> {
    let segs = st.list("WAL_SEGMENTS");
    let data = st.list("WAL_DATA_SEGMENTS");
    let v: Vec<String> = match w {
        Window::AtEnd(n) => segs[segs.len().saturating_sub(n)..].to_vec(),
        Window::AroundData(n) => {
            let last_data = data
                .last()
                .ok_or_else(|| fail("stack.env lists no data segment"))?;
            let i = segs
                .iter()
                .position(|s| s == last_data)
                .ok_or_else(|| fail("data segment not in WAL_SEGMENTS"))?;
            let from = i.saturating_sub(1);
            segs[from..(from + n).min(segs.len())].to_vec()
        }
    };
    if !v.iter().any(|s| data.contains(s)) {
        return Err(fail(format!(
            "window {v:?} holds none of the data segments {data:?}"
        )));
    }
    Ok(v)
}

/// The name after the last archived segment (the one PostgreSQL asks for next): not archived.
fn next_missing(st: &Stack) -> String {
    st.get("WAL_PARTIAL")
        .trim_end_matches(".partial")
        .to_string()
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL clusters made from the base backup

struct Pg<'a> {
    st: &'a Stack,
    data: PathBuf,
    port: u16,
    log: PathBuf,
    name: String,
}

fn free_port() -> Result<u16, Failed> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(e.to_string()))?;
    Ok(l.local_addr().map_err(|e| fail(e.to_string()))?.port())
}

fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args).current_dir("/");
    c
}

impl<'a> Pg<'a> {
    /// Copy the base backup, configure recovery (`signal` = standby.signal or recovery.signal).
    fn from_base_backup(
        st: &'a Stack,
        name: &str,
        signal: &str,
        conf: &str,
    ) -> Result<Pg<'a>, Failed> {
        Pg::from_backup(st, st.get("PG_BASE_BACKUP"), name, signal, conf)
    }

    /// [`Pg::from_base_backup`] from another base backup (`BRAVO_BASE_BACKUP`).
    fn from_backup(
        st: &'a Stack,
        base: &str,
        name: &str,
        signal: &str,
        conf: &str,
    ) -> Result<Pg<'a>, Failed> {
        let name = &format!("{name}-{}", std::process::id());
        let data = st.dir.join("pg").join(name);
        run(
            &mut as_postgres(&["cp", "-a", base, &data.to_string_lossy()]),
            CALL_TIMEOUT,
        )?
        .expect_code(0)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(e.to_string()))?;
        // down stops every cluster listed here
        let mut reg = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(st.dir.join("run/pgdata.list"))
            .map_err(|e| fail(e.to_string()))?;
        use std::io::Write;
        writeln!(reg, "{}", data.display()).map_err(|e| fail(e.to_string()))?;
        let port = free_port()?;
        let spool = st.dir.join("spool").join(name);
        run(
            &mut as_postgres(&["mkdir", "-p", &spool.to_string_lossy()]),
            CALL_TIMEOUT,
        )?
        .expect_code(0)?;
        let conf = conf.replace("@SPOOL@", &spool.to_string_lossy());
        let auto = data.join("postgresql.auto.conf");
        let mut text =
            fs::read_to_string(&auto).map_err(|e| fail(format!("{}: {e}", auto.display())))?;
        write!(
            text,
            "\n# real_stack test {name}\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             archive_mode = off\nhot_standby = on\nprimary_conninfo = ''\nlog_min_messages = info\n{conf}\n",
            st.dir.join("pg/sock").display()
        )
        .ok();
        fs::write(&auto, text).map_err(|e| fail(e.to_string()))?;
        run(
            &mut as_postgres(&["touch", &data.join(signal).to_string_lossy()]),
            CALL_TIMEOUT,
        )?
        .expect_code(0)?;
        let log = st.dir.join("log").join(format!("pg-{name}.log"));
        Ok(Pg {
            st,
            data,
            port,
            log,
            name: name.to_string(),
        })
    }

    fn start(&self) -> TestResult {
        let pgctl = format!("{}/pg_ctl", self.st.get("PG_BIN"));
        run(
            &mut as_postgres(&[
                &pgctl,
                "start",
                "-W",
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &self.log.to_string_lossy(),
            ]),
            CALL_TIMEOUT,
        )?
        .expect_code(0)
    }

    fn query(&self, sql: &str) -> Result<Out, Failed> {
        let psql = format!("{}/psql", self.st.get("PG_BIN"));
        let port = self.port.to_string();
        run(
            &mut as_postgres(&[
                &psql, "-X", "-q", "-At", "-h", HOST, "-p", &port, "-U", "postgres", "-d",
                "postgres", "-c", sql,
            ]),
            Duration::from_secs(30),
        )
    }

    fn running(&self) -> bool {
        let pgctl = format!("{}/pg_ctl", self.st.get("PG_BIN"));
        run(
            &mut as_postgres(&[&pgctl, "status", "-D", &self.data.to_string_lossy()]),
            Duration::from_secs(30),
        )
        .map(|o| o.code == Some(0))
        .unwrap_or(false)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Poll `sql` until it returns `want`; fail early if the server died.
    fn wait_for(&self, sql: &str, want: &str, timeout: Duration) -> TestResult {
        let start = Instant::now();
        let mut last = String::new();
        let mut polls = 0u32;
        loop {
            if let Ok(o) = self.query(sql) {
                if o.code == Some(0) {
                    last = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    if last == want {
                        return Ok(());
                    }
                } else {
                    last = o.stderr.trim().to_string();
                }
            }
            polls += 1;
            if polls.is_multiple_of(10) && !self.running() {
                return Err(fail(format!(
                    "{}: server died waiting for `{sql}` = {want} (last: {last})\n--- log:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            if start.elapsed() > timeout {
                return Err(fail(format!(
                    "{}: `{sql}` did not return {want} within {timeout:?} (last: {last})\n--- log:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200)); // poll interval of a bounded wait
        }
    }

    /// Archive recovery ended (the server promoted) with `rows` rows in the test table.
    fn wait_promoted(&self, rows: &str) -> TestResult {
        self.wait_for("SELECT pg_is_in_recovery()", "f", RECOVERY_TIMEOUT)?;
        self.wait_for(
            &format!("SELECT count(*) FROM {}", self.st.get("PG_TABLE")),
            rows,
            Duration::from_secs(10),
        )
    }

    /// A standby replayed up to `rows` rows in the test table and is still in recovery.
    fn wait_standby_rows(&self, rows: &str) -> TestResult {
        self.wait_for(
            &format!("SELECT count(*) FROM {}", self.st.get("PG_TABLE")),
            rows,
            RECOVERY_TIMEOUT,
        )?;
        self.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(10))
    }

    /// The log must show no fatal restore_command outcome, no crash, except lines holding one
    /// of `expected` (a trial that provokes a FATAL on purpose).
    fn check_log_clean(&self, expected: &[&str]) -> TestResult {
        let text = self.log_text();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("PANIC")
                    || l.contains("FATAL")
                    || l.contains("terminated by signal")
                    || l.contains("could not restore file")
            })
            .filter(|l| {
                !l.contains("the database system is starting up")
                    && !l.contains("not yet accepting connections")
                    && !expected.iter().any(|e| l.contains(e))
            })
            .collect::<Vec<_>>();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(fail(format!(
                "{}: bad lines in the server log:\n{}",
                self.name,
                bad.join("\n")
            )))
        }
    }

    fn expect_log(&self, needle: &str) -> TestResult {
        if self.log_text().contains(needle) {
            Ok(())
        } else {
            Err(fail(format!(
                "{}: log lacks `{needle}`\n--- log:\n{}",
                self.name,
                self.log_tail()
            )))
        }
    }

    /// The spool `@SPOOL@` stands for in this cluster's restore_command.
    fn spool(&self) -> PathBuf {
        self.st.dir.join("spool").join(&self.name)
    }

    fn stop(&self) -> TestResult {
        run(
            Command::new("bash")
                .arg(stack_script())
                .arg("pg-stop")
                .arg(&self.st.dir)
                .arg(&self.data),
            Duration::from_secs(90),
        )?
        .expect_code(0)
    }

    fn stop_and_remove(&self) {
        let _ = run(
            Command::new("bash")
                .arg(stack_script())
                .arg("pg-stop")
                .arg(&self.st.dir)
                .arg(&self.data),
            Duration::from_secs(90),
        );
        let _ = fs::remove_dir_all(&self.data);
    }
}

// ------------------------------------------------------------------------------------------------
// --async workers

/// Live `--async` workers serving `spool` (found by their command line).
fn async_workers(spool: &Path) -> Vec<Proc> {
    let spool = spool.to_string_lossy();
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let args: Vec<String> = c
                            .split(|b| *b == 0)
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect();
                        args.iter().any(|a| a == "--async-worker")
                            && args.iter().any(|a| a == spool.as_ref())
                    })
                })
                .filter_map(read_proc)
                .collect()
        })
        .unwrap_or_default()
}

/// After PostgreSQL stopped asking: the spool's worker leaves once its idle time has passed,
/// having used one connection, and nothing but bookkeeping and complete segments is left.
fn expect_worker_gone(spool: &Path, idle: Duration) -> TestResult {
    wait_until(
        idle + Duration::from_secs(30),
        "the --async worker to leave",
        || Ok(async_workers(spool).is_empty().then_some(())),
    )?;
    let log = fs::read_to_string(spool.join(".bwr-worker.log")).unwrap_or_default();
    let exits: Vec<&str> = log.lines().filter(|l| l.contains(" exiting (")).collect();
    if exits.is_empty() || !exits.iter().all(|l| l.contains("1 connection(s)")) {
        return Err(fail(format!(
            "worker log: every worker should exit after one connection:\n{log}"
        )));
    }
    if !exits.iter().any(|l| l.contains("no request for")) {
        return Err(fail(format!("worker log: no idle exit:\n{log}")));
    }
    Ok(())
}

/// Run a recovery scenario; the cluster is stopped (and its data removed on success) afterwards.
fn with_cluster(
    st: &Stack,
    name: &str,
    signal: &str,
    conf: &str,
    body: impl FnOnce(&Pg) -> TestResult,
) -> TestResult {
    with_cluster_expecting(st, name, signal, conf, &[], body)
}

/// [`with_cluster`] for a scenario whose server log may hold FATAL lines containing one of
/// `expected` (the body checks that they are there).
fn with_cluster_expecting(
    st: &Stack,
    name: &str,
    signal: &str,
    conf: &str,
    expected: &[&str],
    body: impl FnOnce(&Pg) -> TestResult,
) -> TestResult {
    let pg = Pg::from_base_backup(st, name, signal, conf)?;
    let r = pg
        .start()
        .and_then(|()| body(&pg))
        .and_then(|()| pg.check_log_clean(expected));
    if r.is_ok() || std::env::var("BWR_KEEP_STACK").as_deref() != Ok("1") {
        pg.stop_and_remove();
    } else {
        let _ = Command::new("bash")
            .arg(stack_script())
            .arg("pg-stop")
            .arg(&st.dir)
            .arg(&pg.data)
            .output();
    }
    r
}

// ------------------------------------------------------------------------------------------------
// Processes of the stack, dedicated sshd instances

/// A process as /proc shows it; `start` (clock ticks after boot) tells a reused pid apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    start: u64,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ... STARTTIME ...": COMM may hold spaces and parentheses
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return None; // a zombie: gone but for its exit status
    }
    Some(Proc {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        comm: stat[open + 1..close].to_string(),
        start: rest.get(19)?.parse().ok()?,
    })
}

/// `root` and every process below it, parents first.
fn process_tree(root: i32) -> Vec<Proc> {
    let all: Vec<Proc> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter_map(read_proc)
                .collect()
        })
        .unwrap_or_default();
    let mut tree: Vec<Proc> = all.iter().filter(|p| p.pid == root).cloned().collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].pid;
        tree.extend(all.iter().filter(|p| p.ppid == parent).cloned());
        i += 1;
    }
    tree
}

/// `p` still runs (same pid, same start time, not a zombie).
fn still_running(p: &Proc) -> bool {
    read_proc(p.pid).is_some_and(|now| now.start == p.start && now.comm == p.comm)
}

/// kill(2) on one process; never 0, -1 or init (those would reach far more than one process).
fn send_signal(p: &Proc, sig: i32) {
    if p.pid > 1 && still_running(p) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(p.pid, sig) };
    }
}

/// One more sshd for one trial (`stack.sh sshd-start`), which the trial may kill, stop or start
/// again. Dropping it resumes whatever was stopped, stops the sshd and ends what is left of its
/// sessions.
struct Sshd<'a> {
    st: &'a Stack,
    name: String,
    port: String,
    /// `sshd-start` options (`--throttle N`), again when it is started anew.
    opts: Vec<String>,
    /// Every process seen under it, for the cleanup.
    seen: std::sync::Mutex<Vec<Proc>>,
}

impl<'a> Sshd<'a> {
    fn start(st: &'a Stack, name: &str, opts: &[&str]) -> Result<Sshd<'a>, Failed> {
        let n = st.seq.fetch_add(1, Ordering::SeqCst);
        let name = format!("{name}-{}-{n}", std::process::id());
        let opts: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
        let port = Sshd::launch(st, &name, None, &opts)?;
        Ok(Sshd {
            st,
            name,
            port,
            opts,
            seen: Default::default(),
        })
    }

    fn launch(
        st: &Stack,
        name: &str,
        port: Option<&str>,
        opts: &[String],
    ) -> Result<String, Failed> {
        let mut c = Command::new("bash");
        c.arg(stack_script())
            .args(["sshd-start", &st.dir.to_string_lossy(), name]);
        if let Some(p) = port {
            c.args(["--port", p]);
        }
        c.args(opts);
        let out = run(&mut c, Duration::from_secs(60))?;
        out.expect_code(0)?;
        let port = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if port.parse::<u16>().is_err() {
            return Err(fail(format!("stack.sh sshd-start printed {port:?}")));
        }
        Ok(port)
    }

    /// `stack.sh sshd-stop`: TERM the listener, wait until it is gone (nothing to do after a kill
    /// but forget its pid file).
    fn stop(&self) -> TestResult {
        run(
            Command::new("bash").arg(stack_script()).args([
                "sshd-stop",
                &self.st.dir.to_string_lossy(),
                &self.name,
            ]),
            Duration::from_secs(60),
        )?
        .expect_code(0)
    }

    /// Start it again on the same port, where its clients look for it.
    fn restart(&self) -> TestResult {
        self.stop()?;
        let port = Sshd::launch(self.st, &self.name, Some(&self.port), &self.opts)?;
        if port != self.port {
            return Err(fail(format!(
                "sshd {} came back on port {port}, not {}",
                self.name, self.port
            )));
        }
        Ok(())
    }

    /// The listener (the pid stack.sh recorded, checked against its config path: a reused pid
    /// is not ours) and every process under it: per-connection sshd processes and the commands
    /// their sessions run. `pgrep -f CONFIG` finds the listener only: per-connection processes
    /// retitle themselves (`sshd: barman [priv]`, `sshd: barman@notty`).
    fn processes(&self) -> Result<Vec<Proc>, Failed> {
        let pidfile = self.st.dir.join(format!("run/sshd-{}.pid", self.name));
        let pid: i32 = fs::read_to_string(&pidfile)
            .map_err(|e| fail(format!("{}: {e}", pidfile.display())))?
            .trim()
            .parse()
            .map_err(|e| fail(format!("{}: {e}", pidfile.display())))?;
        let config = self.st.dir.join(format!("sshd/sshd_config-{}", self.name));
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy()) {
            return Err(fail(format!(
                "pid {pid} (from {}) is not `sshd -f {}`",
                pidfile.display(),
                config.display()
            )));
        }
        let tree = process_tree(pid);
        self.seen.lock().unwrap().extend(tree.iter().cloned());
        Ok(tree)
    }

    /// Sends `sig` to its sshd processes: the per-connection ones, and the listener too with
    /// `listener`. The commands of the sessions are left to follow their sshd.
    fn signal_sshd(&self, sig: i32, listener: bool) -> Result<Vec<Proc>, Failed> {
        let procs: Vec<Proc> = self
            .processes()?
            .into_iter()
            .enumerate()
            .filter(|(i, p)| p.comm == "sshd" && (listener || *i > 0))
            .map(|(_, p)| p)
            .collect();
        for p in &procs {
            send_signal(p, sig);
        }
        Ok(procs)
    }

    /// Sends `sig` to the listener and every process under it (the whole Barman host hangs).
    fn signal_all(&self, sig: i32) -> Result<Vec<Proc>, Failed> {
        let procs = self.processes()?;
        for p in &procs {
            send_signal(p, sig);
        }
        Ok(procs)
    }
}

impl Drop for Sshd<'_> {
    fn drop(&mut self) {
        let _ = self.processes();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        for p in &seen {
            send_signal(p, libc::SIGCONT);
        }
        let _ = self.stop();
        // Stalled or orphaned sessions of a client that left long ago: ours to end.
        for p in &seen {
            send_signal(p, libc::SIGKILL);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Fault trials: what a directory holds after a call

/// Prefix of every temp file our binary writes (src/spool.rs).
const TEMP_PREFIX: &str = ".bwr-tmp.";

/// A directory judged against what PostgreSQL archived.
#[derive(Debug, Default)]
struct Audit {
    /// Final names holding exactly the archived bytes.
    good: Vec<String>,
    /// Temp names: allowed after a kill only.
    temps: Vec<String>,
    /// Final names holding anything else, and files no call should have left.
    bad: Vec<String>,
}

/// `dest`: (file name, WAL) when `dir` holds WAL_DEST; any other final name must be the name of
/// an archived WAL with its bytes. The spool's bookkeeping (`.bwr-peek`, `.bwr-layout.*`,
/// `.bwr-owner*`) is never served as WAL and is not judged.
fn audit_dir(dir: &Path, orig: &Path, dest: Option<(&str, &str)>) -> Audit {
    let mut audit = Audit::default();
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        if name.starts_with(TEMP_PREFIX) {
            audit.temps.push(name);
            continue;
        }
        if name == ".bwr-peek" || name.starts_with(".bwr-layout.") || name.starts_with(".bwr-owner")
        {
            continue;
        }
        let wal = match dest {
            Some((d, wal)) if d == name => wal,
            _ => name.as_str(),
        };
        let want = orig.join(wal);
        if !want.is_file() {
            audit
                .bad
                .push(format!("{name}: no archived WAL of that name"));
            continue;
        }
        match compare_file(&dir.join(&name), &want) {
            Ok(()) => audit.good.push(name),
            Err(e) => audit.bad.push(e.message().unwrap_or("differs").to_string()),
        }
    }
    audit
}

fn context(ctx: &str) -> impl Fn(Failed) -> Failed + '_ {
    move |e| fail(format!("{ctx}: {}", e.message().unwrap_or("failed")))
}

/// After a call that failed: no WAL_DEST, no temp file (the call ended by itself and removes
/// its own), nothing wrong under a final name in pg_wal/ or the spool.
fn expect_nothing_left(work: &Path, orig: &Path, wal: &str) -> TestResult {
    for (dir, dest) in [
        (work.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
        (work.join("spool"), None),
    ] {
        let audit = audit_dir(&dir, orig, dest);
        if !audit.bad.is_empty() || !audit.temps.is_empty() {
            return Err(fail(format!(
                "{}: wrong files {:?}, temp files {:?}",
                dir.display(),
                audit.bad,
                audit.temps
            )));
        }
    }
    if work.join(DEST).exists() {
        return Err(fail(format!("{DEST} delivered by a call that failed")));
    }
    Ok(())
}

/// stderr holds exactly one `ERROR:` line, naming the Barman host; returns it.
fn one_error_line(out: &Out, port: &str) -> Result<String, Failed> {
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    match errors[..] {
        [line] if line.contains(&format!("{HOST}:{port}")) => Ok(line.to_string()),
        _ => Err(fail(format!(
            "want one ERROR line naming {HOST}:{port}:\n{}",
            out.describe()
        ))),
    }
}

/// Bytes per second each exec channel of a throttled sshd streams: a segment of config "none"
/// (16 MiB stored raw) takes 4 s, long enough to break the connection while it streams.
const THROTTLE: &str = "4194304";
/// --io-timeout of the stall and kill trials.
const IO_TIMEOUT: u64 = 5;

/// Starts a `-p 8` fetch of the last data segment (config "none": 16 MiB on the wire) through
/// `sshd` in standby mode (standby.signal in the cwd, as PostgreSQL runs us), and returns once
/// bytes of it have arrived under its temp name beside WAL_DEST: mid-stream.
fn start_fetch_mid_stream(
    st: &Stack,
    sshd: &Sshd,
    work: &Path,
    extra: &[&str],
) -> Result<(Running, String), Failed> {
    fs::write(work.join("standby.signal"), "").map_err(|e| fail(e.to_string()))?;
    let wal = st
        .list("WAL_DATA_SEGMENTS")
        .last()
        .cloned()
        .ok_or_else(|| fail("stack.env lists no data segment"))?;
    let spool = work.join("spool").to_string_lossy().into_owned();
    let io = IO_TIMEOUT.to_string();
    let mut opts = vec!["-p", "8", "--spool-dir", &spool, "--io-timeout", &io];
    opts.extend(extra);
    let mut running =
        spawn(&mut st.ours_to(&sshd.port, &st.config("none"), &opts, &wal, DEST, work))?;
    let pg_wal = work.join("pg_wal");
    let streaming = wait_until(
        Duration::from_secs(60),
        &format!("bytes of {wal} to arrive"),
        || {
            if running.exited() {
                return Ok(Some(false));
            }
            let arrived = fs::read_dir(&pg_wal)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                            && e.metadata().is_ok_and(|m| m.len() > 0)
                    })
                })
                .unwrap_or(false);
            Ok(arrived.then_some(true))
        },
    );
    match streaming {
        Ok(true) => Ok((running, wal)),
        Ok(false) => {
            let out = running.wait(CALL_TIMEOUT)?;
            Err(fail(format!(
                "the call ended before any byte of {wal} arrived:\n{}",
                out.describe()
            )))
        }
        Err(e) => {
            running.kill();
            Err(e)
        }
    }
}

/// Issue 5 on the real stack: our binary SIGKILLed at a pseudo-random moment of a `-p 8` fetch
/// (start-up, handshake, peek, eight transfers, renames), with a fresh spool each time. No final
/// name, in the spool or at WAL_DEST, ever holds other bytes than PostgreSQL archived; the next
/// call for the same segment delivers them and leaves no temp file.
fn sigkill_during_p8_fetch(st: &Stack) -> TestResult {
    const ITERATIONS: usize = 20;
    const BUDGET: Duration = Duration::from_secs(300);
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("BWR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    eprintln!(
        "fault::sigkill_during_p8_fetch: seed {seed} (BWR_FAULT_SEED={seed} replays the delays)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cfg = st.config("zstd");
    let orig = st.orig();
    let segs = st.list("WAL_SEGMENTS");
    let data = st.list("WAL_DATA_SEGMENTS");
    // requested segments whose window (it and the 7 after it) holds a segment full of data
    let starts: Vec<&str> = (0..segs.len().saturating_sub(8))
        .filter(|&i| segs[i..i + 8].iter().any(|s| data.contains(s)))
        .map(|i| segs[i].as_str())
        .collect();
    if starts.is_empty() {
        return Err(fail(format!(
            "no -p 8 window of {segs:?} holds a data segment"
        )));
    }
    let work = st.workdir("sigkill_p8")?;
    let call = |dir: &Path, wal: &str, keep: &str| {
        let spool = dir.join("spool").to_string_lossy().into_owned();
        st.ours(
            &cfg,
            &["-p", "8", "--spool-dir", &spool, keep],
            wal,
            DEST,
            dir,
        )
    };
    let fresh = |name: String| -> Result<PathBuf, Failed> {
        let dir = work.join(name);
        fs::create_dir_all(dir.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
        Ok(dir)
    };
    // The kill window is one whole call (fresh spool), shrunk whenever a call ends before its
    // kill, so that kills spread over the whole call whatever the machine's speed.
    let warm = fresh("warm-up".into())?;
    let out = run(
        &mut call(&warm, starts[0], "--keep-compression"),
        CALL_TIMEOUT,
    )?;
    out.expect_code(0)?;
    compare_file(&warm.join(DEST), &orig.join(starts[0]))?;
    let _ = fs::remove_dir_all(&warm);
    let mut window_ms = (out.elapsed.as_millis() as u64).clamp(100, 10_000);
    let first_window = window_ms;
    let (mut done, mut killed_n, mut dest_done, mut temps, mut spooled) = (0, 0, 0, 0, 0);
    let (mut next_max, mut codes) = (Duration::ZERO, std::collections::BTreeMap::new());
    let started = Instant::now();
    for i in 0..ITERATIONS {
        if started.elapsed() > BUDGET {
            eprintln!("fault::sigkill_during_p8_fetch: {BUDGET:?} spent after {i} iterations");
            break;
        }
        let wal = starts[i % starts.len()];
        // --keep-compression is the default; the other half as the original fetches
        let keep = if i % 2 == 0 {
            "--keep-compression"
        } else {
            "--no-keep-compression"
        };
        let dir = fresh(format!("kill-{i:02}"))?;
        let delay = rng.random_range(0..=window_ms);
        let ctx = format!("iteration {i} (seed {seed}: {wal} {keep}, SIGKILL after {delay} ms)");
        let mut running = spawn(&mut call(&dir, wal, keep))?;
        std::thread::sleep(Duration::from_millis(delay)); // the random moment is the point of the test
        running.kill();
        let killed = running.wait(CALL_TIMEOUT)?;
        if killed.signal == Some(libc::SIGKILL) {
            killed_n += 1;
            if dir.join(DEST).exists() {
                dest_done += 1;
            }
        } else {
            *codes.entry(killed.code.unwrap_or(-1)).or_insert(0) += 1;
            killed.expect_code(0).map_err(context(&ctx))?;
            window_ms = window_ms.min(killed.elapsed.as_millis() as u64).max(50);
        }
        for (d, dest) in [
            (dir.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
            (dir.join("spool"), None),
        ] {
            let audit = audit_dir(&d, &orig, dest);
            if !audit.bad.is_empty() {
                return Err(fail(format!(
                    "{ctx}: final names with wrong or partial bytes in {}: {:?}",
                    d.display(),
                    audit.bad
                )));
            }
            temps += audit.temps.len();
            if dest.is_none() {
                spooled += audit.good.len();
            }
        }
        // PostgreSQL removes RECOVERYXLOG before it calls again.
        let _ = fs::remove_file(dir.join(DEST));
        let next = run(&mut call(&dir, wal, keep), CALL_TIMEOUT)?;
        *codes.entry(next.code.unwrap_or(-1)).or_insert(0) += 1;
        next.expect_code(0)
            .map_err(context(&format!("{ctx}, next call")))?;
        next_max = next_max.max(next.elapsed);
        compare_file(&dir.join(DEST), &orig.join(wal)).map_err(context(&ctx))?;
        for (d, dest) in [
            (dir.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
            (dir.join("spool"), None),
        ] {
            let audit = audit_dir(&d, &orig, dest);
            if !audit.bad.is_empty() || !audit.temps.is_empty() {
                return Err(fail(format!(
                    "{ctx}, after the next call: {} holds wrong files {:?}, temp files {:?}",
                    d.display(),
                    audit.bad,
                    audit.temps
                )));
            }
        }
        done += 1;
        let _ = fs::remove_dir_all(&dir); // 8 segments of 16 MiB each
    }
    let codes: Vec<String> = codes
        .iter()
        .map(|(c, n)| format!("exit {c}: {n}"))
        .collect();
    eprintln!(
        "FAULT-MATRIX | real stack: SIGKILL at a random moment within one call ({first_window} ms, \
         down to {window_ms} ms) of a -p 8 fetch (zstd, --keep-compression / \
         --no-keep-compression, fresh spool), then the same call again | {done} iterations | \
         SIGKILL: {killed_n}, {} | {killed_n} killed mid-call ({dest_done} after \
         WAL_DEST was complete), {temps} temp files left by the kills (all removed by the next \
         call), {spooled} segments spooled by killed calls (all byte-identical), next call \
         byte-identical every time (slowest {next_max:.1?}); 0 wrong bytes under a final name",
        codes.join(", ")
    );
    if done < ITERATIONS / 2 {
        return Err(fail(format!(
            "only {done} of {ITERATIONS} iterations within {BUDGET:?}"
        )));
    }
    if killed_n < done / 3 {
        return Err(fail(format!(
            "only {killed_n} of {done} calls were killed mid-way: too few to prove anything"
        )));
    }
    Ok(())
}

/// Barman's sshd dies (SIGKILL: the listener and the session's processes) while a `-p 8` fetch
/// streams: exit 2 within --io-timeout, one ERROR line, nothing final left behind.
fn sshd_killed_mid_stream(st: &Stack) -> TestResult {
    let sshd = Sshd::start(st, "killed", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_killed")?;
    let (running, wal) = start_fetch_mid_stream(st, &sshd, &work, &[])?;
    let killed = sshd.signal_sshd(libc::SIGKILL, true)?;
    let at = Instant::now();
    let out = running.wait(CALL_TIMEOUT)?;
    let after = at.elapsed();
    out.expect_code(2)?;
    let bound = Duration::from_secs(IO_TIMEOUT + 5);
    if after > bound {
        return Err(fail(format!(
            "exit 2 came {after:.1?} after the kill, more than {bound:?}:\n{}",
            out.describe()
        )));
    }
    let error = one_error_line(&out, &sshd.port)?;
    expect_nothing_left(&work, &st.orig(), &wal)?;
    eprintln!(
        "FAULT-MATRIX | real stack: sshd killed mid-stream (SIGKILL to its {} sshd processes: \
         listener and session) during a -p 8 fetch, --io-timeout {IO_TIMEOUT}, standby.signal | 1 | \
         exit 2, {after:.1?} after the kill | `{error}`; nothing under a final name, no temp file",
        killed.len()
    );
    Ok(())
}

/// The Barman host hangs (SIGSTOP to its sshd and everything under it) while a `-p 8` fetch
/// streams: no progress for --io-timeout, then reconnects that get no SSH banner (each bounded
/// by --connect-timeout): exit 2, one ERROR line, nothing final left behind.
fn sshd_stalled_mid_stream(st: &Stack) -> TestResult {
    const CONNECT_TIMEOUT: u64 = 2;
    let sshd = Sshd::start(st, "stalled", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_stalled")?;
    let (running, wal) = start_fetch_mid_stream(
        st,
        &sshd,
        &work,
        &["--connect-timeout", &CONNECT_TIMEOUT.to_string()],
    )?;
    let stopped = sshd.signal_all(libc::SIGSTOP)?;
    let at = Instant::now();
    let out = running.wait(CALL_TIMEOUT);
    let after = at.elapsed();
    for p in &stopped {
        send_signal(p, libc::SIGCONT);
    }
    let out = out?;
    out.expect_code(2)?;
    // the stall is noticed after --io-timeout; then one reconnect whose TCP connect succeeds
    // (the kernel queues it) but whose SSH banner never comes (--connect-timeout)
    let bound = Duration::from_millis((IO_TIMEOUT + CONNECT_TIMEOUT) * 1000 + 3000);
    if after < Duration::from_secs(IO_TIMEOUT) - Duration::from_millis(500) || after > bound {
        return Err(fail(format!(
            "exit 2 came {after:.1?} after the stall; want between --io-timeout {IO_TIMEOUT} s \
             and {bound:?}:\n{}",
            out.describe()
        )));
    }
    let error = one_error_line(&out, &sshd.port)?;
    expect_nothing_left(&work, &st.orig(), &wal)?;
    eprintln!(
        "FAULT-MATRIX | real stack: Barman host hangs mid-stream (SIGSTOP to the sshd's {} \
         processes: listener, session, commands) during a -p 8 fetch, --io-timeout {IO_TIMEOUT} --connect-timeout \
         {CONNECT_TIMEOUT}, standby.signal | 1 | exit 2, {after:.1?} after the stall \
         (--io-timeout, then one reconnect without an SSH banner) | `{error}`; nothing \
         under a final name, no temp file",
        stopped.len()
    );
    Ok(())
}

/// Only the session stalls (SIGSTOP to its sshd processes; the listener still accepts): after
/// --io-timeout the call reconnects and delivers everything.
fn sshd_session_stalled_reconnects(st: &Stack) -> TestResult {
    let sshd = Sshd::start(st, "session-stalled", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_session_stalled")?;
    let (running, wal) = start_fetch_mid_stream(st, &sshd, &work, &["-v"])?;
    let stopped = sshd.signal_sshd(libc::SIGSTOP, false)?;
    if stopped.is_empty() {
        return Err(fail("no session process under the sshd to stop"));
    }
    let at = Instant::now();
    let out = running.wait(CALL_TIMEOUT);
    let after = at.elapsed();
    for p in &stopped {
        send_signal(p, libc::SIGCONT);
    }
    let out = out?;
    out.expect_code(0)?;
    if after < Duration::from_secs(IO_TIMEOUT) - Duration::from_millis(500)
        || !out.stderr.contains("2 connection(s)")
    {
        return Err(fail(format!(
            "want a second connection after --io-timeout {IO_TIMEOUT} s ({after:.1?}):\n{}",
            out.describe()
        )));
    }
    compare_file(&work.join(DEST), &st.orig().join(&wal))?;
    let mut spooled = 0;
    for (dir, dest) in [
        (work.join("pg_wal"), Some(("RECOVERYXLOG", wal.as_str()))),
        (work.join("spool"), None),
    ] {
        let audit = audit_dir(&dir, &st.orig(), dest);
        if !audit.bad.is_empty() || !audit.temps.is_empty() {
            return Err(fail(format!(
                "{}: wrong files {:?}, temp files {:?}",
                dir.display(),
                audit.bad,
                audit.temps
            )));
        }
        if dest.is_none() {
            spooled = audit.good.len();
        }
    }
    eprintln!(
        "FAULT-MATRIX | real stack: the SSH session stalls mid-stream (SIGSTOP to its {} sshd \
         processes; the listener still accepts) during a -p 8 fetch, --io-timeout {IO_TIMEOUT} | 1 \
         | exit 0, {after:.1?} after the stall, on a second connection | WAL_DEST and {spooled} \
         spooled segments byte-identical, no temp file",
        stopped.len()
    );
    Ok(())
}

/// The first restore_command call for a segment from this call on finds Barman gone (call 1
/// asks for 00000002.history, then come the segments from the base backup's on).
const PITR_BLOCK_FROM_CALL: u32 = 5;

/// Archive recovery (recovery.signal) whose Barman becomes unreachable mid-way: our binary exits
/// 255, PostgreSQL stops with a FATAL instead of promoting with data missing; started again once
/// Barman is back (same port), it resumes, reaches the primary's row count and promotes.
/// Writes `script` as `CTL/restore.sh` (mode 0755) and returns the
/// postgresql.conf line that makes it the restore_command.
fn restore_wrapper(ctl: &Path, script: String) -> Result<String, Failed> {
    let wrapper = ctl.join("restore.sh");
    fs::write(&wrapper, script).map_err(|e| fail(e.to_string()))?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(e.to_string()))?;
    Ok(format!(
        "restore_command = '/bin/sh {} %f %p'",
        wrapper.display()
    ))
}

fn pitr_stops_when_barman_unreachable(st: &Stack) -> TestResult {
    let sshd = Sshd::start(st, "pitr", &[])?;
    let work = st.workdir("pitr_unreachable")?;
    // the wrapper's state, written by postgres
    let ctl = work.join("ctl");
    fs::create_dir(&ctl).map_err(|e| fail(format!("{}: {e}", ctl.display())))?;
    run(
        Command::new("chown").args(["postgres:postgres", &ctl.to_string_lossy()]),
        CALL_TIMEOUT,
    )?
    .expect_code(0)?;
    // -p 0: every call is a miss that connects (no spool hit could hide the outage)
    let argv = st.restore_argv(
        &sshd.port,
        Path::new(st.get("PG_SSH_KEY")),
        &st.config("gzip"),
        &format!("-p 0 --spool-dir {}", ctl.join("spool").display()),
    );
    let k = PITR_BLOCK_FROM_CALL;
    let conf = restore_wrapper(
        &ctl,
        format!(
            r#"#!/bin/sh
# restore_command of postgres::pitr_stops_when_barman_unreachable_then_resumes: counts the calls;
# the first call for a WAL segment from call {k} on waits (120 s at most) until the test has
# stopped Barman's sshd and created ./release, then runs barman-wal-restore as every call does.
d='{ctl}'
n=$(( $(cat "$d/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$d/count"
echo "$n $1" >>"$d/calls"
case $1 in
    ????????????????????????) segment=yes ;;
    *) segment=no ;;
esac
if [ "$n" -ge {k} ] && [ "$segment" = yes ] && [ ! -e "$d/blocked" ]; then
    echo "$n $1" >"$d/blocked.tmp" && mv "$d/blocked.tmp" "$d/blocked"
    i=0
    while [ ! -e "$d/release" ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
fi
exec {argv} "$1" "$2"
"#,
            ctl = ctl.display()
        ),
    )?;
    let fatal = "child process exited with exit code 255";
    with_cluster_expecting(
        st,
        "pitr-unreachable",
        "recovery.signal",
        &conf,
        &[fatal],
        |pg| {
            // 1. Recovery runs until the call that will find Barman gone; then Barman goes.
            let mut polls = 0u32;
            let blocked = wait_until(
                RECOVERY_TIMEOUT,
                &format!("restore_command call {k} or later for a segment"),
                || {
                    if let Ok(s) = fs::read_to_string(ctl.join("blocked")) {
                        return Ok(Some(s.trim().to_string()));
                    }
                    polls += 1;
                    if polls.is_multiple_of(50) && !pg.running() {
                        return Err(fail(format!(
                            "server died before call {k}:\n{}",
                            pg.log_tail()
                        )));
                    }
                    Ok(None)
                },
            )?;
            let (call, seg) = blocked
                .split_once(' ')
                .ok_or_else(|| fail(format!("blocked: {blocked:?}")))?;
            let restored = pg.log_text().matches("restored log file \"").count();
            if restored < 2 {
                return Err(fail(format!(
                    "only {restored} segments restored before call {call}: not mid-recovery\n{}",
                    pg.log_tail()
                )));
            }
            sshd.stop()?;
            fs::write(ctl.join("release"), "").map_err(|e| fail(e.to_string()))?;
            let released = Instant::now();
            wait_until(
                Duration::from_secs(120),
                "PostgreSQL to stop on the fatal restore_command status",
                || {
                    let log = pg.log_text();
                    if let Some(end) = ["selected new timeline ID", "archive recovery complete"]
                        .into_iter()
                        .find(|l| log.contains(l))
                    {
                        return Err(fail(format!(
                            "recovery ended early although Barman was unreachable (`{end}`):\n{}",
                            pg.log_tail()
                        )));
                    }
                    Ok((!pg.running()).then_some(()))
                },
            )?;
            let stopped_after = released.elapsed();
            let log1 = pg.log_text();
            for needle in [
                format!("could not restore file \"{seg}\" from archive: {fatal}"),
                "stopping recovery instead of ending it early".to_string(),
            ] {
                if !log1.contains(&needle) {
                    return Err(fail(format!(
                        "stopped, but the log lacks `{needle}`:\n{}",
                        pg.log_tail()
                    )));
                }
            }
            for promoted in ["selected new timeline ID", "archive recovery complete"] {
                if log1.contains(promoted) {
                    return Err(fail(format!(
                        "recovery ended early although Barman was unreachable (`{promoted}`):\n{}",
                        pg.log_tail()
                    )));
                }
            }
            if !pg.data.join("recovery.signal").exists() {
                return Err(fail("recovery.signal is gone: the server promoted"));
            }
            // 2. Barman back on the same port, PostgreSQL started again: recovery resumes.
            sshd.restart()?;
            let offset = log1.len();
            let restarted = Instant::now();
            pg.start()?;
            pg.wait_promoted(st.get("ROWS"))?;
            let resumed_in = restarted.elapsed();
            let text = pg.log_text();
            let log2 = text.get(offset..).unwrap_or("");
            for needle in [
                format!("restored log file \"{seg}\" from archive"),
                "selected new timeline ID: 2".to_string(),
                "archive recovery complete".to_string(),
            ] {
                if !log2.contains(&needle) {
                    return Err(fail(format!(
                        "after the restart the log lacks `{needle}`:\n{}",
                        pg.log_tail()
                    )));
                }
            }
            let calls = fs::read_to_string(ctl.join("calls"))
                .unwrap_or_default()
                .lines()
                .count();
            eprintln!(
                "FAULT-MATRIX | real stack: Barman's sshd stopped mid-way through an archive \
                 recovery (PostgreSQL 15, recovery.signal, restore_command -p 0, default \
                 --on-failure=auto) | 1 | call {call} for {seg} after {restored} segments \
                 restored: exit 255, PostgreSQL stopped with FATAL {stopped_after:.1?} after the \
                 outage, no promotion | restarted with Barman back on the same port: resumed at \
                 {seg}, promoted to timeline 2 with the primary's {} rows in {resumed_in:.1?} \
                 ({calls} restore_command calls in all)",
                st.get("ROWS")
            );
            Ok(())
        },
    )
}

// ------------------------------------------------------------------------------------------------
// Cluster identity (issue 15): two clusters, two servers of one Barman config

/// A PITR of cluster bravo whose restore_command names cluster angus's server: the first segment
/// is angus's copy, refused against bravo's pg_control, and recovery stops (255) instead of
/// promoting; with the line corrected and PostgreSQL started again, it recovers to bravo's rows.
fn pitr_naming_another_clusters_server(st: &Stack) -> TestResult {
    let cfg = st.get("BRAVO_CONFIG").to_string();
    let opts = "-p 4 --spool-dir @SPOOL@";
    let wrong = st.restore_command(&cfg, opts);
    let right = format!(
        "{} %f %p",
        st.restore_argv_for(
            st.get("BRAVO_SERVER"),
            st.get("SSH_PORT"),
            Path::new(st.get("PG_SSH_KEY")),
            &cfg,
            opts
        )
    );
    let fatal = "child process exited with exit code 255";
    let pg = Pg::from_backup(
        st,
        st.get("BRAVO_BASE_BACKUP"),
        "pitr-wrong-server",
        "recovery.signal",
        &format!("restore_command = '{wrong}'"),
    )?;
    let spool = pg.spool();
    let r = (|| {
        let started = Instant::now();
        pg.start()?;
        wait_until(
            RECOVERY_TIMEOUT,
            "PostgreSQL to stop on the foreign segment",
            || {
                let log = pg.log_text();
                if log.contains("selected new timeline ID")
                    || log.contains("archive recovery complete")
                {
                    return Err(fail(format!(
                        "bravo promoted on angus's WAL:\n{}",
                        pg.log_tail()
                    )));
                }
                // `pg_ctl start -W` returns before the server runs: wait for its own last line.
                Ok((log.contains("database system is shut down") && !pg.running()).then_some(()))
            },
        )?;
        let stopped_in = started.elapsed();
        let log1 = pg.log_text();
        for needle in [
            fatal,
            "belongs to database system",
            "wrong SERVER_NAME",
            "stopping recovery instead of ending it early",
        ] {
            if !log1.contains(needle) {
                return Err(fail(format!(
                    "the log lacks `{needle}`:\n{}",
                    pg.log_tail()
                )));
            }
        }
        if log1.contains("restored log file") {
            return Err(fail(format!(
                "a segment was restored from the wrong server:\n{}",
                pg.log_tail()
            )));
        }
        if !pg.data.join("recovery.signal").exists() {
            return Err(fail("recovery.signal is gone: the server promoted"));
        }
        // The DBA corrects restore_command and starts PostgreSQL again.
        let auto = pg.data.join("postgresql.auto.conf");
        let text = fs::read_to_string(&auto).map_err(|e| fail(e.to_string()))?;
        let wrong_line = wrong.replace("@SPOOL@", &spool.to_string_lossy());
        if !text.contains(&wrong_line) {
            return Err(fail(format!(
                "{} lacks the restore_command",
                auto.display()
            )));
        }
        let fixed = text.replace(
            &wrong_line,
            &right.replace("@SPOOL@", &spool.to_string_lossy()),
        );
        fs::write(&auto, fixed).map_err(|e| fail(e.to_string()))?;
        let restarted = Instant::now();
        pg.start()?;
        pg.wait_promoted(st.get("BRAVO_ROWS"))?;
        eprintln!(
            "FAULT-MATRIX | real stack: PITR of cluster bravo with restore_command naming cluster \
             angus's server (PostgreSQL 15, recovery.signal, -p 4, --on-failure=auto) | 1 | exit \
             255 on the first segment, PostgreSQL stopped in {stopped_in:.1?}, nothing restored, no \
             promotion | corrected and started again: promoted with bravo's {} rows in {:.1?}",
            st.get("BRAVO_ROWS"),
            restarted.elapsed()
        );
        Ok(())
    })();
    let r = r.and_then(|()| pg.check_log_clean(&[fatal]));
    pg.stop_and_remove();
    r
}

/// Standbys of clusters angus and bravo share one spool with `--async -p 4`, one started after
/// the other, in both orders: each replays to its own rows, every segment it was given is
/// byte-identical to its own cluster's archive, and no call waits past --io-timeout.
fn two_standbys_share_one_async_spool(st: &Stack) -> TestResult {
    let io_timeout = 10u64;
    let mut lines = Vec::new();
    for order in ["angus first", "bravo first"] {
        let n = st.seq.fetch_add(1, Ordering::SeqCst);
        let spool = st
            .dir
            .join("spool")
            .join(format!("shared-{}-{n}", std::process::id()));
        run(
            &mut as_postgres(&["mkdir", "-m", "0700", &spool.to_string_lossy()]),
            CALL_TIMEOUT,
        )?
        .expect_code(0)?;
        let opts = format!(
            "--async --async-idle 3 -p 4 --io-timeout {io_timeout} --spool-dir {}",
            spool.display()
        );
        let key = Path::new(st.get("PG_SSH_KEY"));
        let mut clusters = Vec::new();
        for (label, server, cfg, base, orig, rows) in [
            (
                "angus",
                SERVER,
                st.config("zstd"),
                st.get("PG_BASE_BACKUP"),
                st.get("WAL_ORIG_DIR"),
                st.get("ROWS"),
            ),
            (
                "bravo",
                st.get("BRAVO_SERVER"),
                st.get("BRAVO_CONFIG").to_string(),
                st.get("BRAVO_BASE_BACKUP"),
                st.get("BRAVO_ORIG_DIR"),
                st.get("BRAVO_ROWS"),
            ),
        ] {
            let ctl = st.workdir(&format!("shared-spool-{label}"))?;
            run(
                Command::new("chown").args(["postgres:postgres", &ctl.to_string_lossy()]),
                CALL_TIMEOUT,
            )?
            .expect_code(0)?;
            let argv = st.restore_argv_for(server, st.get("SSH_PORT"), key, &cfg, &opts);
            let conf = restore_wrapper(
                &ctl,
                format!(
                    r#"#!/bin/sh
# restore_command of {label}: times each call, and compares each delivered segment with the
# cluster's own archive ({orig}).
d='{ctl}'
s=$(date +%s%N)
{argv} "$1" "$2"
rc=$?
e=$(date +%s%N)
case $1 in
    ????????????????????????)
        if [ "$rc" = 0 ] && ! cmp -s "$2" "{orig}/$1"; then echo "$1" >>"$d/mismatch"; fi ;;
esac
echo "$1 $rc $(( (e - s) / 1000000 ))" >>"$d/calls"
exit $rc
"#,
                    ctl = ctl.display()
                ),
            )?;
            let pg = Pg::from_backup(
                st,
                base,
                &format!("shared-{label}-{n}"),
                "standby.signal",
                &conf,
            )?;
            clusters.push((label, pg, ctl, rows));
        }
        if order == "bravo first" {
            clusters.reverse();
        }
        let r = (|| {
            let (first, second) = (&clusters[0], &clusters[1]);
            first.1.start()?;
            wait_until(
                RECOVERY_TIMEOUT,
                "the first standby's first segment",
                || {
                    Ok(fs::read_to_string(first.2.join("calls"))
                        .is_ok_and(|c| c.lines().any(|l| l.split(' ').nth(1) == Some("0")))
                        .then_some(()))
                },
            )?;
            second.1.start()?;
            for (_, pg, _, rows) in &clusters {
                pg.wait_standby_rows(rows)?;
            }
            let mut said = Vec::new();
            for (label, pg, ctl, _) in &clusters {
                pg.stop()?;
                if let Ok(m) = fs::read_to_string(ctl.join("mismatch")) {
                    return Err(fail(format!(
                        "{label} was given segments that are not its own: {m}"
                    )));
                }
                let calls = fs::read_to_string(ctl.join("calls")).unwrap_or_default();
                let ms: Vec<u64> = calls
                    .lines()
                    .filter_map(|l| l.split(' ').nth(2)?.parse().ok())
                    .collect();
                let delivered = calls
                    .lines()
                    .filter(|l| {
                        let mut f = l.split(' ');
                        f.next().is_some_and(|n| n.len() == 24) && f.next() == Some("0")
                    })
                    .count();
                let slowest = ms.iter().copied().max().unwrap_or(0);
                if slowest >= io_timeout * 1000 {
                    return Err(fail(format!(
                        "{label}: a call took {slowest} ms, past --io-timeout {io_timeout} s:\n{calls}"
                    )));
                }
                said.push(format!(
                    "{label}: {delivered} segments, all its own, {} calls, slowest {slowest} ms",
                    ms.len()
                ));
                pg.check_log_clean(&[])?;
            }
            lines.push(format!("{order}: {}", said.join("; ")));
            wait_until(Duration::from_secs(40), "the workers to leave", || {
                Ok(async_workers(&spool).is_empty().then_some(()))
            })
        })();
        for (_, pg, _, _) in &clusters {
            if r.is_ok() || std::env::var("BWR_KEEP_STACK").as_deref() != Ok("1") {
                pg.stop_and_remove();
            }
        }
        r?;
    }
    eprintln!(
        "FAULT-MATRIX | real stack: two standbys (clusters angus and bravo, PostgreSQL 15) sharing \
         one spool with --async -p 4 --io-timeout {io_timeout} | 2 | {} | each replayed to its own \
         rows",
        lines.join(" / ")
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Trials

fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    let mut v: Vec<Trial> = Vec::new();
    let mut add = |name: String, f: Box<dyn FnOnce(&Stack) -> TestResult + Send>| {
        let sh = Arc::clone(shared);
        let trial_name = name.clone();
        v.push(Trial::ignorable_test(name, move || {
            if let Some(reason) = &sh.skip {
                return Ok(Completion::ignored_with(reason.clone()));
            }
            let st = sh.stack()?;
            let start = Instant::now();
            let r = f(st).map(|()| Completion::Completed);
            if let Ok(mut t) = sh.timings.lock() {
                t.push((start.elapsed(), trial_name.clone()));
            }
            r
        }));
    };

    // PostgreSQL 15 with restore_command = our binary (longest trials first).
    add(
        "postgres::pitr_stops_when_barman_unreachable_then_resumes".into(),
        Box::new(pitr_stops_when_barman_unreachable),
    );
    // Faults injected into the real sshd, and into our binary.
    add(
        "fault::sigkill_during_p8_fetch".into(),
        Box::new(sigkill_during_p8_fetch),
    );
    add(
        "fault::sshd_killed_mid_stream".into(),
        Box::new(sshd_killed_mid_stream),
    );
    add(
        "fault::sshd_stalled_mid_stream".into(),
        Box::new(sshd_stalled_mid_stream),
    );
    add(
        "fault::sshd_session_stalled_reconnects".into(),
        Box::new(sshd_session_stalled_reconnects),
    );
    add(
        "postgres::standby_p8_keep_compression".into(),
        Box::new(|st| {
            let cmd = st.restore_command(
                &st.config("zstd"),
                "-p 8 --keep-compression --spool-dir @SPOOL@",
            );
            with_cluster(
                st,
                "standby-p8",
                "standby.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| pg.wait_standby_rows(st.get("ROWS")),
            )
        }),
    );
    add(
        "postgres::archive_recovery_async_p8".into(),
        Box::new(|st| {
            // A PITR to the end of the archive through --async: the worker keeps the spool
            // ahead of replay; once the server promoted and stopped asking, it leaves.
            let cmd = st.restore_command(
                &st.config("zstd"),
                "--async --async-idle 3 -p 8 --keep-compression --spool-dir @SPOOL@",
            );
            with_cluster(
                st,
                "pitr-async",
                "recovery.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| {
                    pg.wait_promoted(st.get("ROWS"))?;
                    pg.expect_log("archive recovery complete")?;
                    expect_worker_gone(&pg.spool(), Duration::from_secs(3))
                },
            )
        }),
    );
    add(
        "postgres::standby_async_direct_read".into(),
        Box::new(|st| {
            // A standby through --async --direct-read: it reaches the primary's rows and keeps
            // asking at the archive's head; after the server stops, the worker leaves.
            let cmd = st.restore_command(
                &st.config("gzip"),
                "--async --async-idle 3 --direct-read -p 4 --spool-dir @SPOOL@",
            );
            with_cluster(
                st,
                "standby-async",
                "standby.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| {
                    pg.wait_standby_rows(st.get("ROWS"))?;
                    if async_workers(&pg.spool()).len() != 1 {
                        return Err(fail("one --async worker serves a running standby"));
                    }
                    pg.stop()?;
                    expect_worker_gone(&pg.spool(), Duration::from_secs(3))
                },
            )
        }),
    );
    add(
        "identity::pitr_naming_another_clusters_server_stops_then_recovers".into(),
        Box::new(pitr_naming_another_clusters_server),
    );
    add(
        "identity::two_standbys_share_one_async_spool".into(),
        Box::new(two_standbys_share_one_async_spool),
    );
    add(
        "postgres::standby_plain".into(),
        Box::new(|st| {
            let cmd = st.restore_command(&st.config("xz"), "");
            with_cluster(
                st,
                "standby-plain",
                "standby.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| pg.wait_standby_rows(st.get("ROWS")),
            )
        }),
    );
    add(
        "postgres::pitr_to_restore_point".into(),
        Box::new(|st| {
            let cmd = st.restore_command(&st.config("lz4"), "-p 4 --spool-dir @SPOOL@");
            let conf = format!(
                "restore_command = '{cmd}'\nrecovery_target_name = '{}'\nrecovery_target_action = 'promote'",
                st.get("TARGET_NAME")
            );
            with_cluster(st, "pitr-target", "recovery.signal", &conf, |pg| {
                pg.wait_promoted(st.get("TARGET_ROWS"))?;
                pg.expect_log("recovery stopping at restore point")?;
                pg.expect_log("archive recovery complete")
            })
        }),
    );
    add(
        "postgres::archive_recovery_to_end".into(),
        Box::new(|st| {
            // Ends when the next segment is "not available" (exit 1): a wrong code would abort it.
            let cmd = st.restore_command(&st.config("bzip2"), "-p 8 --spool-dir @SPOOL@");
            with_cluster(
                st,
                "pitr-end",
                "recovery.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| {
                    pg.wait_promoted(st.get("ROWS"))?;
                    pg.expect_log("selected new timeline ID: 2")?;
                    pg.expect_log("archive recovery complete")
                },
            )
        }),
    );
    add(
        "postgres::archive_recovery_direct_read_p8".into(),
        Box::new(|st| {
            // The same recovery to the end of the archive through --direct-read -p 8, by a
            // log-all account (key owned by postgres): the segments must come from cat, not
            // from barman get-wal.
            let account = st.forced_key("pg-direct", "log-all", "postgres")?;
            let cmd = st.restore_command_keyed(
                &account.key,
                &st.config("gzip"),
                "--direct-read -p 8 --spool-dir @SPOOL@",
            );
            with_cluster(
                st,
                "pitr-direct",
                "recovery.signal",
                &format!("restore_command = '{cmd}'"),
                |pg| {
                    pg.wait_promoted(st.get("ROWS"))?;
                    pg.expect_log("archive recovery complete")?;
                    // every segment the base backup needs (from its own on) was read directly
                    let segs = st.list("WAL_SEGMENTS");
                    let from = segs
                        .iter()
                        .position(|s| st.get("WAL_BACKUP_LABEL").starts_with(s.as_str()))
                        .ok_or_else(|| fail("backup label names no archived segment"))?;
                    let missing = next_missing(st);
                    account.expect_direct(&segs[from..], None, &[&missing, ".history"])
                },
            )
        }),
    );
    add(
        "postgres::recovery_follows_timeline_switch".into(),
        Box::new(|st| {
            // The "tl" archive holds timeline 1, 00000002.history and timeline 2: with
            // recovery_target_timeline = latest, recovery must fetch the history and follow it.
            let cmd = st.restore_command(
                st.get("TL_CONFIG"),
                "-p 8 --keep-compression --spool-dir @SPOOL@",
            );
            let conf = format!("restore_command = '{cmd}'\nrecovery_target_timeline = 'latest'");
            with_cluster(st, "pitr-tl", "recovery.signal", &conf, |pg| {
                pg.wait_promoted(st.get("TL_ROWS"))?;
                pg.expect_log("selected new timeline ID: 3")
            })
        }),
    );

    // Every compression, byte-identical to what PostgreSQL archived, through the spool as
    // PostgreSQL would call us.
    for comp in COMPRESSIONS {
        for p in [0u32, 1, 8, 16] {
            for keep in [false, true] {
                let name = format!(
                    "fetch::{comp}::p{p}{}",
                    if keep { "::keep_compression" } else { "" }
                );
                add(
                    name.clone(),
                    Box::new(move |st| {
                        let work = st.workdir(&name)?;
                        let ps = p.to_string();
                        let mut opts = vec!["-p", ps.as_str()];
                        if keep {
                            opts.push("--keep-compression");
                        }
                        // p0/p1: every call goes to the server, a few suffice; p8/p16: through
                        // the spool up to the end of the archive (p8: with one refill).
                        let w = match p {
                            0 | 1 => Window::AroundData(3),
                            8 => Window::AtEnd(9),
                            _ => Window::AtEnd(8),
                        };
                        let names = window(st, w)?;
                        fetch_sequence(
                            st,
                            Tool::Ours,
                            &st.config(comp),
                            &names,
                            &st.orig(),
                            &opts,
                            Some(&next_missing(st)),
                            &work,
                        )
                    }),
                );
            }
        }
    }

    // --direct-read: the stored files read with `cat` over the session, every compression
    // byte-identical (-p 8 for all, -p 0/1/16 for two); a log-all account records what ran, so
    // the trial proves no `barman get-wal` was asked for a file that direct read can settle.
    let direct_cases = COMPRESSIONS.iter().map(|&c| (c, 8u32)).chain(
        ["zstd", "none"]
            .into_iter()
            .flat_map(|c| [0u32, 1, 16].map(|p| (c, p))),
    );
    for (comp, p) in direct_cases {
        let name = format!("direct::{comp}::p{p}");
        add(
            name.clone(),
            Box::new(move |st| {
                let work = st.workdir(&name)?;
                let account = st.forced_key("direct", "log-all", "root")?;
                let ps = p.to_string();
                let opts = ["--direct-read", "-p", ps.as_str()];
                let w = match p {
                    0 | 1 => Window::AroundData(3),
                    8 => Window::AtEnd(9),
                    _ => Window::AtEnd(8),
                };
                let names = window(st, w)?;
                let missing = next_missing(st);
                fetch_sequence(
                    st,
                    Tool::OursKeyed(&account.key),
                    &st.config(comp),
                    &names,
                    &st.orig(),
                    &opts,
                    Some(&missing),
                    &work,
                )?;
                // the missing name is confirmed by Barman, nothing else is asked of it
                account.expect_direct(&names, Some("wals/0000000100000000"), &[&missing])?;
                let show = account.count(|c| c.contains(" show-server "));
                // with a spool (-p 1 and up) the layout is learnt once and cached there
                if p > 0 && show != 1 {
                    return Err(fail(format!(
                        "show-server ran {show} times, want 1; {}",
                        account.describe()
                    )));
                }
                Ok(())
            }),
        );
    }
    add(
        "direct::incoming_segment".into(),
        Box::new(|st| {
            // Config "incoming": two segments Barman received but never archived.
            let work = st.workdir("direct_incoming")?;
            let cfg = st.get("INCOMING_CONFIG").to_string();
            let names = st.list("INCOMING_WALS");
            // the segment after them is archived in the other configs, not in this one
            let segs = st.list("WAL_SEGMENTS");
            let last = names.last().cloned().unwrap_or_default();
            let after = segs
                .iter()
                .position(|s| *s == last)
                .and_then(|i| segs.get(i + 1))
                .cloned()
                .ok_or_else(|| fail("no segment after INCOMING_WALS"))?;
            for p in ["0", "8"] {
                let account = st.forced_key("incoming", "log-all", "root")?;
                let sub = work.join(format!("p{p}"));
                fs::create_dir_all(sub.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
                fetch_sequence(
                    st,
                    Tool::OursKeyed(&account.key),
                    &cfg,
                    &names,
                    &st.orig(),
                    &["--direct-read", "-p", p],
                    Some(&after),
                    &sub,
                )?;
                account.expect_direct(&names, Some("incoming"), &[&after])?;
            }
            // Barman's own get-wal serves them from incoming/ too (the Python original)
            fetch_sequence(st, Tool::Oracle, &cfg, &names, &st.orig(), &[], None, &work)
        }),
    );
    add(
        "direct::timeline_history_p8".into(),
        Box::new(|st| {
            let work = st.workdir("direct_tl")?;
            let account = st.forced_key("tl", "log-all", "root")?;
            let names = st.list("TL_FILES");
            fetch_sequence(
                st,
                Tool::OursKeyed(&account.key),
                st.get("TL_CONFIG"),
                &names,
                Path::new(st.get("TL_ORIG_DIR")),
                &["--direct-read", "-p", "8"],
                Some("00000003.history"),
                &work,
            )?;
            // The first lookup, 00000002.history on a cold layout cache, is one get-wal: a
            // show-server would cost the same Barman start-up for one small file. With the layout
            // cached, the same lookup reads it from the top of wals/.
            fetch_sequence(
                st,
                Tool::OursKeyed(&account.key),
                st.get("TL_CONFIG"),
                &names[..1],
                Path::new(st.get("TL_ORIG_DIR")),
                &["--direct-read", "-p", "8"],
                None,
                &work,
            )?;
            let history_get_wals =
                account.count(|c| c.contains(" get-wal ") && c.contains(names[0].as_str()));
            if history_get_wals != 1 {
                return Err(fail(format!(
                    "want 1 get-wal for {} (the cold-cache lookup), got {history_get_wals}; {}",
                    names[0],
                    account.describe()
                )));
            }
            let asked = [names[0].as_str(), "00000003.history"];
            account.expect_direct(&names[..1], Some("wals"), &asked)?;
            // segments in their hash directories
            account.expect_direct(&names[1..], None, &asked)
        }),
    );
    add(
        "direct::restricted_account_falls_back".into(),
        Box::new(|st| {
            // authorized_keys forces a wrapper that runs `barman ...` only: cat and ls are
            // refused, every file must still arrive, through get-wal.
            let work = st.workdir("direct_restricted")?;
            let account = st.forced_key("restricted", "barman-only", "root")?;
            let cfg = st.config("gzip");
            let missing = next_missing(st);
            // -p 8: refused once, remembered in the spool's cache for the later calls
            let names = window(st, Window::AtEnd(9))?;
            fetch_sequence(
                st,
                Tool::OursKeyed(&account.key),
                &cfg,
                &names,
                &st.orig(),
                &["--direct-read", "-p", "8"],
                Some(&missing),
                &work,
            )?;
            let refused = account.count(|c| !c.starts_with("barman "));
            if !(1..=2).contains(&refused) {
                return Err(fail(format!(
                    "want 1 or 2 refused direct reads (cat, ls) before the cache says restricted, \
                     got {refused}; {}",
                    account.describe()
                )));
            }
            for name in &names {
                if !account
                    .commands()
                    .iter()
                    .any(|c| c.contains(" get-wal ") && c.contains(name.as_str()))
                {
                    return Err(fail(format!(
                        "{name} was not fetched with get-wal; {}",
                        account.describe()
                    )));
                }
            }
            let cache: Vec<String> = fs::read_dir(work.join("spool"))
                .map_err(|e| fail(e.to_string()))?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".bwr-layout."))
                .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            if cache.len() != 1 || cache[0].trim() != "restricted" {
                return Err(fail(format!("layout cache in the spool: {cache:?}")));
            }
            // -p 0 (no spool, nothing cached): every call finds out again, says so with -v
            let sub = work.join("p0");
            fs::create_dir_all(sub.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
            let seg = st
                .list("WAL_DATA_SEGMENTS")
                .last()
                .cloned()
                .unwrap_or_default();
            let out = run(
                &mut st.ours_keyed(
                    &account.key,
                    &cfg,
                    &["--direct-read", "-v", "--spool-dir", "no-spool"],
                    &seg,
                    DEST,
                    &sub,
                ),
                CALL_TIMEOUT,
            )?;
            out.expect_code(0)?;
            if !out.stderr.contains("direct read refused") {
                return Err(fail(format!(
                    "-v does not say that direct read was refused:\n{}",
                    out.describe()
                )));
            }
            compare_file(&sub.join(DEST), &st.orig().join(&seg))?;
            let names = window(st, Window::AroundData(3))?;
            fetch_sequence(
                st,
                Tool::OursKeyed(&account.key),
                &cfg,
                &names,
                &st.orig(),
                &["--direct-read", "-p", "0"],
                Some(&missing),
                &sub,
            )
        }),
    );

    // The Python barman-wal-restore as the compatibility oracle, on the same stack.
    for comp in COMPRESSIONS {
        for p in [0u32, 8] {
            for keep in [false, true] {
                let name = format!(
                    "oracle::{comp}::p{p}{}",
                    if keep { "::keep_compression" } else { "" }
                );
                add(
                    name.clone(),
                    Box::new(move |st| {
                        let work = st.workdir(&name)?;
                        let ps = p.to_string();
                        let mut opts = vec!["-p", ps.as_str()];
                        if keep {
                            opts.push("--keep-compression");
                        }
                        let names = window(st, Window::AroundData(3))?;
                        fetch_sequence(
                            st,
                            Tool::Oracle,
                            &st.config(comp),
                            &names,
                            &st.orig(),
                            &opts,
                            None,
                            &work,
                        )
                    }),
                );
            }
        }
    }

    // -z / -j: the server recompresses, the client decompresses.
    for (flag, comp) in [("-z", "zstd"), ("-j", "none")] {
        add(
            format!("fetch::server_recompress{flag}"),
            Box::new(move |st| {
                let work = st.workdir(flag)?;
                let names = window(st, Window::AroundData(2))?;
                fetch_sequence(
                    st,
                    Tool::Ours,
                    &st.config(comp),
                    &names,
                    &st.orig(),
                    &[flag],
                    None,
                    &work,
                )
            }),
        );
    }

    add(
        "cli::test_flag".into(),
        Box::new(|st| {
            let work = st.workdir("test_flag")?;
            let out = run(
                &mut st.ours(&st.config("zstd"), &["--test"], "DUMMY", "DUMMY", &work),
                CALL_TIMEOUT,
            )?;
            out.expect_code(0)?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr);
            if !text.contains("Ready to retrieve WAL files from the server angus") {
                return Err(fail(format!(
                    "--test output lacks the Ready line:\n{}",
                    out.describe()
                )));
            }
            // same answer from the reference
            let o = run(
                &mut st.oracle(&st.config("zstd"), &["--test"], "DUMMY", "DUMMY", &work),
                CALL_TIMEOUT,
            )?;
            o.expect_code(0)?;
            if !String::from_utf8_lossy(&o.stdout)
                .contains("Ready to retrieve WAL files from the server angus")
            {
                return Err(fail(format!("oracle --test output:\n{}", o.describe())));
            }
            Ok(())
        }),
    );
    add(
        "cli::unknown_server_exits_1".into(),
        Box::new(|st| {
            let work = st.workdir("unknown_server")?;
            let seg = &st.list("WAL_SEGMENTS")[3];
            for opts in [&[][..], &["-p", "8", "--spool-dir", "spool"][..]] {
                let mut c = st.ours_full(
                    st.get("SSH_PORT"),
                    "no_such_server",
                    &st.config("zstd"),
                    opts,
                    seg,
                    DEST,
                    &work,
                );
                run(&mut c, CALL_TIMEOUT)?.expect_code(1)?;
            }
            Ok(())
        }),
    );
    add(
        "cli::missing_wal_exits_1".into(),
        Box::new(|st| {
            let work = st.workdir("missing_wal")?;
            let missing = next_missing(st);
            for opts in [
                &[][..],
                &["-p", "8", "--spool-dir", "spool"][..],
                &["-p", "8", "--spool-dir", "spool", "--keep-compression"][..],
            ] {
                run(
                    &mut st.ours(&st.config("gzip"), opts, &missing, DEST, &work),
                    CALL_TIMEOUT,
                )?
                .expect_code(1)?;
                run(
                    &mut st.ours(&st.config("gzip"), opts, "00000009.history", DEST, &work),
                    CALL_TIMEOUT,
                )?
                .expect_code(1)?;
            }
            Ok(())
        }),
    );
    add(
        "cli::wal_dest_is_directory_exits_3".into(),
        Box::new(|st| {
            let work = st.workdir("dest_dir")?;
            let seg = &st.list("WAL_SEGMENTS")[3];
            run(
                &mut st.ours(&st.config("none"), &[], seg, "pg_wal", &work),
                CALL_TIMEOUT,
            )?
            .expect_code(3)
        }),
    );
    add(
        "fetch::backup_label_file".into(),
        Box::new(|st| {
            let work = st.workdir("backup_label")?;
            let names = vec![st.get("WAL_BACKUP_LABEL").to_string()];
            fetch_sequence(
                st,
                Tool::Ours,
                &st.config("xz"),
                &names,
                &st.orig(),
                &["-p", "8"],
                None,
                &work,
            )?;
            fetch_sequence(
                st,
                Tool::Ours,
                &st.config("xz"),
                &names,
                &st.orig(),
                &[],
                None,
                &work,
            )
        }),
    );

    // .partial from Barman's streaming directory, with and without -p.
    for p in ["0", "8"] {
        add(
            format!("partial::p{p}"),
            Box::new(move |st| {
                let work = st.workdir(&format!("partial_p{p}"))?;
                let partial = st.get("WAL_PARTIAL");
                let seg = next_missing(st);
                let spool = work.join("spool");
                let spool_s = spool.to_string_lossy().into_owned();
                for comp in ["zstd", "none"] {
                    for wal in [seg.as_str(), partial] {
                        let _ = fs::remove_file(work.join(DEST));
                        let out = run(
                            &mut st.ours(
                                &st.config(comp),
                                &["-P", "-p", p, "--spool-dir", &spool_s],
                                wal,
                                DEST,
                                &work,
                            ),
                            CALL_TIMEOUT,
                        )?;
                        out.expect_code(0).map_err(|e| {
                            fail(format!("-P {wal} ({comp}): {}", e.message().unwrap_or("")))
                        })?;
                        compare_file(&work.join(DEST), &st.orig().join(partial))?;
                    }
                    // without -P the segment is not available
                    run(
                        &mut st.ours(
                            &st.config(comp),
                            &["-p", p, "--spool-dir", &spool_s],
                            &seg,
                            DEST,
                            &work,
                        ),
                        CALL_TIMEOUT,
                    )?
                    .expect_code(1)?;
                }
                Ok(())
            }),
        );
    }
    add(
        "partial::oracle_p0".into(),
        Box::new(|st| {
            let work = st.workdir("partial_oracle")?;
            let out = run(
                &mut st.oracle(&st.config("zstd"), &["-P"], &next_missing(st), DEST, &work),
                CALL_TIMEOUT,
            )?;
            out.expect_code(0)?;
            compare_file(&work.join(DEST), &st.orig().join(st.get("WAL_PARTIAL")))
        }),
    );

    // Every kind of segment PostgreSQL 15 archives (issue 15: a complete segment must walk to its
    // end or to an XLOG_SWITCH followed by padding): told apart by pg_waldump, each delivered
    // byte-identical, raw and zstd.
    add(
        "walk::segment_kinds".into(),
        Box::new(|st| {
            let work = st.workdir("segment_kinds")?;
            let waldump = Path::new(st.get("PG_BIN")).join("pg_waldump");
            let records = |path: &Path| -> Result<String, Failed> {
                let out = Command::new(&waldump)
                    .arg(path)
                    .output()
                    .map_err(|e| fail(format!("pg_waldump: {e}")))?;
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            };
            let mut kinds: HashMap<&str, Vec<String>> = HashMap::new();
            for name in st.list("WAL_SEGMENTS") {
                let dump = records(&st.orig().join(&name))?;
                let switched = dump.contains("desc: SWITCH");
                let kind = if name == st.get("WAL_TIMEOUT_SEGMENT") {
                    "archive_timeout"
                } else if name == st.get("WAL_RESTART_SEGMENT") {
                    if !dump.contains("CHECKPOINT_SHUTDOWN") {
                        return Err(fail(format!("{name}: no shutdown checkpoint in it")));
                    }
                    "after a restart"
                } else if switched {
                    "pg_switch_wal"
                } else {
                    "full"
                };
                if kind == "archive_timeout" && !switched {
                    return Err(fail(format!("{name}: archive_timeout left no XLOG_SWITCH")));
                }
                kinds.entry(kind).or_default().push(name);
            }
            for kind in [
                "full",
                "pg_switch_wal",
                "archive_timeout",
                "after a restart",
            ] {
                if !kinds.contains_key(kind) {
                    return Err(fail(format!(
                        "the stack archived no segment of kind {kind}"
                    )));
                }
            }
            let all = st.list("WAL_SEGMENTS");
            for comp in ["none", "zstd"] {
                fetch_sequence(
                    st,
                    Tool::Ours,
                    &st.config(comp),
                    &all,
                    &st.orig(),
                    &["-p", "0"],
                    None,
                    &work,
                )
                .map_err(|e| fail(format!("{comp}: {}", e.message().unwrap_or(""))))?;
            }
            // The new timeline's first segment: the old timeline's WAL up to the switch, then the new.
            let tl: Vec<String> = st
                .list("TL_FILES")
                .into_iter()
                .filter(|n| n.len() == 24 && n.starts_with("00000002"))
                .collect();
            if tl.is_empty() {
                return Err(fail("no timeline 2 segment"));
            }
            let orig = PathBuf::from(st.get("TL_ORIG_DIR"));
            fetch_sequence(
                st,
                Tool::Ours,
                st.get("TL_CONFIG"),
                &tl,
                &orig,
                &["-p", "0"],
                None,
                &work,
            )
        }),
    );

    // Timeline switch: the history file and the new timeline's segment.
    for p in ["0", "8"] {
        for keep in [false, true] {
            let name = format!(
                "timeline::history_p{p}{}",
                if keep { "::keep_compression" } else { "" }
            );
            add(
                name.clone(),
                Box::new(move |st| {
                    let work = st.workdir(&name)?;
                    let mut opts = vec!["-p", p];
                    if keep {
                        opts.push("--keep-compression");
                    }
                    let names = st.list("TL_FILES");
                    let orig = PathBuf::from(st.get("TL_ORIG_DIR"));
                    fetch_sequence(
                        st,
                        Tool::Ours,
                        st.get("TL_CONFIG"),
                        &names,
                        &orig,
                        &opts,
                        Some("00000003.history"),
                        &work,
                    )?;
                    // and the oracle agrees on the history file
                    let hist = vec![st.get("TL_HISTORY").to_string()];
                    fetch_sequence(
                        st,
                        Tool::Oracle,
                        st.get("TL_CONFIG"),
                        &hist,
                        &orig,
                        &opts,
                        None,
                        &work,
                    )
                }),
            );
        }
    }

    // SSH side.
    add(
        "ssh::config_file_alias".into(),
        Box::new(|st| {
            let work = st.workdir("ssh_config")?;
            let seg = st.list("WAL_DATA_SEGMENTS").last().cloned().unwrap();
            let mut c = Command::new(BIN);
            c.current_dir(&work)
                .env("HOME", &st.home)
                .env_remove("SSH_AUTH_SOCK");
            c.args([
                "-F",
                st.get("SSH_CONFIG"),
                "-c",
                &st.config("snappy"),
                st.get("SSH_ALIAS"),
                SERVER,
                &seg,
                DEST,
            ]);
            run(&mut c, CALL_TIMEOUT)?.expect_code(0)?;
            compare_file(&work.join(DEST), &st.orig().join(&seg))
        }),
    );
    add(
        "ssh::unknown_host_key_exits_2".into(),
        Box::new(|st| {
            let work = st.workdir("hostkey")?;
            // known_hosts naming the right host with another key (the client's own public key)
            let pubkey = fs::read_to_string(format!("{}.pub", st.get("SSH_KEY")))
                .map_err(|e| fail(e.to_string()))?;
            let mut fields = pubkey.split_whitespace();
            let (kt, kb) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            let kh = work.join("known_hosts");
            fs::write(
                &kh,
                format!("[127.0.0.1]:{} {kt} {kb}\n", st.get("SSH_PORT")),
            )
            .map_err(|e| fail(e.to_string()))?;
            let seg = &st.list("WAL_SEGMENTS")[3];
            let mut c = Command::new(BIN);
            c.current_dir(&work)
                .env("HOME", &st.home)
                .env_remove("SSH_AUTH_SOCK");
            c.args([
                "-U",
                "barman",
                "--port",
                st.get("SSH_PORT"),
                "-i",
                st.get("SSH_KEY"),
                "--known-hosts",
                &kh.to_string_lossy(),
            ]);
            c.args(["-c", &st.config("zstd"), HOST, SERVER, seg, DEST]);
            run(&mut c, CALL_TIMEOUT)?.expect_code(2)
        }),
    );
    add(
        "ssh::sshd_stopped_exits_2".into(),
        Box::new(|st| {
            // A second sshd of our own: works, then stopped; the main one stays up for the others.
            let work = st.workdir("sshd_stopped")?;
            let out = run(
                Command::new("bash").arg(stack_script()).args([
                    "sshd-start",
                    &st.dir.to_string_lossy(),
                    "stoppable",
                ]),
                Duration::from_secs(60),
            )?;
            out.expect_code(0)?;
            let port = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let cfg = st.config("zstd");
            let seg = st.list("WAL_SEGMENTS")[3].clone();
            let r = (|| {
                run(
                    &mut st.ours_to(&port, &cfg, &["--test"], "DUMMY", "DUMMY", &work),
                    CALL_TIMEOUT,
                )?
                .expect_code(0)?;
                run(
                    &mut st.ours_to(&port, &cfg, &[], &seg, DEST, &work),
                    CALL_TIMEOUT,
                )?
                .expect_code(0)?;
                compare_file(&work.join(DEST), &st.orig().join(&seg))
            })();
            let stop = run(
                Command::new("bash").arg(stack_script()).args([
                    "sshd-stop",
                    &st.dir.to_string_lossy(),
                    "stoppable",
                ]),
                Duration::from_secs(60),
            );
            r?;
            stop?.expect_code(0)?;
            for opts in [
                &["--connect-timeout", "5"][..],
                &["-p", "8", "--spool-dir", "spool"][..],
                &["--test"][..],
            ] {
                let out = run(
                    &mut st.ours_to(&port, &cfg, opts, &seg, DEST, &work),
                    Duration::from_secs(60),
                )?;
                out.expect_code(2)?;
            }
            Ok(())
        }),
    );

    for (name, trial) in ssh_config_trials::trials() {
        add(name.into(), Box::new(trial));
    }
    for (name, trial) in logging_trials::trials() {
        add(name.into(), Box::new(trial));
    }
    v
}

fn main() {
    let args = Arguments::from_args();
    let missing = missing_prerequisites();
    let mut skip = None;
    if env_is("BWR_REAL_STACK", &["skip", "0", "off"]) && !required() {
        skip = Some("BWR_REAL_STACK=skip".to_string());
    } else if !missing.is_empty() {
        let msg = format!(
            "real-stack prerequisites missing: {} (run scripts/install-test-deps.sh as root, or scripts/test.sh)",
            missing.join(", ")
        );
        if required() {
            eprintln!("ERROR: {msg}");
        } else {
            eprintln!(
                "\n************************************************************\n\
                       SKIPPING the real-stack tests: {msg}\n\
                       (set CI=true or BWR_REAL_STACK=require to make this a failure)\n\
                       ************************************************************\n"
            );
            skip = Some(msg);
        }
    }
    let shared = Arc::new(Shared {
        cell: OnceLock::new(),
        skip,
        timings: Default::default(),
    });
    if shared.skip.is_none() && !missing.is_empty() {
        // required and missing: every trial fails with the reason (the stack is never attempted)
        let _ = shared.cell.set(Err(format!(
            "prerequisites missing: {}",
            missing.join(", ")
        )));
    }
    let conclusion = libtest_mimic::run(&args, trials(&shared));
    if let Some(Ok(stack)) = shared.cell.get() {
        stack.teardown();
    }
    if let Ok(mut t) = shared.timings.lock() {
        if !t.is_empty() {
            t.sort_by_key(|e| std::cmp::Reverse(e.0));
            let total: Duration = t.iter().map(|x| x.0).sum();
            let n = if env_is("BWR_TIMINGS", &["1", "all"]) {
                t.len()
            } else {
                8
            };
            let top: Vec<String> = t
                .iter()
                .take(n)
                .map(|(d, n)| format!("{n} {d:.1?}"))
                .collect();
            eprintln!(
                "real_stack: {} trials took {total:.1?} in all; slowest: {}",
                t.len(),
                top.join(", ")
            );
        }
    }
    conclusion.exit();
}
