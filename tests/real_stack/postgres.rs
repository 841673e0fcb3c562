//! PostgreSQL 15 with restore_command = our binary: standbys that replay the whole archive, PITRs
//! to a restore point and to the end of the archive, through `--async`, `--direct-read` and a
//! timeline switch; an archive recovery whose Barman goes away mid-way.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{
    async_workers, expect_worker_gone, restore_wrapper, with_cluster, with_cluster_expecting,
    RECOVERY_TIMEOUT,
};
use crate::run::{fail, run, wait_until, ExpectCode, TestResult};
use crate::sequence::next_missing;
use crate::sshd::Sshd;
use crate::stack::{Stack, CALL_TIMEOUT};

/// The first restore_command call for a segment from this call on finds Barman gone (call 1
/// asks for 00000002.history, then come the segments from the base backup's on).
const PITR_BLOCK_FROM_CALL: u32 = 5;

/// Archive recovery (recovery.signal) whose Barman becomes unreachable mid-way: our binary exits
/// 255, PostgreSQL stops with a FATAL instead of promoting with data missing; started again once
/// Barman is back (same port), it resumes, reaches the primary's row count and promotes.
pub fn pitr_stops_when_barman_unreachable_then_resumes(st: &Stack) -> TestResult {
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

pub fn standby_p8_keep_compression(st: &Stack) -> TestResult {
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
}

/// A PITR to the end of the archive through --async: the worker keeps the spool ahead of replay;
/// once the server promoted and stopped asking, it leaves.
pub fn archive_recovery_async_p8(st: &Stack) -> TestResult {
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
}

/// A standby through --async --direct-read: it reaches the primary's rows and keeps asking at
/// the archive's head; after the server stops, the worker leaves.
pub fn standby_async_direct_read(st: &Stack) -> TestResult {
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
}

pub fn standby_plain(st: &Stack) -> TestResult {
    let cmd = st.restore_command(&st.config("xz"), "");
    with_cluster(
        st,
        "standby-plain",
        "standby.signal",
        &format!("restore_command = '{cmd}'"),
        |pg| pg.wait_standby_rows(st.get("ROWS")),
    )
}

pub fn pitr_to_restore_point(st: &Stack) -> TestResult {
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
}

/// Ends when the next segment is "not available" (exit 1): a wrong code would abort it.
pub fn archive_recovery_to_end(st: &Stack) -> TestResult {
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
}

/// The same recovery to the end of the archive through --direct-read -p 8, by a log-all account
/// (key owned by postgres): the segments must come from cat, not from barman get-wal.
pub fn archive_recovery_direct_read_p8(st: &Stack) -> TestResult {
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
}

/// The "tl" archive holds timeline 1, 00000002.history and timeline 2: with
/// recovery_target_timeline = latest, recovery must fetch the history and follow it.
pub fn recovery_follows_timeline_switch(st: &Stack) -> TestResult {
    let cmd = st.restore_command(
        st.get("TL_CONFIG"),
        "-p 8 --keep-compression --spool-dir @SPOOL@",
    );
    let conf = format!("restore_command = '{cmd}'\nrecovery_target_timeline = 'latest'");
    with_cluster(st, "pitr-tl", "recovery.signal", &conf, |pg| {
        pg.wait_promoted(st.get("TL_ROWS"))?;
        pg.expect_log("selected new timeline ID: 3")
    })
}
