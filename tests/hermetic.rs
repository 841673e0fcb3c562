//! The behaviours of `barman-wal-restore` as a user sees them,
//! proven by running the real binary against the embedded Barman host.
//!
//! Each test names what it proves; the ones ported from Barman's own client
//! tests (`tests/test_barman_wal_restore.py`) say so. Run with
//! `cargo test --test hermetic` (`-- --nocapture` shows the summaries).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use embedded_barman::{
    ArchiveSpec, BackgroundBarman, ConfigCheck, EmbeddedBarman, EmbeddedConfig, FaultRule, Faults,
    StoredCompression, StreamFault, Target,
};

// ---------------------------------------------------------------------------
// Compressions and transfer modes
// ---------------------------------------------------------------------------

/// The transfer modes a user can pick, and the flag each puts on the wire.
const MODES: [(&[&str], Option<&str>); 5] = [
    (&[], Some("--keep-compression")),
    (&["--keep-compression"], Some("--keep-compression")),
    (&["--no-keep-compression"], None),
    (&["-z"], Some("--gzip")),
    (&["-j"], Some("--bzip2")),
];

/// Every segment of an archive stored with `compression`, fetched in every
/// transfer mode, arrives byte-identical; each mode sends its own flag.
///
/// `-z`/`-j` make the server recompress, so the client decodes gzip/bzip2
/// whatever is stored: they cover at most `recompressed` segments (bzip2 in
/// a debug build costs about a second per MiB, and the client's side is the
/// same for every stored format).
fn compression_round_trip(compression: StoredCompression, count: usize, recompressed: usize) {
    let barman = server(spec(compression, count));
    let archive = barman.archive();
    for (options, flag) in MODES {
        let work = Work::new();
        let call = Call::new(&barman, &work).args(options);
        let take = if flag == Some("--gzip") || flag == Some("--bzip2") {
            recompressed
        } else {
            count
        };
        for wal in archive.segments().iter().take(take) {
            let before = barman.stats().commands.len();
            let out = call.run(wal, &work.dest());
            out.assert_code(0);
            assert!(out.stderr.is_empty(), "quiet on success: {}", out.stderr);
            assert_delivered(archive, &work.dest(), wal);
            let stats = barman.stats();
            let sent = &stats.commands[before..];
            assert_eq!(sent.len(), 1, "{compression} {options:?}: {sent:?}");
            let flags = [
                "--keep-compression",
                "--gzip",
                "--bzip2",
                "--no-keep-compression",
            ];
            for f in flags {
                assert_eq!(
                    sent[0].contains(f),
                    flag == Some(f),
                    "{compression} {options:?}: {}",
                    sent[0]
                );
            }
            fs::remove_file(work.dest()).unwrap();
        }
        assert_clean(&work.pg_wal, archive, None);
    }
}

#[test]
fn stored_none_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::None, 1, 1);
}

#[test]
fn stored_gzip_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Gzip, 1, 1);
}

#[test]
fn stored_bzip2_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Bzip2, 1, 1);
}

#[test]
fn stored_xz_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Xz, 1, 1);
}

#[test]
fn stored_zstd_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Zstd, 1, 1);
}

#[test]
fn stored_lz4_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Lz4, 1, 1);
}

#[test]
fn stored_snappy_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Snappy, 1, 1);
}

/// One archive mixing all seven formats segment by segment.
#[test]
fn stored_mixed_is_byte_identical_in_every_mode() {
    compression_round_trip(StoredCompression::Mixed, StoredCompression::REAL.len(), 2);
}

/// `custom` compression has no magic we know: the stored bytes are refused
/// and the file is asked for again with a plain `get-wal`, which the server
/// decompresses. The Python original would deliver the custom bytes as WAL.
#[test]
fn custom_compression_falls_back_to_a_plain_get_wal() {
    let barman = server(spec(StoredCompression::Custom, 1));
    let archive = barman.archive();
    for options in [&[][..], &["--keep-compression"][..]] {
        let work = Work::new();
        let before = barman.stats();
        let out = Call::new(&barman, &work)
            .args(options)
            .run(FIRST, &work.dest());
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), FIRST);
        let stats = barman.stats();
        let commands = &stats.commands[before.commands.len()..];
        assert_eq!(commands.len(), 2, "{options:?}: {commands:?}");
        assert!(commands[0].contains("--keep-compression"), "{commands:?}");
        assert!(!commands[1].contains("--keep-compression"), "{commands:?}");
        assert_eq!(stats.connections - before.connections, 1, "one session");
        assert_clean(&work.pg_wal, archive, Some((&work.dest(), FIRST)));
    }
}

/// A Barman older than 3.12 rejects `--keep-compression` with a usage
/// error: when the flag was our choice, the file is asked for again
/// without it; when the user asked for it, the failure is reported.
#[test]
fn an_old_barman_rejecting_keep_compression_gets_a_plain_get_wal() {
    let barman = server(spec(StoredCompression::Gzip, 1));
    let archive = barman.archive();
    let usage = StreamFault::Exit {
        status: 2,
        stderr: "usage: barman get-wal [-h] [-P] [-z | -j] [-t] [-p N] server_name wal_name\n\
                 barman get-wal: error: unrecognized arguments: --keep-compression"
            .into(),
    };
    let work = Work::new();
    barman
        .faults()
        .push_rule(FaultRule::times(1, Target::AllTransfers, usage.clone()));
    let out = Call::new(&barman, &work).run(FIRST, &work.dest());
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), FIRST);
    let commands = barman.stats().commands;
    assert!(commands[0].contains("--keep-compression"), "{commands:?}");
    assert!(!commands[1].contains("--keep-compression"), "{commands:?}");

    fs::remove_file(work.dest()).unwrap();
    barman
        .faults()
        .push_rule(FaultRule::times(1, Target::AllTransfers, usage));
    let out = Call::new(&barman, &work)
        .args(["--keep-compression"])
        .run(FIRST, &work.dest());
    assert_ne!(out.code, 0, "the user's explicit flag is not dropped");
    out.assert_one_error(&["unrecognized arguments"]);
    assert!(!work.dest().exists());
}

/// Against a Barman whose get-wal has no `--keep-compression` (Debian's
/// 3.4), the refusal is remembered in the spool: the calls that miss in the
/// next minutes ask for a decompressed file at once, without a refused
/// get-wal (a Python start-up on the Barman host) each. Once the memory is
/// older than five minutes the flag is tried again, and a flag the user
/// wrote is never dropped because of it.
#[test]
fn a_refused_keep_compression_is_remembered_in_the_spool() {
    let faults = Faults {
        without_keep_compression: true,
        ..Faults::default()
    };
    let barman = server_with(spec(StoredCompression::Gzip, 16), faults);
    let archive = barman.archive();
    let work = Work::new();
    let run = |first: usize, options: &[&str]| {
        let before = barman.stats().commands.len();
        let _ = fs::remove_file(work.dest());
        let out = Call::new(&barman, &work)
            .args(["-p", "4"])
            .args(options)
            .run(&seg(first), &work.dest());
        let commands = barman.stats().commands[before..].to_vec();
        let refused = commands
            .iter()
            .filter(|c| c.contains("--keep-compression"))
            .count();
        (out, refused, commands)
    };
    let (out, refused, commands) = run(0, &[]);
    out.assert_code(0);
    assert!(refused >= 1, "{commands:#?}");
    let (out, refused, commands) = run(4, &[]);
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(4));
    assert_eq!(refused, 0, "asked again within minutes: {commands:#?}");
    assert_eq!(commands.len(), 4, "{commands:#?}");

    let memory: Vec<_> = fs::read_dir(&work.spool)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".bwr-keep-refused.")
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(memory.len(), 1, "{memory:?}");
    let six_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(360);
    fs::File::options()
        .write(true)
        .open(&memory[0])
        .unwrap()
        .set_modified(six_minutes_ago)
        .unwrap();
    let (out, refused, commands) = run(8, &[]);
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(8));
    assert!(
        refused >= 1,
        "tried again once the memory is old: {commands:#?}"
    );

    let (out, _, _) = run(12, &["--keep-compression"]);
    assert_ne!(out.code, 0, "the user's explicit flag is not dropped");
    out.assert_one_error(&["unrecognized arguments"]);
}

// ---------------------------------------------------------------------------
// Spool and parallel prefetch
// ---------------------------------------------------------------------------

/// A file waiting in the spool is delivered by a rename: no connection at
/// all, even with `-p 0` (as the original does). Ported from Barman's
/// `test_try_deliver_from_spool`.
#[test]
fn a_spool_hit_makes_no_connection() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let archive = barman.archive();
    let work = Work::new();
    Call::new(&barman, &work)
        .args(["-p", "2"])
        .run(&seg(0), &work.dest())
        .assert_code(0);
    assert_eq!(assert_clean(&work.spool, archive, None), [seg(1)]);
    fs::remove_file(work.dest()).unwrap();

    let before = barman.stats();
    let out = Call::new(&barman, &work).run(&seg(1), &work.dest());
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(1));
    let after = barman.stats();
    assert_eq!(after.connections, before.connections, "no connection");
    assert_eq!(after.commands.len(), before.commands.len());
    assert!(names(&work.spool).is_empty(), "moved, not copied");
}

/// `-p 8`: one connection, nine channels (the requested file, the peek and
/// seven prefetches), seven complete files in the spool; the next seven
/// calls are served from it without connecting. Ported from Barman's
/// `test_peek_additional_files` and `test_spawn_additional_process`.
#[test]
fn parallel_8_is_one_connection_nine_channels_and_seven_spooled() {
    let barman = server(spec(StoredCompression::Zstd, 10));
    let archive = barman.archive();
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["-p", "8"]);
    let before = barman.stats();
    call.run(&seg(0), &work.dest()).assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(0));
    let after = barman.stats();
    assert_eq!(after.connections - before.connections, 1);
    assert_eq!(after.channels_opened - before.channels_opened, 9);
    let commands = &after.commands[before.commands.len()..];
    let peeks: Vec<_> = commands.iter().filter(|c| c.contains("--peek")).collect();
    assert_eq!(
        peeks,
        // Four windows' worth: the next misses reuse the answer kept in
        // the spool instead of paying a peek of their own.
        [&format!("barman get-wal --peek '32' 'angus' '{}'", seg(0))]
    );
    let mut fetched: Vec<String> = commands
        .iter()
        .filter(|c| !c.contains("--peek"))
        .map(|c| c.rsplit(' ').next().unwrap().trim_matches('\'').to_string())
        .collect();
    fetched.sort();
    assert_eq!(fetched, (0..8).map(seg).collect::<Vec<_>>());
    let spooled = assert_clean(&work.spool, archive, None);
    assert_eq!(spooled, (1..8).map(seg).collect::<Vec<_>>());

    for n in 1..8 {
        fs::remove_file(work.dest()).unwrap();
        call.run(&seg(n), &work.dest()).assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(n));
    }
    assert_eq!(
        barman.stats().connections,
        after.connections,
        "all from the spool"
    );
    assert!(names(&work.spool).is_empty());
    fs::remove_file(work.dest()).unwrap();
    call.run(&seg(8), &work.dest()).assert_code(0);
    assert_eq!(barman.stats().connections, after.connections + 1);
    assert_clean(&work.pg_wal, archive, Some((&work.dest(), &seg(8))));
}

/// The calls PostgreSQL makes during a standby's catch-up: a probe for the
/// next timeline's history, every segment in order, then the first missing
/// one. All byte-identical; connections as few as the window allows.
fn catch_up_like_postgres(parallel: usize) {
    const COUNT: usize = 17;
    let barman = server(spec(StoredCompression::Zstd, COUNT));
    let archive = barman.archive();
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["-p", &parallel.to_string()]);
    let before = barman.stats().connections;
    call.run("00000002.history", &work.dest()).assert_code(1);
    for n in 0..COUNT {
        let _ = fs::remove_file(work.dest());
        let out = call.run(&seg(n), &work.dest());
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(n));
        assert_clean(&work.spool, archive, None);
    }
    let _ = fs::remove_file(work.dest());
    let out = call.run(&seg(COUNT), &work.dest());
    out.assert_code(1);
    out.assert_one_error(&[&seg(COUNT), "angus"]);
    assert!(!work.dest().exists());
    let fetching_calls = if parallel <= 1 {
        COUNT
    } else {
        COUNT.div_ceil(parallel)
    };
    assert_eq!(
        barman.stats().connections - before,
        (fetching_calls + 2) as u64,
        "-p {parallel}"
    );
    assert!(names(&work.spool).is_empty());
    assert!(names(&work.pg_wal).is_empty());
}

#[test]
fn catch_up_like_postgres_without_parallel() {
    catch_up_like_postgres(0);
}

#[test]
fn catch_up_like_postgres_parallel_1() {
    catch_up_like_postgres(1);
}

#[test]
fn catch_up_like_postgres_parallel_8() {
    catch_up_like_postgres(8);
}

#[test]
fn catch_up_like_postgres_parallel_16() {
    catch_up_like_postgres(16);
}

/// The spool is created (0700) when missing with `-p`, and never with
/// `-p 0`. Ported from Barman's `test_peek_additional_files_spool_dir_is_created`.
#[test]
fn the_spool_is_created_private_when_missing() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let work = Work::new();
    Call::new(&barman, &work)
        .run(&seg(0), &work.dest())
        .assert_code(0);
    assert!(!work.spool.exists(), "-p 0 needs no spool");
    fs::remove_file(work.dest()).unwrap();
    Call::new(&barman, &work)
        .args(["-p", "3"])
        .run(&seg(0), &work.dest())
        .assert_code(0);
    let mode = fs::metadata(&work.spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(names(&work.spool), [seg(1), seg(2)]);
}

/// A failed peek, or one answering something else than WAL names, costs
/// only the prefetch: the requested file is delivered. (The original exits
/// with an error; ported from `test_execute_peek_failed`.)
#[test]
fn a_failed_peek_still_delivers_the_requested_file() {
    let barman = server(spec(StoredCompression::Zstd, 4));
    let failures = [
        StreamFault::Exit {
            status: 1,
            stderr: "ERROR: peek broke".into(),
        },
        StreamFault::Garbage(100),
    ];
    for fault in failures {
        barman.faults().set(Faults {
            rules: vec![FaultRule::always(Target::Peeks, fault)],
            ..Faults::default()
        });
        let work = Work::new();
        let out = Call::new(&barman, &work)
            .args(["-p", "3"])
            .run(&seg(0), &work.dest());
        out.assert_code(0);
        assert_delivered(barman.archive(), &work.dest(), &seg(0));
        assert!(names(&work.spool).is_empty());
    }
}

/// A Barman host whose sshd allows OpenSSH's default 10 session channels
/// per connection, with `count` zstd segments.
fn with_default_max_sessions(count: usize) -> BackgroundBarman {
    let faults = Faults {
        max_sessions: Some(10),
        ..Faults::default()
    };
    server_with(spec(StoredCompression::Zstd, count), faults)
}

/// With `-p 16` against `MaxSessions 10`, refused channels wait for a free
/// slot: everything arrives, never more than ten channels at once.
#[test]
fn parallel_16_fits_max_sessions_10() {
    let barman = with_default_max_sessions(17);
    let archive = barman.archive();
    let work = Work::new();
    let out = Call::new(&barman, &work)
        .args(["-p", "16"])
        .run(&seg(0), &work.dest());
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &seg(0));
    let spooled = assert_clean(&work.spool, archive, None);
    assert_eq!(spooled, (1..16).map(seg).collect::<Vec<_>>());
    let stats = barman.stats();
    assert!(
        stats.max_concurrent_channels <= 10,
        "{}",
        stats.max_concurrent_channels
    );
    assert_eq!(stats.connections, 1);
    eprintln!(
        "FAULT-MATRIX | MaxSessions 10, -p 16 | 1 iterations | exit 0: 1 | channels refused: {}, \
         max concurrent: {}",
        stats.channels_refused, stats.max_concurrent_channels
    );
}

/// The prefetches' channels are opened ahead (during the peek, and while
/// the first streams run): never one more than the commands that use them,
/// none refused by OpenSSH's default `MaxSessions` of 10, in a batch that
/// peeks and in one that reads the spool's copy of the peek.
#[test]
fn channels_opened_ahead_are_all_used_within_max_sessions_10() {
    let barman = with_default_max_sessions(17);
    let archive = barman.archive();
    let work = Work::new();
    for (first, peeks) in [(0, true), (8, false)] {
        let before = barman.stats();
        Call::new(&barman, &work)
            .args(["-p", "8"])
            .run(&seg(first), &work.dest())
            .assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(first));
        let after = barman.stats();
        let commands = &after.commands[before.commands.len()..];
        let peeked = commands.iter().any(|c| c.contains("--peek"));
        assert_eq!(peeked, peeks, "{commands:#?}");
        // The requested file, its 7 followers, and the peek when there is one.
        assert_eq!(commands.len(), 8 + usize::from(peeks), "{commands:#?}");
        assert_eq!(
            after.channels_opened - before.channels_opened,
            commands.len() as u64,
            "a channel was opened that no command used"
        );
        assert_eq!(after.channels_refused, 0);
    }
    // The first batch's files were taken (or passed over) by then.
    let spooled = assert_clean(&work.spool, archive, None);
    assert_eq!(spooled, (9..16).map(seg).collect::<Vec<_>>());
}

/// `.history` files are always asked of Barman, even when a file of that
/// name sits in the spool (a timeline may have appeared since).
#[test]
fn a_history_file_is_fetched_even_if_spooled() {
    let barman = server(ArchiveSpec {
        first_segment: "000000020000000000000001".into(),
        ..spec(StoredCompression::Zstd, 1)
    });
    let archive = barman.archive();
    let work = Work::new();
    fs::create_dir(&work.spool).unwrap();
    fs::set_permissions(&work.spool, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(work.spool.join("00000002.history"), b"stale\n").unwrap();
    let before = barman.stats().connections;
    for parallel in ["0", "8"] {
        let _ = fs::remove_file(work.dest());
        Call::new(&barman, &work)
            .args(["-p", parallel])
            .run("00000002.history", &work.dest())
            .assert_code(0);
        assert_delivered(archive, &work.dest(), "00000002.history");
    }
    assert_eq!(barman.stats().connections - before, 2);
}

// ---------------------------------------------------------------------------
// Missing files and .partial
// ---------------------------------------------------------------------------

/// A missing segment, `.history` or `.backup` is 1 ("not available"), with
/// and without `-p` (the original exits 2 with `-p`), with one ERROR line
/// naming the WAL and the server; nothing is left behind.
#[test]
fn a_missing_wal_exits_1_with_and_without_parallel() {
    let barman = server(spec(StoredCompression::Zstd, 2));
    let archive = barman.archive();
    let missing = [
        seg(5),
        "00000002.history".to_string(),
        format!("{}.00000028.backup", seg(1)),
    ];
    for parallel in ["0", "8"] {
        let work = Work::new();
        for wal in &missing {
            let out = Call::new(&barman, &work)
                .args(["-p", parallel])
                .run(wal, &work.dest());
            out.assert_code(1);
            out.assert_one_error(&[wal, "angus", "not found"]);
            assert!(!work.dest().exists());
        }
        assert!(names(&work.pg_wal).is_empty());
        assert_clean(&work.spool, archive, None);
    }
}

/// `00000001.history` cannot exist (timeline 1 is never created by a
/// switch), yet PostgreSQL asks for it at the end of every archive recovery:
/// exit 1 at once, in archive recovery too, without connecting, and no
/// ERROR line for this routine ask (the debug level says why).
#[test]
fn the_history_of_timeline_1_is_missing_without_asking() {
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let datadir = data_dir(&work, &["recovery.signal"]);
    let call = Call::new(&barman, &work).cwd(&datadir);
    let out = call.run("00000001.history", &work.dest());
    out.assert_code(1);
    assert_eq!(out.stderr, "");
    let out = call
        .clone()
        .args(["-v"])
        .run("00000001.history", &work.dest());
    out.assert_code(1);
    assert!(out.errors().is_empty(), "{}", out.stderr);
    out.assert_says("DEBUG: WAL file '00000001.history' cannot exist: timeline 1");
    assert_eq!(barman.stats().connections, 0);
    assert!(!work.dest().exists());
}

/// `-P` fetches a `.partial` (the streaming segment) with and without `-p`;
/// the original never does with `-p`. Without `-P` it is missing.
#[test]
fn partial_files_are_fetched_with_dash_capital_p() {
    let barman = server(ArchiveSpec {
        partial: true,
        ..spec(StoredCompression::Zstd, 3)
    });
    let archive = barman.archive();
    let partial = archive.partial().unwrap().to_string();
    assert_eq!(partial, format!("{}.partial", seg(3)));
    let work = Work::new();
    for parallel in ["0", "8"] {
        let call = Call::new(&barman, &work).args(["-p", parallel]);
        call.run(&seg(3), &work.dest()).assert_code(1);
        call.run(&partial, &work.dest()).assert_code(1);
        let with = call.clone().args(["-P"]);
        with.run(&seg(3), &work.dest()).assert_code(0);
        assert_bytes(&work.dest(), &archive.raw_file(&partial).unwrap());
        fs::remove_file(work.dest()).unwrap();
        with.run(&partial, &work.dest()).assert_code(0);
        assert_delivered(archive, &work.dest(), &partial);
        fs::remove_file(work.dest()).unwrap();
    }
    let commands = barman.stats().commands;
    assert!(commands.iter().any(|c| c.contains("--partial")));
    assert_clean(&work.spool, archive, None);
}

// ---------------------------------------------------------------------------
// Transport failures
// ---------------------------------------------------------------------------

/// A connection reset in the middle of every transfer: exit 2 after the
/// bounded retries, no final name holds a partial file anywhere, and the
/// ERROR line names the WAL that could not be fetched.
#[test]
fn a_dropped_connection_exits_2_and_leaves_no_partial_file() {
    let faults = Faults {
        rules: vec![FaultRule::always(
            Target::AllTransfers,
            StreamFault::DropConnectionAfter(300_000),
        )],
        ..Faults::default()
    };
    let barman = server_with(spec(StoredCompression::None, 9), faults);
    let archive = barman.archive();
    for parallel in ["0", "8"] {
        let work = Work::new();
        let before = barman.stats().connections;
        let out = Call::new(&barman, &work)
            .args(["-p", parallel])
            .run(&seg(0), &work.dest());
        out.assert_code(2);
        let connections = barman.stats().connections - before;
        assert!(
            (2..=4).contains(&connections),
            "retried within bounds: {connections}"
        );
        assert!(names(&work.pg_wal).is_empty(), "{:?}", names(&work.pg_wal));
        assert_clean(&work.spool, archive, None);
        // Last, as it fails today: the line names neither WAL nor host.
        out.assert_one_error(&[&seg(0)]);
    }
}

/// A one-time reset is retried within the call: exit 0, right bytes. When
/// it hits a prefetch after the requested file is complete, the call still
/// succeeds and the spool holds only complete files.
#[test]
fn a_one_time_drop_is_recovered_within_the_call() {
    let barman = server(spec(StoredCompression::None, 9));
    let archive = barman.archive();
    for (parallel, victim) in [("0", 0), ("8", 0), ("8", 3)] {
        let work = Work::new();
        barman.faults().push_rule(FaultRule::times(
            1,
            Target::Wal(seg(victim)),
            StreamFault::DropConnectionAfter(300_000),
        ));
        let before = barman.stats().connections;
        let out = Call::new(&barman, &work)
            .args(["-p", parallel])
            .run(&seg(0), &work.dest());
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(0));
        let connections = barman.stats().connections - before;
        if victim == 0 {
            assert_eq!(connections, 2, "-p {parallel}: reconnected once");
        }
        assert_clean(&work.pg_wal, archive, Some((&work.dest(), &seg(0))));
        assert_clean(&work.spool, archive, None);
        assert!(
            barman.faults().snapshot().rules.is_empty(),
            "the fault fired"
        );
        eprintln!(
            "FAULT-MATRIX | one-time DropConnectionAfter(300000) on {} of -p {parallel} | 1 iterations \
             | exit 0: 1 | connections: {connections}, spooled: {}",
            if victim == 0 { "the requested file" } else { "a prefetch" },
            names(&work.spool).len()
        );
    }
}

/// Nothing listens: exit 2 (never OpenSSH's 255), fast, naming the host.
/// Ported from Barman's `test_ssh_connectivity_error`.
#[test]
fn connection_refused_exits_2_never_255() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let port = closed_port();
    for parallel in ["0", "8"] {
        let out = Call::new(&barman, &work)
            .set("--port", port.to_string())
            .args(["-p", parallel])
            .run(FIRST, &work.dest());
        out.assert_code(2);
        out.assert_one_error(&["127.0.0.1", &port.to_string()]);
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    }
    assert!(names(&work.pg_wal).is_empty());
}

/// An unknown host key is refused before authentication: exit 2, the
/// `ssh-keyscan` line to run, and the server never saw a channel.
#[test]
fn an_unknown_host_key_is_refused_with_the_keyscan_hint() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let empty = work.path().join("known_hosts");
    fs::write(&empty, "").unwrap();
    let out = Call::new(&barman, &work)
        .set("--known-hosts", &empty)
        .run(FIRST, &work.dest());
    out.assert_code(2);
    out.assert_one_error(&["ssh-keyscan", &format!("-p {} 127.0.0.1", barman.port())]);
    let stats = barman.stats();
    assert_eq!(stats.channels_opened, 0);
    assert_eq!(stats.auth_successes, 0);
    assert_eq!(stats.connections, 1, "a host key refusal is not retried");
    assert!(!work.dest().exists());
}

/// A changed host key (man in the middle?) is refused: exit 2, no channel.
#[test]
fn a_changed_host_key_is_refused() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    barman.faults().lock().wrong_host_key = true;
    let work = Work::new();
    let out = Call::new(&barman, &work).run(FIRST, &work.dest());
    out.assert_code(2);
    out.assert_one_error(&["HAS CHANGED", "127.0.0.1"]);
    let stats = barman.stats();
    assert_eq!((stats.channels_opened, stats.auth_successes), (0, 0));
    assert!(!work.dest().exists());
}

/// A refused key: exit 2 at once (not retried), no channel.
#[test]
fn a_refused_key_exits_2_quickly() {
    let faults = Faults {
        refuse_auth: true,
        ..Faults::default()
    };
    let barman = server_with(spec(StoredCompression::Zstd, 1), faults);
    let work = Work::new();
    let out = Call::new(&barman, &work).run(FIRST, &work.dest());
    out.assert_code(2);
    out.assert_one_error(&["Permission denied"]);
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    let stats = barman.stats();
    assert_eq!(stats.channels_opened, 0);
    assert_eq!(stats.connections, 1, "not retried");
}

/// `-s 1` sleeps after a failure to fetch, not after a local error.
#[test]
fn sleep_follows_a_failed_fetch_but_not_a_local_error() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["-s", "1"]);
    let out = call.run(&seg(4), &work.dest());
    out.assert_code(1);
    assert!(out.elapsed >= Duration::from_secs(1), "{:?}", out.elapsed);
    let out = call
        .clone()
        .set("--port", closed_port().to_string())
        .run(FIRST, &work.dest());
    out.assert_code(2);
    assert!(out.elapsed >= Duration::from_secs(1), "{:?}", out.elapsed);
    let out = call.run(FIRST, &work.pg_wal);
    out.assert_code(3);
    assert!(out.elapsed < Duration::from_secs(1), "{:?}", out.elapsed);
}

/// Barman's own statuses pass through (3 for an invalid name); a missing
/// `barman` (127) or OpenSSH-style 255 become 1, never above 125. Ported
/// from Barman's `test_ssh_exit_code_is_passed_through`.
#[test]
fn remote_statuses_are_passed_through_or_clamped() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    for (status, expected) in [(1, 1), (3, 3), (127, 1), (255, 1), (137, 1)] {
        barman.faults().push_rule(FaultRule::times(
            1,
            Target::AllTransfers,
            StreamFault::Exit {
                status,
                stderr: format!("ERROR: remote trouble {status}"),
            },
        ));
        let out = Call::new(&barman, &work).run(FIRST, &work.dest());
        out.assert_code(expected);
        out.assert_one_error(&[&format!("remote trouble {status}")]);
        assert!(!work.dest().exists());
    }
}

// ---------------------------------------------------------------------------
// Local problems: exit 3, before any connection
// ---------------------------------------------------------------------------

/// WAL_DEST a directory: 3 with the original's message, no connection.
/// Ported from Barman's `test_exit_code_if_wal_dest_is_dir`.
#[test]
fn wal_dest_a_directory_exits_3() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let out = Call::new(&barman, &work).run(FIRST, &work.pg_wal);
    out.assert_code(3);
    assert_eq!(
        out.errors(),
        [format!(
            "ERROR: WAL_DEST cannot be a directory: {}",
            work.pg_wal.display()
        )]
    );
    assert_eq!(barman.stats().connections, 0);
}

/// WAL_DEST whose directory is missing, or that cannot be written: 3.
/// Ported from Barman's `test_exit_code_if_wal_dest_not_writable`.
#[test]
fn wal_dest_unwritable_exits_3() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let orphan = work.path().join("no-such-dir").join(DEST_NAME);
    let out = Call::new(&barman, &work).run(FIRST, &orphan);
    out.assert_code(3);
    out.assert_one_error(&["(WAL_DEST) for writing", "no-such-dir"]);
    assert_eq!(barman.stats().connections, 0);
    // Root can write anywhere but in /proc.
    let proc_dest = std::path::Path::new("/proc/RECOVERYXLOG");
    let out = Call::new(&barman, &work).run(FIRST, proc_dest);
    out.assert_code(3);
    out.assert_one_error(&["Cannot open '/proc/RECOVERYXLOG' (WAL_DEST) for writing"]);
}

/// Hostile SERVER_NAMEs never reach a shell: 3, no connection, no effect.
#[test]
fn injection_in_server_name_is_refused_locally() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let marker = work.path().join("pwned");
    let hostile = [
        format!("angus'; touch {}; '", marker.display()),
        "$(id)".to_string(),
        "angus\ntouch x".to_string(),
        "angus;id".to_string(),
        "`id`".to_string(),
        "angus bob".to_string(),
        String::new(),
    ];
    for name in &hostile {
        let out = Call::new(&barman, &work)
            .server_name(name)
            .run(FIRST, &work.dest());
        out.assert_code(3);
        out.assert_one_error(&["SERVER_NAME"]);
    }
    assert_eq!(barman.stats().connections, 0);
    assert!(!marker.exists());
}

/// A `--config` full of shell syntax reaches Barman as one word: the server
/// parsed exactly that string and saw no unquoted shell syntax. A control
/// character is refused locally. Ported from `test_build_ssh_command`.
#[test]
fn config_paths_reach_barman_as_one_word() {
    let work = Work::new();
    let marker = work.path().join("pwned");
    let hostile = format!(
        "/etc/barman's \"conf\"; touch {} $(id) `id` | & > < \\ end.conf",
        marker.display()
    );
    let barman = EmbeddedBarman::start_in_background(EmbeddedConfig {
        archive: spec(StoredCompression::Zstd, 1),
        config_check: ConfigCheck::Require(hostile.clone()),
        ..EmbeddedConfig::default()
    })
    .unwrap();
    let call = Call::new(&barman, &work).args(["-c", &hostile]);
    call.run(FIRST, &work.dest()).assert_code(0);
    assert_delivered(barman.archive(), &work.dest(), FIRST);
    let out = call.clone().args(["--test"]).run("DUMMY", "DUMMY".as_ref());
    out.assert_code(0);
    let stats = barman.stats();
    assert!(stats.shell_syntax_commands.is_empty(), "{stats:?}");
    assert_eq!(stats.commands.len(), 2);
    assert!(!marker.exists());

    let out = Call::new(&barman, &work)
        .args(["-c", "/etc/barman.conf"])
        .run(FIRST, &work.dest());
    out.assert_code(1);
    let out = Call::new(&barman, &work)
        .args(["-c", "/etc/barman\n.conf"])
        .run(FIRST, &work.dest());
    out.assert_code(3);
    assert_eq!(
        barman.stats().connections,
        3,
        "the last one never connected"
    );
}

/// Names that are not WAL names never reach a path or a command: 3, no
/// connection, nothing written.
#[test]
fn invalid_wal_names_exit_3_without_connecting() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let long = "A".repeat(200);
    let bad = [
        "../x",
        "a/b",
        &long,
        "000000010000000000000001/../../x",
        "../../etc/passwd",
        "00000001000000000000000G",
        "00000001.history/..",
        "",
    ];
    for wal in bad {
        for parallel in ["0", "8"] {
            let out = Call::new(&barman, &work)
                .args(["-p", parallel])
                .run(wal, &work.dest());
            out.assert_code(3);
            out.assert_one_error(&["not a valid WAL file name"]);
        }
    }
    assert_eq!(barman.stats().connections, 0);
    assert!(names(&work.pg_wal).is_empty());
}

// ---------------------------------------------------------------------------
// --test, command line
// ---------------------------------------------------------------------------

/// `--test` prints Barman's answer and exits 0; an unknown server is 1; an
/// unreachable host 2 (the original exits 255). Ported from Barman's
/// `test_connectivity_test_ok` and `test_connectivity_test_error`.
#[test]
fn test_mode_checks_connection_and_configuration() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["--test"]);
    let out = call.run("DUMMY", "DUMMY".as_ref());
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        "Ready to retrieve WAL files from the server angus\n"
    );
    // stderr: the resolved target, by `ssh -G`'s names, and the key the server proved it holds.
    let key_text = barman.known_hosts_line();
    let key_text = key_text.split_once(' ').unwrap().1;
    let fingerprint = russh::keys::PublicKey::from_openssh(key_text)
        .unwrap()
        .fingerprint(Default::default())
        .to_string();
    for want in [
        "hostname 127.0.0.1".to_string(),
        format!("port {}", barman.port()),
        "user barman".into(),
        "proxy direct".into(),
        format!("server host key {fingerprint}"),
    ] {
        assert!(
            out.stderr.contains(&want),
            "no '{want}' in:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("ERROR"), "{}", out.stderr);
    assert_eq!(
        barman.stats().commands,
        ["barman get-wal --test 'angus' 'DUMMY'"]
    );

    let out = call
        .clone()
        .server_name("nosuch")
        .run("DUMMY", "DUMMY".as_ref());
    out.assert_code(1);
    out.assert_says("nosuch");

    let out = call
        .clone()
        .set("--port", closed_port().to_string())
        .run("DUMMY", "DUMMY".as_ref());
    out.assert_code(2);
    assert!(out.stdout.is_empty());
    out.assert_one_error(&["127.0.0.1"]);

    let out = call
        .args(["-c", "/etc/barman.conf"])
        .run("DUMMY", "DUMMY".as_ref());
    out.assert_code(0);
    assert_eq!(
        barman.stats().commands.last().unwrap(),
        "barman --config '/etc/barman.conf' get-wal --test 'angus' 'DUMMY'"
    );
    assert!(!std::path::Path::new("DUMMY").exists());
}

/// Options may follow the positionals (as `barman restore` writes them),
/// and a repeated option wins. Ported from Barman's `test_ssh_port`.
#[test]
fn options_after_positionals_work() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let archive = barman.archive();
    let work = Work::new();
    let dest = work.dest();
    let port = barman.port().to_string();
    let argv: Vec<&std::ffi::OsStr> = vec![
        "127.0.0.1".as_ref(),
        "angus".as_ref(),
        FIRST.as_ref(),
        dest.as_os_str(),
        "--port".as_ref(),
        "1".as_ref(),
        "-p".as_ref(),
        "2".as_ref(),
        "--spool-dir".as_ref(),
        work.spool.as_os_str(),
        "-F".as_ref(),
        "/dev/null".as_ref(),
        "-U".as_ref(),
        "barman".as_ref(),
        "-i".as_ref(),
        barman.client_key_path().as_os_str(),
        "--known-hosts".as_ref(),
        barman.known_hosts_path().as_os_str(),
        "--port".as_ref(),
        port.as_ref(),
    ];
    let out = run_argv(&argv);
    out.assert_code(0);
    assert_delivered(archive, &dest, FIRST);
    assert_eq!(names(&work.spool), [seg(1)], "-p 2 took effect");
    assert_eq!(barman.stats().users, ["barman"]);
}

#[test]
fn version_exits_0() {
    for flag in ["--version", "-V"] {
        let out = run_argv(&[flag]);
        out.assert_code(0);
        assert!(
            out.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{}",
            out.stdout
        );
        // A fleet mixing us with the Python original tells them apart, and
        // knows which build runs.
        let commit = out
            .stdout
            .split("(Rust implementation, commit ")
            .nth(1)
            .and_then(|rest| rest.trim_end().strip_suffix(')'));
        assert!(
            commit.is_some_and(|c| c.len() == 12 && c.chars().all(|c| c.is_ascii_hexdigit())),
            "{}",
            out.stdout
        );
    }
}

/// `--help` is read by people: no rustdoc link syntax, and the exit-status
/// footer names every status we use.
#[test]
fn help_is_plain_text_and_names_every_exit_status() {
    let out = run_argv(&["--help"]);
    out.assert_code(0);
    assert!(!out.stdout.contains("[`"), "{}", out.stdout);
    let footer = out.stdout.split("Exit status:").nth(1).unwrap_or_default();
    for status in ["0 ", "1 ", "2 ", "3 ", "1..125", "130/143", "255"] {
        assert!(footer.contains(status), "{status} missing from: {footer}");
    }
}

/// PostgreSQL passes `%p` relative to its data directory, where it runs the
/// command; a stale file at WAL_DEST is replaced whole.
#[test]
fn a_relative_wal_dest_in_the_data_directory() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let archive = barman.archive();
    let work = Work::new();
    fs::write(work.dest(), b"stale leftover").unwrap();
    let relative = std::path::Path::new("pg_wal").join(DEST_NAME);
    for parallel in ["0", "2"] {
        let out = Call::new(&barman, &work)
            .args(["-p", parallel])
            .cwd(work.path())
            .run(&seg(0), &relative);
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(0));
    }
    assert_eq!(names(&work.pg_wal), [DEST_NAME]);
    assert_eq!(names(&work.spool), [seg(1)]);
}

/// A spool on another filesystem than WAL_DEST: a hit is copied under a
/// temp name and renamed (no rename across filesystems), still without a
/// connection.
#[test]
fn a_spool_on_another_filesystem_is_copied() {
    let barman = server(spec(StoredCompression::Zstd, 3));
    let archive = barman.archive();
    let work = Work::new();
    let tmpfs = match Tmpfs::mount(work.path(), "8m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            assert!(!is_root() && !in_ci(), "cannot mount a tmpfs: {why}");
            eprintln!("SKIPPED a_spool_on_another_filesystem_is_copied: {why}");
            return;
        }
    };
    let spool = tmpfs.dir.join("spool");
    let call = Call::new(&barman, &work)
        .set("--spool-dir", &spool)
        .args(["-p", "3"]);
    call.run(&seg(0), &work.dest()).assert_code(0);
    assert_eq!(names(&spool), [seg(1), seg(2)]);
    let connections = barman.stats().connections;
    for n in [1, 2] {
        fs::remove_file(work.dest()).unwrap();
        call.run(&seg(n), &work.dest()).assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(n));
    }
    assert_eq!(
        barman.stats().connections,
        connections,
        "served from the spool"
    );
    assert!(names(&spool).is_empty());
    assert_eq!(names(&work.pg_wal), [DEST_NAME]);
}

/// Sanity of the harness itself: a fetch takes well under the call bound.
#[test]
fn a_plain_fetch_is_quick_and_quiet() {
    let barman = server(spec(StoredCompression::Zstd, 1));
    let work = Work::new();
    let started = Instant::now();
    let out = Call::new(&barman, &work).run(FIRST, &work.dest());
    out.assert_code(0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        barman.stats().commands,
        [format!(
            "barman get-wal --keep-compression 'angus' '{FIRST}'"
        )]
    );
}
