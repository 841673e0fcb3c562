//! `--async`, the background worker that keeps the spool ahead of
//! replay, proven against the embedded Barman with the real binary.
//!
//! Workers outlive the calls that start them by design; every test gives
//! them a short `--async-idle` and waits (bounded) for them to leave, and a
//! worker whose spool disappears exits at once, so none survives the test.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use embedded_barman::{EmbeddedBarman, FaultRule, StoredCompression, StreamFault, Target};

use common::{WORKER_LOCK as LOCK, WORKER_LOG as LOG};

/// The worker's log, or "" before the first worker.
/// Whether `pid` runs (a zombie waiting for init to reap it does not).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether a worker holds the spool's lock now.
fn worker_running(work: &Work) -> bool {
    let Ok(file) = fs::File::open(work.spool.join(LOCK)) else {
        return false;
    };
    file.try_lock_shared().is_err()
}

/// Waits (bounded) until the worker has put `name` in the spool.
fn wait_for_spooled(work: &Work, name: &str, limit: Duration) {
    let ready = wait_until(limit, || work.spool.join(name).exists());
    assert!(ready, "{name} never arrived; log:\n{}", worker_log(work));
}

/// Waits (bounded) until no worker holds the lock and every worker that
/// ever served this spool has exited.
fn wait_for_workers_to_leave(work: &Work, limit: Duration) {
    let left = wait_until(limit, || {
        !worker_running(work) && worker_pids(work).iter().all(|p| !alive(*p))
    });
    assert!(
        left,
        "a worker is still running; log:\n{}",
        worker_log(work)
    );
}

fn async_call(barman: &EmbeddedBarman, work: &Work, parallel: usize, idle: u64) -> Call {
    Call::new(barman, work).args([
        "--async".to_string(),
        "-p".to_string(),
        parallel.to_string(),
        "--async-idle".to_string(),
        idle.to_string(),
        "-v".to_string(),
    ])
}

/// A consumer that replays slower than the worker fetches finds every file
/// after the first already in the spool: each later call is a spool hit, the
/// whole run opens one SSH connection (the worker's), and the worker leaves
/// after its idle time.
#[test]
fn slow_consumer_finds_every_file_ready_on_one_connection() {
    let count = 24;
    let barman = server(spec(StoredCompression::Zstd, count));
    let archive = barman.archive();
    let work = Work::new();
    let call = async_call(&barman, &work, 4, 1);
    let first = call.run(&seg(0), &work.dest());
    first.assert_code(0);
    first.assert_says("delivered by the --async worker");
    assert_delivered(archive, &work.dest(), &seg(0));
    let mut hits = 0;
    for n in 1..count {
        // The replay of segment n-1 "takes" as long as the worker needs to
        // have segment n ready: what a slow consumer sees.
        wait_for_spooled(&work, &seg(n), Duration::from_secs(20));
        let out = call.run(&seg(n), &work.dest());
        out.assert_code(0);
        if out.stderr.contains("served from the spool") {
            hits += 1;
        }
        assert_delivered(archive, &work.dest(), &seg(n));
    }
    assert_eq!(hits, count - 1, "every call after the first is a spool hit");
    wait_for_workers_to_leave(&work, Duration::from_secs(20));
    let stats = barman.stats();
    assert_eq!(stats.connections, 1, "one session for the whole replay");
    assert_eq!(worker_pids(&work).len(), 1);
    assert!(
        worker_log(&work).contains("exiting (no request for 1 s)"),
        "{}",
        worker_log(&work)
    );
    // The segments after the archive's end were never asked for: nothing
    // but bookkeeping remains once replay has taken everything.
    assert_clean(&work.spool, archive, None);
    println!(
        "slow consumer: {count} calls, {hits} spool hits, {} connection(s), {} transfers",
        stats.connections, stats.transfers
    );
}

/// Hundreds of calls as fast as PostgreSQL can make them: every file right,
/// one connection for all of them (a call never connects while the worker
/// serves it).
#[test]
fn hundreds_of_calls_share_the_workers_one_connection() {
    let count = 200;
    let barman = server(spec(StoredCompression::Lz4, count));
    let archive = barman.archive();
    let work = Work::new();
    let call = async_call(&barman, &work, 8, 1);
    let started = Instant::now();
    let mut from_worker = 0;
    for n in 0..count {
        let out = call.run(&seg(n), &work.dest());
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(n));
        if out.stderr.contains("delivered by the --async worker") {
            from_worker += 1;
        }
    }
    let elapsed = started.elapsed();
    let past_end = call.run(&seg(count), &work.dest());
    past_end.assert_code(1);
    wait_for_workers_to_leave(&work, Duration::from_secs(20));
    let stats = barman.stats();
    assert_eq!(stats.connections, 1, "{}", worker_log(&work));
    assert_eq!(worker_pids(&work).len(), 1);
    assert_clean(&work.spool, archive, None);
    // Channels are opened ahead of the transfers that wait for a stream:
    // at most the three held ahead go unused, however many transfers ran.
    let unused = stats.channels_opened - stats.commands.len() as u64;
    assert!(unused <= 3, "{unused} channels opened that no command used");
    println!(
        "{count} calls in {:.2} s: {from_worker} handed over by the worker, the rest spool \
         hits; {} connection(s), {} transfers",
        elapsed.as_secs_f64(),
        stats.connections,
        stats.transfers
    );
}

/// Past the archive's end the worker answers Barman's "not found" at once:
/// exit 1, in standby mode and in archive recovery alike (a confirmed miss
/// ends a PITR normally, so it is said as INFO, not as an ERROR).
#[test]
fn a_missing_segment_is_not_available_even_in_archive_recovery() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let work = Work::new();
    let datadir = data_dir(&work, &["recovery.signal"]);
    let call = async_call(&barman, &work, 4, 1).cwd(&datadir);
    call.run(&seg(0), &work.dest()).assert_code(0);
    let out = call.run(&seg(3), &work.dest());
    out.assert_code(1);
    assert!(out.errors().is_empty(), "{}", out.stderr);
    let info: Vec<&str> = out
        .stderr
        .lines()
        .map(unstamped)
        .filter(|l| l.starts_with("INFO: ") && l.contains(&seg(3)))
        .collect();
    assert_eq!(info.len(), 1, "{}", out.stderr);
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    wait_for_workers_to_leave(&work, Duration::from_secs(20));
    assert_eq!(
        barman.stats().connections,
        1,
        "the worker answered, no fallback"
    );
}

/// A worker that cannot be started (its log cannot be opened) costs
/// nothing: the call fetches the file itself.
#[test]
fn a_worker_that_cannot_start_means_a_direct_fetch() {
    let barman = server(spec(StoredCompression::Bzip2, 3));
    let archive = barman.archive();
    let work = Work::new();
    fs::create_dir_all(work.spool.join(LOG)).unwrap();
    let out = async_call(&barman, &work, 4, 1).run(&seg(0), &work.dest());
    out.assert_code(0);
    out.assert_says("cannot start the --async worker");
    assert_delivered(archive, &work.dest(), &seg(0));
    assert!(!worker_running(&work));
}

/// A worker whose transfer fails (a stream cut, then a corrupted one) tells
/// the call, which fetches the segment itself and delivers good bytes.
#[test]
fn a_failed_worker_transfer_falls_back_to_a_direct_fetch() {
    for fault in [
        StreamFault::DropConnectionAfter(200_000),
        StreamFault::FlipBitAt(300_000),
    ] {
        let faults = rules(vec![FaultRule::times(
            1,
            Target::Wal(seg(0)),
            fault.clone(),
        )]);
        let barman = server_with(spec(StoredCompression::None, 4), faults);
        let archive = barman.archive();
        let work = Work::new();
        let out = async_call(&barman, &work, 2, 1).run(&seg(0), &work.dest());
        out.assert_code(0);
        assert!(
            out.stderr.contains("without the worker"),
            "{fault:?}: {}",
            out.stderr
        );
        assert_delivered(archive, &work.dest(), &seg(0));
        wait_for_workers_to_leave(&work, Duration::from_secs(20));
        assert_clean(&work.spool, archive, None);
    }
}

/// SIGKILL the worker in the middle of a transfer: nothing partial under a
/// final name, and the next call starts a new worker and gets its file.
#[test]
fn a_killed_worker_is_replaced_and_nothing_is_lost() {
    let faults = rules(vec![FaultRule::always(
        Target::AllTransfers,
        StreamFault::DelayPerChunk(Duration::from_millis(20)),
    )]);
    let barman = server_with(spec(StoredCompression::None, 6), faults);
    let archive = barman.archive();
    let work = Work::new();
    let call = async_call(&barman, &work, 3, 1);
    let running = call.spawn(&seg(0), &work.dest());
    let transferring = wait_until(Duration::from_secs(20), || {
        !worker_pids(&work).is_empty() && !temps(&work.spool).is_empty()
    });
    assert!(transferring, "log:\n{}", worker_log(&work));
    let first_worker = worker_pids(&work)[0];
    // SAFETY: the worker's pid, read from its log while it holds the lock.
    assert_eq!(unsafe { libc::kill(first_worker, libc::SIGKILL) }, 0);
    let out = running.wait();
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(0));
    let out = call.run(&seg(1), &work.dest());
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(1));
    let pids = worker_pids(&work);
    assert!(
        pids.len() >= 2 && pids[1..].iter().all(|p| *p != first_worker),
        "a new worker replaced {first_worker}: {pids:?}"
    );
    wait_for_workers_to_leave(&work, Duration::from_secs(30));
    // The dead worker's temp files go with the next open of the spool.
    call.run(&seg(2), &work.dest()).assert_code(0);
    wait_for_workers_to_leave(&work, Duration::from_secs(30));
    assert_clean(&work.spool, archive, None);
}

/// Callers racing on one spool (PostgreSQL and an operator, or two
/// standbys by mistake) all get the right bytes: a segment one of them
/// took is fetched again for the other.
#[test]
fn racing_callers_get_correct_bytes() {
    let count = 12;
    let barman = server(spec(StoredCompression::Xz, count));
    let archive = barman.archive().clone();
    let work = Work::new();
    // The callers take each other's segments and drag the worker's cursor
    // back and forth: on a loaded machine a call may wait for the worker up
    // to --io-timeout (60 s) before it fetches directly. A hang is longer.
    let call = async_call(&barman, &work, 4, 1).timeout(Duration::from_secs(90));
    let dests: Vec<_> = (0..4)
        .map(|i| {
            let dir = work.path().join(format!("caller{i}"));
            fs::create_dir(&dir).unwrap();
            dir.join(DEST_NAME)
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, dest) in dests.iter().enumerate() {
            let call = call.clone();
            let archive = &archive;
            scope.spawn(move || {
                for n in (i % 2..count).step_by(1 + i % 2) {
                    let out = call.run(&seg(n), dest);
                    out.assert_code(0);
                    assert_delivered(archive, dest, &seg(n));
                }
            });
        }
    });
    wait_for_workers_to_leave(&work, Duration::from_secs(20));
    assert_eq!(worker_pids(&work).len(), 1, "{}", worker_log(&work));
    assert_clean(&work.spool, &archive, None);
}

/// A worker whose spool is removed exits at once instead of waiting out
/// its idle time.
#[test]
fn a_worker_leaves_when_its_spool_disappears() {
    let barman = server(spec(StoredCompression::Snappy, 3));
    let work = Work::new();
    async_call(&barman, &work, 2, 600)
        .run(&seg(0), &work.dest())
        .assert_code(0);
    let pids = worker_pids(&work);
    assert_eq!(pids.len(), 1);
    remove_spool(&work);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pids[0])),
        "worker {} outlived its spool",
        pids[0]
    );
}

/// A spool removed and made again at the same path (a new recovery with the
/// same restore_command) is not the old worker's: it leaves rather than
/// serve a directory it no longer owns.
#[test]
fn a_worker_leaves_when_its_spool_is_made_again() {
    let barman = server(spec(StoredCompression::Lz4, 3));
    let work = Work::new();
    async_call(&barman, &work, 2, 600)
        .run(&seg(0), &work.dest())
        .assert_code(0);
    let pids = worker_pids(&work);
    assert_eq!(pids.len(), 1);
    remove_spool(&work);
    fs::create_dir(&work.spool).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pids[0])),
        "worker {} stayed on a spool made again",
        pids[0]
    );
}

/// The `get-wal` commands (not peeks) the embedded Barman ran for `wal`.
fn get_wal_runs(barman: &EmbeddedBarman, wal: &str) -> usize {
    barman
        .stats()
        .commands
        .iter()
        .filter(|c| c.contains("get-wal") && !c.contains("--peek") && c.contains(wal))
        .count()
}

/// When a recovery ends, PostgreSQL asks for the segment past the archive's
/// end twice in a row. The second ask gets Barman's "not found" from a
/// moment ago instead of another Barman start-up; an ask a second later
/// gets a fresh answer from Barman.
#[test]
fn a_miss_asked_again_at_once_reuses_barmans_answer() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let work = Work::new();
    let call = async_call(&barman, &work, 2, 5);
    call.run(&seg(0), &work.dest()).assert_code(0);
    call.run(&seg(3), &work.dest()).assert_code(1);
    let again = call.run(&seg(3), &work.dest());
    again.assert_code(1);
    again.assert_one_error(&[&seg(3), "not found"]);
    assert_eq!(get_wal_runs(&barman, &seg(3)), 1, "{}", worker_log(&work));
    // Past the reuse window (1 s) the answer is Barman's again. Time is the
    // condition here, so this waits for time.
    std::thread::sleep(Duration::from_millis(1100));
    call.run(&seg(3), &work.dest()).assert_code(1);
    assert_eq!(get_wal_runs(&barman, &seg(3)), 2, "{}", worker_log(&work));
    remove_spool_and_wait(&work);
}

/// Once PostgreSQL takes the archive's last segment, the worker asks Barman
/// for the next one before PostgreSQL does; the request that follows (the
/// end of a recovery) gets that answer instead of waiting for its own.
#[test]
fn the_segment_past_the_head_is_asked_before_postgresql_asks() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    let call = async_call(&barman, &work, 4, 5);
    replay(&call, &work, 0..3);
    assert!(
        wait_until(Duration::from_secs(10), || get_wal_runs(&barman, &seg(3))
            == 1),
        "nobody asked Barman for {} after the last segment was taken; log:\n{}",
        seg(3),
        worker_log(&work)
    );
    call.run(&seg(3), &work.dest()).assert_code(1);
    assert_eq!(get_wal_runs(&barman, &seg(3)), 1, "{}", worker_log(&work));
    remove_spool_and_wait(&work);
}

/// A recovery that replays faster than Barman answers does not wait at the
/// archive's end: the worker, pacing PostgreSQL's requests, asks for the
/// segment past the end while segments remain, not once the last one is
/// taken.
#[test]
fn a_fast_replay_finds_the_probe_past_the_head_started_before_the_last_segment() {
    let count = 8;
    let barman = server(spec(StoredCompression::Zstd, count));
    let work = Work::new();
    let call = async_call(&barman, &work, 4, 5);
    replay(&call, &work, 0..count - 1);
    assert!(
        wait_until(Duration::from_secs(10), || get_wal_runs(
            &barman,
            &seg(count)
        ) == 1),
        "nobody asked Barman for {} before the last segment was asked for; log:\n{}",
        seg(count),
        worker_log(&work)
    );
    replay(&call, &work, count - 1..count);
    call.run(&seg(count), &work.dest()).assert_code(1);
    remove_spool_and_wait(&work);
}

/// Takes `segments` as PostgreSQL would, one after another: the first
/// call of a recovery (segment 0) starts the worker, every later one finds
/// its segment in the spool.
fn replay(call: &Call, work: &Work, segments: std::ops::Range<usize>) {
    for n in segments {
        if n > 0 {
            wait_for_spooled(work, &seg(n), Duration::from_secs(10));
        }
        call.run(&seg(n), &work.dest()).assert_code(0);
    }
}

/// An archive recovery that ends at the archive's last segment reads that
/// segment once more after the miss past the end (to start its new
/// timeline). The worker fetched it again when PostgreSQL took it: the
/// re-read is a spool hit, with the right bytes, not a wait for Barman.
#[test]
fn the_last_segment_is_in_the_spool_again_for_the_end_of_recovery() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let archive = barman.archive();
    let work = Work::new();
    let data = data_dir(&work, &["recovery.signal"]);
    let call = async_call(&barman, &work, 4, 5).cwd(&data);
    replay(&call, &work, 0..3);
    fs::remove_file(work.dest()).unwrap();
    wait_for_spooled(&work, &seg(2), Duration::from_secs(10));
    call.run(&seg(3), &work.dest()).assert_code(1);
    let reread = call.run(&seg(2), &work.dest());
    reread.assert_code(0);
    assert!(
        reread.stderr.contains("served from the spool"),
        "{}\nlog:\n{}",
        reread.stderr,
        worker_log(&work)
    );
    assert_delivered(archive, &work.dest(), &seg(2));
    remove_spool_and_wait(&work);
}

/// A standby does not end its recovery at the archive's end: it waits
/// there for the next segment, and the last one is not fetched twice.
#[test]
fn a_standby_at_the_head_does_not_fetch_the_last_segment_again() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    let data = data_dir(&work, &["standby.signal"]);
    let call = async_call(&barman, &work, 4, 5).cwd(&data);
    replay(&call, &work, 0..3);
    // The probe past the head is started with (after) a re-read, if any.
    assert!(
        wait_until(Duration::from_secs(10), || get_wal_runs(&barman, &seg(3))
            == 1),
        "no probe past the head; log:\n{}",
        worker_log(&work)
    );
    call.run(&seg(3), &work.dest()).assert_code(1);
    assert_eq!(get_wal_runs(&barman, &seg(2)), 1, "{}", worker_log(&work));
    assert!(!work.spool.join(seg(2)).exists());
    remove_spool_and_wait(&work);
}

/// PostgreSQL asks for a history file just before a recovery's first
/// segment. With --async that lookup (itself direct) starts the worker, which
/// connects at once: the first segment finds it ready and the calls open no
/// connection beyond the history lookup's and the worker's.
#[test]
fn a_history_lookup_starts_the_worker_ahead_of_the_first_segment() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    let call = async_call(&barman, &work, 2, 5);
    call.run("00000002.history", &work.dest()).assert_code(1);
    assert!(
        wait_until(Duration::from_secs(10), || worker_log(&work)
            .contains(" connected")),
        "no worker connected after the history lookup; log:\n{}",
        worker_log(&work)
    );
    let first = call.run(&seg(0), &work.dest());
    first.assert_code(0);
    first.assert_says("delivered by the --async worker");
    assert_delivered(barman.archive(), &work.dest(), &seg(0));
    assert_eq!(barman.stats().connections, 2, "{}", worker_log(&work));
    remove_spool_and_wait(&work);
}

/// A recovery from a base backup starts with a history lookup, in a data
/// directory whose backup_label names the first segment: the worker that
/// lookup starts fetches that segment before PostgreSQL asks for it, and
/// the first segment's call is a spool hit.
#[test]
fn the_first_segment_of_a_recovery_is_fetched_before_it_is_asked_for() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    let data = data_dir(&work, &[]);
    fs::write(
        data.join("backup_label"),
        format!(
            "START WAL LOCATION: 0/1000028 (file {})\nCHECKPOINT LOCATION: 0/1000060\n",
            seg(1)
        ),
    )
    .unwrap();
    let call = async_call(&barman, &work, 2, 5).cwd(&data);
    call.run("00000002.history", &work.dest()).assert_code(1);
    wait_for_spooled(&work, &seg(1), Duration::from_secs(10));
    let first = call.run(&seg(1), &work.dest());
    first.assert_code(0);
    first.assert_says("served from the spool");
    assert_delivered(barman.archive(), &work.dest(), &seg(1));
    remove_spool_and_wait(&work);
}

/// Removes the spool, which sends its worker away, and waits (bounded)
/// until every worker that served it has exited.
fn remove_spool_and_wait(work: &Work) {
    let pids = worker_pids(work);
    remove_spool(work);
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|p| !alive(*p))),
        "workers {pids:?} outlived their spool"
    );
}

/// Removes the spool directory, as a DBA would with `rm -rf`, while its
/// worker may still be writing a prefetched file into it.
fn remove_spool(work: &Work) {
    let removed = wait_until(Duration::from_secs(10), || {
        fs::remove_dir_all(&work.spool).is_ok() || !work.spool.exists()
    });
    assert!(removed, "cannot remove {}", work.spool.display());
}
