//! Processes of the stack as /proc shows them, and one more sshd for one trial
//! (`stack.sh sshd-start`) that the trial may kill, stop or start again.

use std::fs;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libtest_mimic::Failed;

use crate::run::{fail, run, ExpectCode, TestResult};
use crate::stack::{stack_script, Stack};

/// A process as /proc shows it; `start` (clock ticks after boot) tells a reused pid apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    start: u64,
}

pub fn read_proc(pid: i32) -> Option<Proc> {
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
pub fn send_signal(p: &Proc, sig: i32) {
    if p.pid > 1 && still_running(p) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(p.pid, sig) };
    }
}

/// One more sshd for one trial (`stack.sh sshd-start`), which the trial may kill, stop or start
/// again. Dropping it resumes whatever was stopped, stops the sshd and ends what is left of its
/// sessions.
pub struct Sshd<'a> {
    st: &'a Stack,
    name: String,
    pub port: String,
    /// `sshd-start` options (`--throttle N`), again when it is started anew.
    opts: Vec<String>,
    /// Every process seen under it, for the cleanup.
    seen: std::sync::Mutex<Vec<Proc>>,
}

impl<'a> Sshd<'a> {
    pub fn start(st: &'a Stack, name: &str, opts: &[&str]) -> Result<Sshd<'a>, Failed> {
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
        let port = out.stdout.trim().to_string();
        if port.parse::<u16>().is_err() {
            return Err(fail(format!("stack.sh sshd-start printed {port:?}")));
        }
        Ok(port)
    }

    /// `stack.sh sshd-stop`: TERM the listener, wait until it is gone (nothing to do after a kill
    /// but forget its pid file).
    pub fn stop(&self) -> TestResult {
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
    pub fn restart(&self) -> TestResult {
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
    pub fn signal_sshd(&self, sig: i32, listener: bool) -> Result<Vec<Proc>, Failed> {
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
    pub fn signal_all(&self, sig: i32) -> Result<Vec<Proc>, Failed> {
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
