//! A cluster is only ever given its own WAL.
//!
//! Inside a data directory (a `global/pg_control`), every delivery is
//! checked against the cluster's system identifier and segment size: a
//! direct fetch, `-P`, a `.partial`, a spool hit, a worker hand-off. And
//! with or without one, a spool and its `--async` worker serve one caller
//! identity (host, port, user, server, config, cluster): two embedded
//! Barmans with the same WAL names but different clusters share a spool
//! here, and each caller gets its own bytes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barman_wal_restore::pg_control;
use common::*;
use embedded_barman::{ArchiveSpec, BackgroundBarman, StoredCompression};

/// The cluster of the default test archive.
const ARCHIVED: u64 = 7_312_345_678_901_234_567;
/// Another cluster, with the same WAL names.
const OTHER: u64 = 7_300_000_000_000_000_042;

/// A fake data directory of the cluster `system_identifier` (1 MiB
/// segments, as the test archives), with `signals`.
fn cluster_dir(work: &Work, system_identifier: u64, signals: &[&str]) -> PathBuf {
    let dir = data_dir(work, signals);
    fs::create_dir_all(dir.join("global")).unwrap();
    fs::write(
        dir.join("global/pg_control"),
        pg_control::fake(system_identifier, SEGMENT_SIZE as u32),
    )
    .unwrap();
    dir
}

fn archive_of(system_identifier: u64, count: usize) -> ArchiveSpec {
    ArchiveSpec {
        system_identifier,
        partial: true,
        ..spec(StoredCompression::Zstd, count)
    }
}

/// The raw bytes `barman` holds for `name`.
fn bytes_of(barman: &BackgroundBarman, name: &str) -> Vec<u8> {
    raw(barman.archive(), name).unwrap().to_vec()
}

fn assert_foreign_error(out: &Outcome, code: i32) {
    out.assert_code(code);
    let (archived, other) = (ARCHIVED.to_string(), OTHER.to_string());
    let needles = [archived.as_str(), other.as_str(), "SERVER_NAME"];
    if code == 255 {
        let errors = out.errors();
        assert!(
            needles.iter().all(|n| errors[0].contains(n)),
            "{}",
            out.stderr
        );
    } else {
        out.assert_one_error(&needles);
    }
}

/// A restore_command that names another cluster's server: every way a file
/// can arrive is refused before exit 0, with one ERROR line naming both
/// clusters, nothing left at WAL_DEST, and the failure policy's status
/// (a standby retries with 1, an archive recovery stops with 255).
#[test]
fn another_clusters_wal_is_never_delivered() {
    let barman = server(archive_of(ARCHIVED, 4));
    let partial = barman.archive().partial().unwrap().to_string();
    let mut tally = Tally::new();
    for (signal, code) in [("standby.signal", 1), ("recovery.signal", 255)] {
        let cases: [(&str, Vec<&str>, String); 5] = [
            ("direct", vec![], seg(0)),
            ("-p 4", vec!["-p", "4"], seg(0)),
            ("-P", vec!["-P"], seg(4)),
            (".partial", vec!["-P"], partial.clone()),
            ("--direct-read", vec!["--direct-read"], seg(1)),
        ];
        for (label, options, wal) in cases {
            tally.iteration();
            let work = Work::new();
            let data = cluster_dir(&work, OTHER, &[signal]);
            let out = Call::new(&barman, &work)
                .args(options)
                .cwd(&data)
                .allow_abort()
                .run(&wal, &work.dest());
            tally.code(out.code);
            assert_foreign_error(&out, code);
            assert!(!work.dest().exists(), "{label}: nothing at WAL_DEST");
            assert!(temps(&work.pg_wal).is_empty());
            tally.note(format!("{label}: refused"));
        }
    }
    tally.print("foreign system identifier, direct paths");
}

/// A cluster whose pg_control says 16 MiB segments refuses 1 MiB ones of
/// the same system identifier (a pg_control we misread, or an archive
/// rebuilt with another `--wal-segsize`).
#[test]
fn another_segment_size_is_never_delivered() {
    let barman = server(archive_of(ARCHIVED, 2));
    let work = Work::new();
    let data = data_dir(&work, &["standby.signal"]);
    fs::create_dir_all(data.join("global")).unwrap();
    fs::write(
        data.join("global/pg_control"),
        pg_control::fake(ARCHIVED, 16 << 20),
    )
    .unwrap();
    let out = Call::new(&barman, &work)
        .cwd(&data)
        .run(&seg(0), &work.dest());
    out.assert_code(1);
    out.assert_one_error(&["1048576 byte segments", &(16u32 << 20).to_string()]);
    assert!(!work.dest().exists());
}

/// The same cluster's WAL passes, and `-v` says what was checked; outside a
/// data directory, `-v` says that nothing was.
#[test]
fn own_wal_passes_and_verbose_says_what_was_checked() {
    let barman = server(archive_of(ARCHIVED, 3));
    let work = Work::new();
    let data = cluster_dir(&work, ARCHIVED, &["standby.signal"]);
    let out = Call::new(&barman, &work)
        .args(["-v", "-p", "2"])
        .cwd(&data)
        .run(&seg(0), &work.dest());
    out.assert_code(0);
    out.assert_says(&format!(
        "checked against this cluster's pg_control (database system {ARCHIVED}"
    ));
    assert_delivered(barman.archive(), &work.dest(), &seg(0));
    // The spool hit (the fast path) is checked too.
    let out = Call::new(&barman, &work)
        .args(["-v"])
        .cwd(&data)
        .run(&seg(1), &work.dest());
    out.assert_code(0);
    out.assert_says("served from the spool");
    out.assert_says("checked against this cluster's pg_control");
    assert_delivered(barman.archive(), &work.dest(), &seg(1));

    let outside = Work::new();
    let out = Call::new(&barman, &outside)
        .args(["-v"])
        .run(&seg(0), &outside.dest());
    out.assert_code(0);
    out.assert_says("no cluster identity checked");
}

/// A leftover of another cluster in the spool (as the Python original,
/// which knows no owners, leaves in a shared spool) is removed and the
/// file fetched from Barman: the cluster gets its own copy, exit 0.
#[test]
fn a_foreign_spool_file_is_replaced_by_our_own_copy() {
    let ours = server(archive_of(ARCHIVED, 3));
    let theirs = server(archive_of(OTHER, 3));
    let work = Work::new();
    let data = cluster_dir(&work, ARCHIVED, &["standby.signal"]);
    let call = Call::new(&ours, &work).cwd(&data);
    call.clone()
        .args(["-p", "3"])
        .run(&seg(0), &work.dest())
        .assert_code(0);
    let mut tally = Tally::new();
    for n in [1, 2] {
        tally.iteration();
        // Planted under the owner's nose: the spool hit itself is checked.
        fs::write(work.spool.join(seg(n)), bytes_of(&theirs, &seg(n))).unwrap();
        // With and without prefetching after it.
        let parallel = if n == 1 { "0" } else { "3" };
        let out = call
            .clone()
            .args(["-p", parallel])
            .run(&seg(n), &work.dest());
        tally.code(out.code);
        out.assert_code(0);
        out.assert_says("removed it; fetching it from Barman");
        out.assert_says(&OTHER.to_string());
        assert_bytes(&work.dest(), &bytes_of(&ours, &seg(n)));
        assert!(!work.spool.join(seg(n)).exists());
        tally.note(format!("-p {parallel}: replaced"));
    }
    tally.print("foreign file in the spool");
}

/// `--async` against another cluster's server: the worker's copy is caught
/// at the hand-off, the call's own fetch is refused, and nothing is
/// delivered.
#[test]
fn a_worker_hand_off_of_foreign_wal_is_refused() {
    let barman = server(archive_of(ARCHIVED, 4));
    let work = Work::new();
    let data = cluster_dir(&work, OTHER, &["standby.signal"]);
    let out = Call::new(&barman, &work)
        .args(["--async", "-p", "2", "--async-idle", "1", "-v"])
        .cwd(&data)
        .run(&seg(1), &work.dest());
    assert_foreign_error(&out, 1);
    out.assert_says("removed it; fetching it from Barman");
    assert!(!work.dest().exists());
    wait_for_no_worker(&work.spool, Duration::from_secs(20));
}

/// Two clusters' servers, one spool, no data directory (manual runs, or a
/// PostgreSQL whose pg_control we could not read): with `-p 4`, the
/// leftovers of one are never served to the other, in both orders.
#[test]
fn spool_leftovers_of_one_caller_never_reach_another() {
    let a = server(archive_of(ARCHIVED, 6));
    let b = server(archive_of(OTHER, 6));
    let mut tally = Tally::new();
    for (first, second) in [(&a, &b), (&b, &a)] {
        tally.iteration();
        let work = Work::new();
        let one = Call::new(first, &work).args(["-p", "4", "-v"]);
        one.run(&seg(0), &work.dest()).assert_code(0);
        assert_eq!(names(&work.spool), [seg(1), seg(2), seg(3)]);
        fs::remove_file(work.dest()).unwrap();
        for n in 1..4 {
            let out = Call::new(second, &work)
                .args(["-p", "4", "-v"])
                .run(&seg(n), &work.dest());
            tally.code(out.code);
            out.assert_code(0);
            assert_bytes(&work.dest(), &bytes_of(second, &seg(n)));
            fs::remove_file(work.dest()).unwrap();
        }
        // And back: the first caller's leftovers went with the takeover.
        let out = one.run(&seg(4), &work.dest());
        out.assert_code(0);
        assert_bytes(&work.dest(), &bytes_of(first, &seg(4)));
        tally.note("each got its own bytes");
    }
    tally.print("two callers, one spool, -p 4");
}

/// `--async` on a spool another identity's worker serves: the call never
/// gets that worker's files (it fetches directly), and the worker, asked
/// by nobody of its own, leaves within seconds, not after `--async-idle`;
/// the next call of the new identity gets a worker of its own.
#[test]
fn a_worker_serves_one_caller_identity() {
    let a = server(archive_of(ARCHIVED, 8));
    let b = server(archive_of(OTHER, 8));
    let work = Work::new();
    let async_call = |barman: &BackgroundBarman| {
        Call::new(barman, &work).args(["--async", "-p", "4", "--async-idle", "60", "-v"])
    };
    let out = async_call(&a).run(&seg(0), &work.dest());
    out.assert_code(0);
    assert_bytes(&work.dest(), &bytes_of(&a, &seg(0)));
    assert!(wait_until(Duration::from_secs(20), || work
        .spool
        .join(seg(1))
        .exists()));
    // restore_command now names the other server (same spool).
    let started = Instant::now();
    let out = async_call(&b).run(&seg(1), &work.dest());
    out.assert_code(0);
    assert_bytes(&work.dest(), &bytes_of(&b, &seg(1)));
    assert!(!out.stderr.contains("delivered by the --async worker"));
    wait_for_no_worker(&work.spool, Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the old worker stayed {:?} (--async-idle is 60 s)",
        started.elapsed()
    );
    let log = fs::read_to_string(work.spool.join(common::WORKER_LOG)).unwrap();
    assert!(
        log.contains("a caller of another identity wants the spool"),
        "{log}"
    );
    // From now on the spool is the new identity's, with its own worker.
    let out = async_call(&b).run(&seg(2), &work.dest());
    out.assert_code(0);
    out.assert_says("delivered by the --async worker");
    assert_bytes(&work.dest(), &bytes_of(&b, &seg(2)));
    remove_spool(&work.spool);
    wait_for_no_worker(&work.spool, Duration::from_secs(20));
}

/// Relative `--spool-dir`, `-i`, `--known-hosts` and `-F` with `--async`
/// mean the same to the worker as to the call that started it.
#[test]
fn relative_paths_reach_the_async_worker() {
    let barman = server(archive_of(ARCHIVED, 4));
    let work = Work::new();
    let data = cluster_dir(&work, ARCHIVED, &["standby.signal"]);
    fs::copy(barman.client_key_path(), data.join("key")).unwrap();
    fs::copy(barman.known_hosts_path(), data.join("known_hosts")).unwrap();
    fs::write(data.join("ssh_config"), "").unwrap();
    let spool = data.join("spool");
    let call = Call::new(&barman, &work)
        .set("-i", "key")
        .set("--known-hosts", "known_hosts")
        .set("-F", "ssh_config")
        .set("--spool-dir", "spool")
        .args(["--async", "-p", "2", "--async-idle", "1", "-v"])
        .cwd(&data);
    let started = Instant::now();
    for n in 0..3 {
        let out = call.run(&seg(n), &work.dest());
        out.assert_code(0);
        // From the worker, or from what it prefetched into the relative
        // spool; never a call that had to fetch without it.
        assert!(
            out.stderr.contains("delivered by the --async worker")
                || out.stderr.contains("served from the spool"),
            "{}",
            out.stderr
        );
        assert_delivered(barman.archive(), &work.dest(), &seg(n));
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let log = fs::read_to_string(spool.join(common::WORKER_LOG)).unwrap();
    assert!(
        log.contains(&format!("serves spool {}", spool.display())),
        "{log}"
    );
    remove_spool(&spool);
    wait_for_no_worker(&spool, Duration::from_secs(20));
}

/// Removes a spool as a DBA would (`rm -rf`), which sends its worker away;
/// retried while the worker is still writing into it.
fn remove_spool(spool: &Path) {
    let removed = wait_until(Duration::from_secs(10), || {
        fs::remove_dir_all(spool).is_ok() || !spool.exists()
    });
    assert!(removed, "cannot remove {}", spool.display());
}

/// Waits (bounded) until no worker holds the lock of `spool`.
fn wait_for_no_worker(spool: &Path, limit: Duration) {
    let gone = wait_until(limit, || {
        fs::File::open(spool.join(common::WORKER_LOCK))
            .map(|f| f.try_lock_shared().is_ok())
            .unwrap_or(true)
    });
    assert!(
        gone,
        "a worker still serves {}; log:\n{}",
        spool.display(),
        fs::read_to_string(spool.join(common::WORKER_LOG)).unwrap_or_default()
    );
}
