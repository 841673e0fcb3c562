//! The stack of `fixtures/real-stack/stack.sh` as the trials see it: its prerequisites, bringing
//! it up (or reusing one, `BWR_STACK_DIR`) and down, what `stack.env` says, a work directory per
//! trial, the command lines of our binary, of the Python reference and of PostgreSQL's
//! restore_command, and accounts whose commands are logged (`forced-key`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::common::{is_root, BIN};
use crate::run::{fail, run, ExpectCode, TestResult};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
pub const SERVER: &str = "angus";
pub const HOST: &str = "127.0.0.1";
/// Upper bound for one client call (a hang is a failure, not a stuck suite).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
pub const COMPRESSIONS: [&str; 7] = ["none", "gzip", "bzip2", "xz", "zstd", "lz4", "snappy"];
/// WAL_DEST as PostgreSQL passes it (%p, relative to the data directory).
pub const DEST: &str = "pg_wal/RECOVERYXLOG";

// ------------------------------------------------------------------------------------------------
// Prerequisites

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

pub fn stack_script() -> PathBuf {
    Path::new(MANIFEST_DIR).join("fixtures/real-stack/stack.sh")
}

/// What is missing for the real stack, or empty.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
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
// The stack

pub struct Stack {
    pub dir: PathBuf,
    env: HashMap<String, String>,
    /// Copy of the binary under test that the postgres user can execute.
    pg_bin: PathBuf,
    /// Empty HOME for our binary run as root: nothing of /root/.ssh leaks in.
    pub home: PathBuf,
    torn_down: AtomicBool,
    /// Numbers the trials' directories, keys and sshds apart.
    pub seq: AtomicUsize,
}

impl Stack {
    pub fn up() -> Result<Stack, String> {
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

    pub fn teardown(&self) {
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

    pub fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("stack.env has no {k}"))
    }
    pub fn list(&self, k: &str) -> Vec<String> {
        self.get(k).split_whitespace().map(str::to_string).collect()
    }
    pub fn config(&self, comp: &str) -> String {
        self.get(&format!("BARMAN_CONFIG_{comp}")).to_string()
    }
    pub fn orig(&self) -> PathBuf {
        PathBuf::from(self.get("WAL_ORIG_DIR"))
    }

    /// A fresh work directory for one trial (with pg_wal/ like a data directory).
    pub fn workdir(&self, name: &str) -> Result<PathBuf, Failed> {
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
    pub fn ours(&self, cfg: &str, opts: &[&str], wal: &str, dest: &str, cwd: &Path) -> Command {
        self.ours_full(self.get("SSH_PORT"), SERVER, cfg, opts, wal, dest, cwd)
    }
    /// Our binary with another client key (an account made by `stack.sh forced-key`).
    pub fn ours_keyed(
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
    pub fn ours_to(
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
    pub fn ours_full(
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
    pub fn ours_with(
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
    pub fn oracle(&self, cfg: &str, opts: &[&str], wal: &str, dest: &str, cwd: &Path) -> Command {
        self.oracle_at("ORACLE", "ORACLE_SSH_PORT", cfg, opts, wal, dest, cwd)
    }
    /// Debian's Python barman-wal-restore 3.4.0 against Debian's Barman 3.4.0 (sshd "debian").
    pub fn debian_oracle(
        &self,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        self.oracle_at(
            "DEBIAN_ORACLE",
            "DEBIAN_SSH_PORT",
            cfg,
            opts,
            wal,
            dest,
            cwd,
        )
    }
    /// Ours against Debian's Barman 3.4.0.
    pub fn ours_debian(
        &self,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        self.ours_to(self.get("DEBIAN_SSH_PORT"), cfg, opts, wal, dest, cwd)
    }
    /// The Python `program` (a stack.env key) against the sshd on port `port` (a key).
    #[allow(clippy::too_many_arguments)]
    fn oracle_at(
        &self,
        program: &str,
        port: &str,
        cfg: &str,
        opts: &[&str],
        wal: &str,
        dest: &str,
        cwd: &Path,
    ) -> Command {
        let mut c = Command::new(self.get(program));
        c.current_dir(cwd).env(
            "PATH",
            format!("{}:/usr/bin:/bin", self.get("SSH_WRAPPER_DIR")),
        );
        c.args(["-U", "barman", "--port", self.get(port), "-c", cfg])
            .args(opts)
            .args([HOST, SERVER, wal, dest]);
        c
    }
    /// Command line for PostgreSQL's restore_command (run by postgres: its own key copy).
    pub fn restore_command(&self, cfg: &str, opts: &str) -> String {
        self.restore_command_keyed(Path::new(self.get("PG_SSH_KEY")), cfg, opts)
    }
    /// Same with another key readable by postgres (`forced_key(.., Owner::Postgres)`).
    pub fn restore_command_keyed(&self, key: &Path, cfg: &str, opts: &str) -> String {
        format!(
            "{} %f %p",
            self.restore_argv(self.get("SSH_PORT"), key, cfg, opts)
        )
    }
    /// Our binary as postgres runs it, to sshd `port`, up to (not including) WAL_NAME WAL_DEST.
    pub fn restore_argv(&self, port: &str, key: &Path, cfg: &str, opts: &str) -> String {
        self.restore_argv_for(SERVER, port, key, cfg, opts)
    }
    /// [`Stack::restore_argv`] for another Barman server (`bravo`: the second cluster).
    pub fn restore_argv_for(
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
    pub fn forced_key(&self, name: &str, mode: &str, owner: &str) -> Result<ForcedKey, Failed> {
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
        let text = out.stdout.clone();
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
pub struct ForcedKey {
    pub key: PathBuf,
    log: PathBuf,
}

impl ForcedKey {
    /// The commands run so far, one per line, in order.
    pub fn commands(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "commands run by the account:\n{}",
            self.commands().join("\n")
        )
    }

    /// Every name was read with `cat` (in the named directory, if given) and none was asked of
    /// `barman get-wal` (nor peeked at through it); only `missing` names may be.
    pub fn expect_direct(
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

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
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
