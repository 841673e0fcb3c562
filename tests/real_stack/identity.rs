//! Cluster identity on the real stack: two clusters (angus and bravo), two servers of one Barman
//! config, the same WAL names. A PITR whose restore_command names the other cluster's server
//! stops instead of promoting; two standbys share one `--async` spool.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cluster::{as_postgres, async_workers, restore_wrapper, Pg, RECOVERY_TIMEOUT};
use crate::run::{fail, run, wait_until, ExpectCode, TestResult};
use crate::stack::{Stack, CALL_TIMEOUT, SERVER};

/// A PITR of cluster bravo whose restore_command names cluster angus's server: the first segment
/// is angus's copy, refused against bravo's pg_control, and recovery stops (255) instead of
/// promoting; with the line corrected and PostgreSQL started again, it recovers to bravo's rows.
pub fn pitr_naming_another_clusters_server_stops_then_recovers(st: &Stack) -> TestResult {
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
pub fn two_standbys_share_one_async_spool(st: &Stack) -> TestResult {
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
