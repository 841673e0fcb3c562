//! The SSH side against the stack's sshd: an ssh_config alias, an unknown host key (exit 2), a
//! stopped sshd (exit 2 with and without a spool, and for `--test`).

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::checks::compare_file;
use crate::common::BIN;
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::stack::{stack_script, Stack, CALL_TIMEOUT, DEST, HOST, SERVER};

pub fn config_file_alias(st: &Stack) -> TestResult {
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
}

pub fn unknown_host_key_exits_2(st: &Stack) -> TestResult {
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
}

/// A second sshd of our own: works, then stopped; the main one stays up for the others.
pub fn sshd_stopped_exits_2(st: &Stack) -> TestResult {
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
    let port = out.stdout.trim().to_string();
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
}
