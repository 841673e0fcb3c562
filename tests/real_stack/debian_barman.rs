//! The Barman that Debian users have: Debian 12's Barman 3.4.0 (python3-barman) behind an sshd of
//! its own ("debian"), archiving the same WAL as the newest Barman's configs, with Debian's Python
//! barman-wal-restore 3.4.0 as the oracle. What 3.4 lacks: `get-wal --keep-compression` (our
//! default asks for it and falls back to a plain get-wal; an explicit `--keep-compression` fails as
//! the original's does), and every stored format newer than gzip and bzip2.

use std::fs;
use std::path::Path;

use crate::checks::compare_file;
use crate::cluster::with_cluster;
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::sequence::{fetch_sequence, next_missing, window, Tool, Window};
use crate::stack::{Stack, CALL_TIMEOUT, DEST};
use crate::Named;

/// The stored formats Barman 3.4 writes (`compression` values `pigz`, `pygzip` and `pybzip2`
/// write the same gzip and bzip2 streams).
const DEBIAN_COMPRESSIONS: [&str; 3] = ["none", "gzip", "bzip2"];

pub fn trials() -> Vec<Named> {
    let mut list = vec![
        Named::new(
            "debian::postgres::pitr_to_restore_point",
            pitr_to_restore_point,
        ),
        Named::new(
            "debian::postgres::recovery_follows_timeline_switch",
            recovery_follows_timeline_switch,
        ),
    ];
    for comp in DEBIAN_COMPRESSIONS {
        for p in [0u32, 8] {
            list.push(Named::with(
                format!("debian::fetch::{comp}::p{p}"),
                move |st| fetch(st, comp, p, false),
            ));
            list.push(Named::with(
                format!("debian::fetch::{comp}::p{p}::no_keep_compression"),
                move |st| fetch(st, comp, p, true),
            ));
        }
        list.push(Named::with(
            format!("debian::oracle::{comp}::p8"),
            move |st| oracle(st, comp),
        ));
    }
    for comp in ["gzip", "bzip2"] {
        list.push(Named::with(
            format!("debian::direct::{comp}::p8"),
            move |st| direct_read(st, comp),
        ));
    }
    list.extend([
        Named::new("debian::async::p8", async_p8),
        Named::new("debian::partial::p0_and_oracle", partial_p0_and_oracle),
        Named::new(
            "debian::keep_compression_refused_as_by_the_original",
            keep_compression_refused_as_by_the_original,
        ),
        Named::new(
            "debian::keep_compression_refusal_remembered",
            keep_compression_refusal_remembered,
        ),
    ]);
    list
}

fn config(st: &Stack, comp: &str) -> String {
    st.config(&format!("deb_{comp}"))
}

/// Our restore_command for PostgreSQL against Debian's Barman.
fn restore_command(st: &Stack, cfg: &str, opts: &str) -> String {
    let key = Path::new(st.get("PG_SSH_KEY"));
    format!(
        "{} %f %p",
        st.restore_argv(st.get("DEBIAN_SSH_PORT"), key, cfg, opts)
    )
}

/// A window of the archive through our binary, byte-identical to what PostgreSQL archived, then
/// the segment after the archive's end is "not available". By default we ask for
/// --keep-compression, 3.4 refuses it and we ask again without it; `plain`: with
/// --no-keep-compression (Barman decompresses, as the original asks by default).
fn fetch(st: &Stack, comp: &str, p: u32, plain: bool) -> TestResult {
    let work = st.workdir(&format!("debian_fetch_{comp}_p{p}_{plain}"))?;
    let ps = p.to_string();
    let mut opts = vec!["-p", ps.as_str()];
    if plain {
        opts.push("--no-keep-compression");
    }
    sequence(st, Tool::OursDebian, &config(st, comp), p, &opts, &work)
}

fn sequence(
    st: &Stack,
    tool: Tool<'_>,
    cfg: &str,
    p: u32,
    opts: &[&str],
    work: &Path,
) -> TestResult {
    let missing = (tool != Tool::DebianOracle).then(|| next_missing(st));
    fetch_sequence(
        st,
        tool,
        cfg,
        &window(st, Window::for_parallel(p))?,
        &st.orig(),
        opts,
        missing.as_deref(),
        work,
    )
}

/// Debian's own barman-wal-restore on the same window: the same bytes.
fn oracle(st: &Stack, comp: &str) -> TestResult {
    let work = st.workdir(&format!("debian_oracle_{comp}"))?;
    sequence(
        st,
        Tool::DebianOracle,
        &config(st, comp),
        8,
        &["-p", "8"],
        &work,
    )
}

/// --direct-read: the stored files read with `cat`, the layout learnt from 3.4's show-server.
fn direct_read(st: &Stack, comp: &str) -> TestResult {
    let work = st.workdir(&format!("debian_direct_{comp}"))?;
    let opts = ["--direct-read", "-p", "8"];
    sequence(st, Tool::OursDebian, &config(st, comp), 8, &opts, &work)
}

/// --async: the worker fetches ahead through 3.4's get-wal.
fn async_p8(st: &Stack) -> TestResult {
    let work = st.workdir("debian_async_p8")?;
    let opts = ["--async", "--async-idle", "3", "-p", "8"];
    sequence(st, Tool::OursDebian, &config(st, "gzip"), 8, &opts, &work)
}

/// -P: the .partial from 3.4's streaming directory, ours and the oracle alike; without -P the
/// segment is not available.
fn partial_p0_and_oracle(st: &Stack) -> TestResult {
    let work = st.workdir("debian_partial")?;
    let partial = st.orig().join(st.get("WAL_PARTIAL"));
    let seg = next_missing(st);
    let cfg = config(st, "gzip");
    let dest = work.join(DEST);
    run(
        &mut st.ours_debian(&cfg, &["-P"], &seg, DEST, &work),
        CALL_TIMEOUT,
    )?
    .expect_code(0)?;
    compare_file(&dest, &partial)?;
    fs::remove_file(&dest).map_err(|e| fail(e.to_string()))?;
    run(
        &mut st.ours_debian(&cfg, &[], &seg, DEST, &work),
        CALL_TIMEOUT,
    )?
    .expect_code(1)?;
    run(
        &mut st.debian_oracle(&cfg, &["-P"], &seg, DEST, &work),
        CALL_TIMEOUT,
    )?
    .expect_code(0)?;
    compare_file(&dest, &partial)
}

/// An explicit --keep-compression is the user's choice, not ours: against 3.4 it fails as the
/// Python original fails (one ERROR line naming Barman's refusal, nothing delivered), never
/// silently dropped.
fn keep_compression_refused_as_by_the_original(st: &Stack) -> TestResult {
    let work = st.workdir("debian_keep_refused")?;
    let cfg = config(st, "gzip");
    let seg = st.list("WAL_SEGMENTS").remove(0);
    let opts = ["--keep-compression"];
    let ours = run(
        &mut st.ours_debian(&cfg, &opts, &seg, DEST, &work),
        CALL_TIMEOUT,
    )?;
    ours.expect_code(2)?;
    let errors: Vec<&str> = ours
        .stderr
        .lines()
        .filter(|l| l.starts_with("ERROR"))
        .collect();
    if errors.len() != 1 || !errors[0].contains("unrecognized arguments: --keep-compression") {
        return Err(fail(format!(
            "one ERROR naming Barman's refusal:\n{}",
            ours.describe()
        )));
    }
    if work.join(DEST).exists() {
        return Err(fail("nothing is delivered"));
    }
    let original = run(
        &mut st.debian_oracle(&cfg, &opts, &seg, DEST, &work),
        CALL_TIMEOUT,
    )?;
    if original.code == 0 || work.join(DEST).exists() {
        return Err(fail(format!(
            "the original fails too:\n{}",
            original.describe()
        )));
    }
    Ok(())
}

/// Our default asks for --keep-compression and 3.4 refuses it. The spool remembers the refusal:
/// the next call that misses asks for a decompressed file at once (its debug log says so, and
/// Barman's refusal is not in it), and both calls deliver the archive's bytes.
fn keep_compression_refusal_remembered(st: &Stack) -> TestResult {
    let work = st.workdir("debian_keep_remembered")?;
    let cfg = config(st, "gzip");
    let segs = st.list("WAL_SEGMENTS");
    let spool = work.join("spool");
    let spool = spool.to_str().ok_or_else(|| fail("spool path"))?;
    let opts = ["-p", "2", "--spool-dir", spool, "--log-level", "debug"];
    let refused = "does not know --keep-compression";
    let remembered = "refused --keep-compression a moment ago";
    // The first call prefetches the second segment: the third is a miss.
    for (seg, first) in [(&segs[0], true), (&segs[2], false)] {
        let _ = fs::remove_file(work.join(DEST));
        let ours = run(
            &mut st.ours_debian(&cfg, &opts, seg, DEST, &work),
            CALL_TIMEOUT,
        )?;
        ours.expect_code(0)?;
        compare_file(&work.join(DEST), &st.orig().join(seg))?;
        let (saw_refusal, saw_memory) = (
            ours.stderr.contains(refused),
            ours.stderr.contains(remembered),
        );
        if (saw_refusal, saw_memory) != (first, !first) {
            return Err(fail(format!(
                "{} call: want {}:\n{}",
                if first { "first" } else { "second" },
                if first { refused } else { remembered },
                ours.describe()
            )));
        }
    }
    Ok(())
}

/// A PITR through Debian's Barman to the restore point's row count.
fn pitr_to_restore_point(st: &Stack) -> TestResult {
    let cmd = restore_command(st, &config(st, "bzip2"), "-p 8 --spool-dir @SPOOL@");
    let conf = format!(
        "restore_command = '{cmd}'\nrecovery_target_name = '{}'\nrecovery_target_action = 'promote'",
        st.get("TARGET_NAME")
    );
    with_cluster(st, "deb-pitr-target", "recovery.signal", &conf, |pg| {
        pg.wait_promoted(st.get("TARGET_ROWS"))?;
        pg.expect_log("recovery stopping at restore point")?;
        pg.expect_log("archive recovery complete")
    })
}

/// A recovery that fetches 00000002.history from 3.4 and follows the timeline switch, through
/// the --async worker.
fn recovery_follows_timeline_switch(st: &Stack) -> TestResult {
    let cmd = restore_command(
        st,
        st.get("DEBIAN_TL_CONFIG"),
        "--async --async-idle 3 -p 8 --spool-dir @SPOOL@",
    );
    let conf = format!("restore_command = '{cmd}'\nrecovery_target_timeline = 'latest'");
    with_cluster(st, "deb-pitr-tl", "recovery.signal", &conf, |pg| {
        pg.wait_promoted(st.get("TL_ROWS"))?;
        pg.expect_log("selected new timeline ID: 3")
    })
}
