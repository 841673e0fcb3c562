//! PostgreSQL 15 clusters made from the stack's base backups, with our binary as their
//! restore_command: set up, started, polled until recovery reaches its goal, their logs judged,
//! stopped; and the `--async` workers serving their spools.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::common::{closed_port, worker_log_in, Outcome};
use crate::run::{fail, run, wait_until, ExpectCode, TestResult};
use crate::sshd::{read_proc, Proc};
use crate::stack::{stack_script, Stack, CALL_TIMEOUT, HOST};

/// Upper bound for one PostgreSQL recovery to reach its goal.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(240);

pub struct Pg<'a> {
    st: &'a Stack,
    pub data: PathBuf,
    port: u16,
    log: PathBuf,
    name: String,
}

pub fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args).current_dir("/");
    c
}

impl<'a> Pg<'a> {
    /// Copy the base backup, configure recovery (`signal` = standby.signal or recovery.signal).
    pub fn from_base_backup(
        st: &'a Stack,
        name: &str,
        signal: &str,
        conf: &str,
    ) -> Result<Pg<'a>, Failed> {
        Pg::from_backup(st, st.get("PG_BASE_BACKUP"), name, signal, conf)
    }

    /// [`Pg::from_base_backup`] from another base backup (`BRAVO_BASE_BACKUP`).
    pub fn from_backup(
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
        let port = closed_port();
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

    pub fn start(&self) -> TestResult {
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

    pub fn query(&self, sql: &str) -> Result<Outcome, Failed> {
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

    pub fn running(&self) -> bool {
        let pgctl = format!("{}/pg_ctl", self.st.get("PG_BIN"));
        run(
            &mut as_postgres(&[&pgctl, "status", "-D", &self.data.to_string_lossy()]),
            Duration::from_secs(30),
        )
        .map(|o| o.code == 0)
        .unwrap_or(false)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Poll `sql` until it returns `want`; fail early if the server died.
    pub fn wait_for(&self, sql: &str, want: &str, timeout: Duration) -> TestResult {
        let start = Instant::now();
        let mut last = String::new();
        let mut polls = 0u32;
        loop {
            if let Ok(o) = self.query(sql) {
                if o.code == 0 {
                    last = o.stdout.trim().to_string();
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
    pub fn wait_promoted(&self, rows: &str) -> TestResult {
        self.wait_for("SELECT pg_is_in_recovery()", "f", RECOVERY_TIMEOUT)?;
        self.wait_for(
            &format!("SELECT count(*) FROM {}", self.st.get("PG_TABLE")),
            rows,
            Duration::from_secs(10),
        )
    }

    /// A standby replayed up to `rows` rows in the test table and is still in recovery.
    pub fn wait_standby_rows(&self, rows: &str) -> TestResult {
        self.wait_for(
            &format!("SELECT count(*) FROM {}", self.st.get("PG_TABLE")),
            rows,
            RECOVERY_TIMEOUT,
        )?;
        self.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(10))
    }

    /// The log must show no fatal restore_command outcome, no crash, except lines holding one
    /// of `expected` (a trial that provokes a FATAL on purpose).
    pub fn check_log_clean(&self, expected: &[&str]) -> TestResult {
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

    pub fn expect_log(&self, needle: &str) -> TestResult {
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
    pub fn spool(&self) -> PathBuf {
        self.st.dir.join("spool").join(&self.name)
    }

    pub fn stop(&self) -> TestResult {
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

    pub fn stop_and_remove(&self) {
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
pub fn async_workers(spool: &Path) -> Vec<Proc> {
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
pub fn expect_worker_gone(spool: &Path, idle: Duration) -> TestResult {
    wait_until(
        idle + Duration::from_secs(30),
        "the --async worker to leave",
        || Ok(async_workers(spool).is_empty().then_some(())),
    )?;
    let log = worker_log_in(spool);
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
pub fn with_cluster(
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
pub fn with_cluster_expecting(
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

/// Writes `script` as `CTL/restore.sh` (mode 0755) and returns the
/// postgresql.conf line that makes it the restore_command.
pub fn restore_wrapper(ctl: &Path, script: String) -> Result<String, Failed> {
    let wrapper = ctl.join("restore.sh");
    fs::write(&wrapper, script).map_err(|e| fail(e.to_string()))?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(e.to_string()))?;
    Ok(format!(
        "restore_command = '/bin/sh {} %f %p'",
        wrapper.display()
    ))
}
