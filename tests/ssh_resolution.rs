//! How a call resolves its SSH target, seen from outside, against the
//! in-process Barman: `ssh -G` runs only when a call connects (never for a
//! spool hit), without OpenSSH's `ssh` a config file is refused, a refused
//! directive makes no connection, and the Match block does not
//! weaken host key checking.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use embedded_barman::StoredCompression;

/// An `ssh` that logs each call's arguments, then is OpenSSH's.
fn logging_ssh(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("ssh-calls.log");
    let script = dir.join("ssh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec /usr/bin/ssh \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn run(argv: &[OsString], ssh: &Path) -> Output {
    Command::new(BIN)
        .args(argv)
        .env("BARMAN_WAL_RESTORE_SSH", ssh)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn one_error_line(out: &Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for s in says {
        assert!(errors[0].contains(s), "no '{s}' in {}", errors[0]);
    }
}

fn have_ssh() -> bool {
    Path::new("/usr/bin/ssh").exists()
}

#[test]
fn ssh_g_runs_only_when_the_call_connects() {
    if !have_ssh() {
        eprintln!("SKIPPED: no /usr/bin/ssh");
        return;
    }
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    let (ssh, log) = logging_ssh(work.path());
    let call = Call::new(&barman, &work).args(["-p", "2"]);
    let out = run(&call.argv(&seg(0), &work.dest()), &ssh);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // -F /dev/null and -U: one resolution, no defaults run, no second pass.
    let first = calls(&log);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with("-G -vvv -F /dev/null -l barman"),
        "{first:?}"
    );
    fs::remove_file(work.dest()).unwrap();

    // seg(1) waits in the spool: served by a rename, no ssh -G, no connection.
    let before = barman.stats().connections;
    let out = run(&Call::new(&barman, &work).argv(&seg(1), &work.dest()), &ssh);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(calls(&log).len(), 1, "a spool hit ran ssh -G");
    assert_eq!(barman.stats().connections, before);
}

#[test]
fn without_openssh_a_config_file_is_refused_and_dev_null_works() {
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let missing = work.path().join("no-ssh-here");
    let cfg = work.path().join("ssh_config");
    fs::write(&cfg, "Host *\n  Port 22\n").unwrap();
    let call = Call::new(&barman, &work).set("-F", &cfg);
    let out = run(&call.argv(&seg(0), &work.dest()), &missing);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    one_error_line(&out, &["not installed", &cfg.display().to_string()]);
    assert_eq!(barman.stats().connections, 0);
    assert!(!work.dest().exists());

    let out = run(
        &Call::new(&barman, &work).argv(&seg(0), &work.dest()),
        &missing,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_refused_directive_makes_no_connection() {
    if !have_ssh() {
        eprintln!("SKIPPED: no /usr/bin/ssh");
        return;
    }
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let cfg = work.path().join("ssh_config");
    fs::write(
        &cfg,
        "Host 127.0.0.1\n  HostName 127.0.0.1\nMatch all\n  KnownHostsCommand /bin/true\n",
    )
    .unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
    let call = Call::new(&barman, &work).set("-F", &cfg);
    let out = run(&call.argv(&seg(0), &work.dest()), Path::new("/usr/bin/ssh"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    one_error_line(
        &out,
        &["KnownHostsCommand", &format!("{}:4", cfg.display())],
    );
    assert_eq!(barman.stats().connections, 0);
    assert!(!work.dest().exists());
}

/// The first finding, hermetic: `Match host *.lab.example` with
/// `StrictHostKeyChecking no` after the host's block, and a known_hosts
/// without the host: refused, nothing run.
#[test]
fn a_match_block_that_does_not_apply_does_not_weaken_host_keys() {
    if !have_ssh() {
        eprintln!("SKIPPED: no /usr/bin/ssh");
        return;
    }
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let empty = work.path().join("known_hosts-empty");
    fs::write(&empty, "").unwrap();
    let cfg = work.path().join("ssh_config");
    fs::write(
        &cfg,
        "Host 127.0.0.1\n  GlobalKnownHostsFile /dev/null\n\
         Match host *.lab.example\n  StrictHostKeyChecking no\n",
    )
    .unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
    let call = Call::new(&barman, &work)
        .set("-F", &cfg)
        .set("--known-hosts", &empty);
    let out = run(&call.argv(&seg(0), &work.dest()), Path::new("/usr/bin/ssh"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    one_error_line(&out, &["not known"]);
    assert!(barman.stats().commands.is_empty());
    assert!(!work.dest().exists());
}

/// A `Match exec` that never ends: OpenSSH would wait forever; a
/// restore_command must not. Bounded, refused (3), nothing run.
#[test]
fn a_hanging_match_exec_does_not_hang_the_call() {
    if !have_ssh() {
        eprintln!("SKIPPED: no /usr/bin/ssh");
        return;
    }
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let cfg = work.path().join("ssh_config");
    fs::write(&cfg, "Match exec \"sleep 600\"\n  Port 1\n").unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
    let call = Call::new(&barman, &work).set("-F", &cfg);
    let started = std::time::Instant::now();
    let out = run(&call.argv(&seg(0), &work.dest()), Path::new("/usr/bin/ssh"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    one_error_line(&out, &["did not resolve ssh_config"]);
    assert_eq!(barman.stats().connections, 0);
}
