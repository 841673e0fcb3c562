//! A complete segment is complete, and nothing
//! the Barman host sends can grow without bound. The real binary against the
//! embedded Barman host, each fault with remote exit 0 where a remote exit
//! exists: segments whose WAL ends early, decompression bombs in every
//! format, answers that never end. Each is refused (or, for a listing, cut)
//! with a non-zero exit and one ERROR line, nothing at WAL_DEST, nothing
//! left in pg_wal or the spool.
//!
//! Prints `FAULT-MATRIX | ...` lines like tests/faults.rs (`--nocapture`).

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;
use embedded_barman::{ArchiveSpec, FaultRule, StoredCompression, StreamFault, Target};

/// The WAL page size, and where the first page's `xlp_rem_len` is.
const PAGE: usize = 8192;
const REM_LEN_AT: usize = 16;

/// Asserts the call refused `wal` and left nothing behind.
fn assert_refused(
    out: &Outcome,
    work: &Work,
    archive: &embedded_barman::Archive,
    wal: &str,
    says: &str,
) {
    out.assert_code(1);
    out.assert_one_error(&[wal, says]);
    assert!(!work.dest().exists(), "{wal}: something was delivered");
    assert!(
        names(&work.pg_wal).is_empty(),
        "pg_wal: {:?}",
        names(&work.pg_wal)
    );
    assert_clean(&work.spool, archive, None);
}

/// The three shapes a lost end takes in an archived segment, built from
/// its real bytes: (label, bytes, what the ERROR line says).
fn early_endings(genuine: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    // Records start after the first page's continuation tail; zero from
    // the start of one some way into the first page.
    let rem_len = u32::from_le_bytes(genuine[REM_LEN_AT..REM_LEN_AT + 4].try_into().unwrap());
    let mut at = (40 + rem_len as usize).next_multiple_of(8);
    while at < 1600 {
        let len = u32::from_le_bytes(genuine[at..at + 4].try_into().unwrap()) as usize;
        let next = (at + len).next_multiple_of(8);
        if next + 24 >= PAGE {
            break;
        }
        at = next;
    }
    let mut zero_length = genuine.to_vec();
    zero_length[at..].fill(0);
    let mut zero_page = genuine.to_vec();
    zero_page[PAGE * 40..].fill(0);
    let mut huge_rem_len = genuine.to_vec();
    huge_rem_len[REM_LEN_AT..REM_LEN_AT + 4].copy_from_slice(&(2u32 << 20).to_le_bytes());
    vec![
        ("zero record length", zero_length, "zero record length"),
        ("zeroed page", zero_page, "zeroed page"),
        ("huge xlp_rem_len", huge_rem_len, "xlp_rem_len"),
    ]
}

/// A segment whose records stop early, each shape, sent raw and as stored
/// zstd, with `-p 0`, `-p 3` and `-P`: refused, exit 1, the ERROR line says
/// where the WAL ends; the files prefetched beside it arrive intact.
#[test]
fn segments_whose_wal_ends_early_are_refused() {
    let mut tally = Tally::new();
    let barman = server(spec(StoredCompression::None, 4));
    let archive = barman.archive();
    let victim = seg(1);
    let genuine = raw(archive, &victim).unwrap();
    for (label, bytes, says) in early_endings(&genuine) {
        let zstd = zstd::encode_all(&bytes[..], 3).unwrap();
        for payload in [bytes, zstd] {
            for options in [&["-p", "0"][..], &["-p", "3"], &["-P"]] {
                tally.iteration();
                barman.faults().set(rules(vec![FaultRule::always(
                    Target::Wal(victim.clone()),
                    StreamFault::SendBytes(payload.clone()),
                )]));
                let work = Work::new();
                let out = Call::new(&barman, &work)
                    .args(options)
                    .run(&victim, &work.dest());
                tally.code(out.code);
                assert_refused(&out, &work, archive, &victim, says);
                if options == ["-p", "3"] {
                    let spooled = assert_clean(&work.spool, archive, None);
                    assert_eq!(spooled.len(), 2, "{label}: the other files arrive");
                }
                tally.note(format!("{label}: refused"));
            }
        }
    }
    // The same bytes as the archive's own file are delivered: the walk
    // itself is not what refuses them.
    barman.faults().clear();
    let work = Work::new();
    let out = Call::new(&barman, &work).run(&victim, &work.dest());
    out.assert_code(0);
    assert_delivered(archive, &work.dest(), &victim);
    tally.print("segment whose WAL ends early (zero length, zeroed page, huge xlp_rem_len), raw and zstd, -p 0/3/-P");
}

fn compress(format: StoredCompression, raw: &[u8]) -> Vec<u8> {
    match format {
        StoredCompression::None => raw.to_vec(),
        StoredCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        StoredCompression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        StoredCompression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        StoredCompression::Zstd => zstd::encode_all(raw, 1).unwrap(),
        StoredCompression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        StoredCompression::Snappy => {
            let mut e = snap::write::FrameEncoder::new(Vec::new());
            e.write_all(raw).unwrap();
            e.into_inner().unwrap()
        }
        other => panic!("no encoder for {other}"),
    }
}

const BOMB_FORMATS: [StoredCompression; 6] = [
    StoredCompression::Gzip,
    StoredCompression::Bzip2,
    StoredCompression::Xz,
    StoredCompression::Zstd,
    StoredCompression::Lz4,
    StoredCompression::Snappy,
];

/// A decompression bomb in each format: a real 1 MiB segment followed by
/// 31 MiB of zeros. Decoding stops at the size the segment's header
/// announces: exit 1, the ERROR line names that size, nothing written
/// past it is left anywhere. A `.history` bomb stops at 8 MiB.
#[test]
fn decompression_bombs_stop_at_the_announced_size() {
    let mut tally = Tally::new();
    let barman = server(ArchiveSpec {
        first_segment: "000000020000000000000001".to_string(),
        ..spec(StoredCompression::None, 2)
    });
    let archive = barman.archive();
    let victim = "000000020000000000000002".to_string();
    let mut bomb = raw(archive, &victim).unwrap().to_vec();
    bomb.resize(32 << 20, 0);
    let history = "00000002.history";
    let mut text_bomb = archive.raw_file(history).unwrap();
    text_bomb.resize(9 << 20, b'\n');
    for format in BOMB_FORMATS {
        for (wal, raw, says) in [
            (
                victim.as_str(),
                &bomb,
                "more than the 1048576 bytes its WAL header announces",
            ),
            (
                history,
                &text_bomb,
                "more than the 8388608 bytes any real history",
            ),
        ] {
            tally.iteration();
            barman.faults().set(rules(vec![FaultRule::always(
                Target::Wal(wal.to_string()),
                StreamFault::SendBytes(compress(format, raw)),
            )]));
            let work = Work::new();
            let out = Call::new(&barman, &work)
                .args(["-p", "2"])
                .run(wal, &work.dest());
            tally.code(out.code);
            assert_refused(&out, &work, archive, wal, says);
            tally.note(format!("{format} bomb refused"));
        }
    }
    tally.print("decompression bomb (32 MiB segment, 9 MiB history) per format");
}

/// `--io-timeout` for the never-ending answers below.
const IO_TIMEOUT: u64 = 1;

/// A transfer that trickles (4 KiB every 50 ms: the idle timer never fires,
/// the 1 MiB segment would take 13 s) fails at 5 x `--io-timeout`: exit 1,
/// the ERROR line says so, no temp file left, nothing at WAL_DEST.
#[test]
fn a_trickling_transfer_ends_at_its_deadline() {
    let mut tally = Tally::new();
    let barman = server(spec(StoredCompression::None, 4));
    let archive = barman.archive();
    let victim = seg(0);
    for parallel in ["0", "3"] {
        tally.iteration();
        barman.faults().set(rules(vec![FaultRule::always(
            Target::Wal(victim.clone()),
            StreamFault::Trickle {
                bytes: 4096,
                every: Duration::from_millis(50),
            },
        )]));
        let work = Work::new();
        let out = Call::new(&barman, &work)
            .args(["--io-timeout", &IO_TIMEOUT.to_string(), "-p", parallel])
            .run(&victim, &work.dest());
        tally.code(out.code);
        assert_refused(&out, &work, archive, &victim, "did not end within 5 s");
        assert!(
            out.elapsed < Duration::from_secs(5 * IO_TIMEOUT + 4),
            "took {:?}",
            out.elapsed
        );
        tally.note("refused at 5 x --io-timeout");
    }
    tally.print("trickling transfer (4 KiB / 50 ms), --io-timeout 1, -p 0 and 3");
}

/// A `get-wal --peek` answer that never ends, trickled or flooding: the
/// requested file is delivered, the listing is cut within `--io-timeout`
/// and the call ends (exit 0) instead of waiting for it.
#[test]
fn a_never_ending_peek_is_cut() {
    let mut tally = Tally::new();
    let barman = server(spec(StoredCompression::None, 6));
    let archive = barman.archive();
    let wal = seg(0);
    for (label, every) in [("trickled", 100), ("flooding", 0)] {
        tally.iteration();
        barman.faults().set(rules(vec![FaultRule::always(
            Target::Peeks,
            StreamFault::Endless(Duration::from_millis(every)),
        )]));
        let work = Work::new();
        let out = Call::new(&barman, &work)
            .args(["--io-timeout", &IO_TIMEOUT.to_string(), "-p", "4", "-v"])
            .run(&wal, &work.dest());
        tally.code(out.code);
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &wal);
        assert!(
            out.elapsed < Duration::from_secs(IO_TIMEOUT + 4),
            "{label}: took {:?}",
            out.elapsed
        );
        assert_clean(&work.spool, archive, None);
        tally.note(format!("{label}: delivered, listing cut"));
    }
    tally.print("never-ending get-wal --peek answer (trickled, flooding), --io-timeout 1, -p 4");
}

/// An answer no bound foresees (a `show-server` that never ends, for
/// `--direct-read`): the call gives up at its deadline, 10 x `--io-timeout`,
/// exit 2, one ERROR line, nothing left behind.
#[test]
fn a_call_never_outlives_its_deadline() {
    let mut tally = Tally::new();
    let barman = server(spec(StoredCompression::None, 2));
    let archive = barman.archive();
    let wal = seg(0);
    barman.faults().set(rules(vec![FaultRule::always(
        Target::ShowServer,
        StreamFault::Endless(Duration::from_millis(100)),
    )]));
    let work = Work::new();
    tally.iteration();
    let out = Call::new(&barman, &work)
        .args([
            "--io-timeout",
            &IO_TIMEOUT.to_string(),
            "--direct-read",
            "-p",
            "2",
        ])
        .run(&wal, &work.dest());
    tally.code(out.code);
    out.assert_code(2);
    out.assert_one_error(&[&wal, "deadline of one call"]);
    assert!(
        out.elapsed >= Duration::from_secs(10 * IO_TIMEOUT)
            && out.elapsed < Duration::from_secs(10 * IO_TIMEOUT + 5),
        "took {:?}",
        out.elapsed
    );
    assert!(!work.dest().exists());
    assert!(names(&work.pg_wal).is_empty());
    assert_clean(&work.spool, archive, None);
    tally.note("gave up at the call's deadline");
    tally.print("never-ending show-server (--direct-read), --io-timeout 1");
}

/// `-P` takes Barman's `.partial` for a segment it does not have, judged
/// as a `.partial`; a damaged copy of a segment Barman does have is judged
/// as a complete segment, `-P` or not.
#[test]
fn dash_capital_p_applies_partial_rules_to_partial_files_only() {
    let barman = server(ArchiveSpec {
        partial: true,
        ..spec(StoredCompression::None, 3)
    });
    let archive = barman.archive();
    let work = Work::new();
    let out = Call::new(&barman, &work)
        .args(["-P"])
        .run(&seg(3), &work.dest());
    out.assert_code(0);
    assert_bytes(
        &work.dest(),
        &archive.raw_file(archive.partial().unwrap()).unwrap(),
    );
    fs::remove_file(work.dest()).unwrap();
    // The archive's seg(1) with the tail of a .partial: zeros after page 40.
    let mut zero_tail = raw(archive, &seg(1)).unwrap().to_vec();
    zero_tail[PAGE * 40..].fill(0);
    barman.faults().set(rules(vec![FaultRule::always(
        Target::Wal(seg(1)),
        StreamFault::SendBytes(zero_tail),
    )]));
    let out = Call::new(&barman, &work)
        .args(["-P"])
        .run(&seg(1), &work.dest());
    assert_refused(&out, &work, archive, &seg(1), "zeroed page");
    let commands = barman.stats().commands;
    let asked: Vec<&String> = commands.iter().filter(|c| c.contains(&seg(1))).collect();
    assert!(
        asked.iter().all(|c| !c.contains("--partial")),
        "a segment Barman has is asked for as itself: {asked:?}"
    );
}

/// PostgreSQL 9.6 to 11 recover with a `recovery.conf`: without
/// `standby_mode = on` it is an archive recovery, and `--on-failure=auto`
/// stops it (255) on a failure that is not Barman's "not found"; with it,
/// a standby, told "not available".
#[test]
fn recovery_conf_counts_as_an_archive_recovery_unless_standby_mode_is_on() {
    let mut tally = Tally::new();
    let barman = server(spec(StoredCompression::None, 2));
    barman.faults().set(rules(vec![FaultRule::always(
        Target::AllTransfers,
        StreamFault::Exit {
            status: 1,
            stderr: "ERROR: something broke".into(),
        },
    )]));
    for (conf, expect) in [
        ("restore_command = 'barman-wal-restore ...'\n", 255),
        ("standby_mode = 'off'\n", 255),
        ("standby_mode = 'on'\n", 1),
        ("standby_mode = true # a standby\n", 1),
    ] {
        tally.iteration();
        let work = Work::new();
        let data = data_dir(&work, &[]);
        fs::write(data.join("recovery.conf"), conf).unwrap();
        let out = Call::new(&barman, &work)
            .cwd(&data)
            .allow_abort()
            .run(&seg(0), &work.dest());
        tally.code(out.code);
        assert_eq!(out.code, expect, "{conf:?}: {}", out.stderr);
        assert!(!work.dest().exists());
        tally.note(format!("{} -> {expect}", conf.trim()));
    }
    tally.print("recovery.conf (PostgreSQL 9.6-11), remote error");
}

/// WAL from a PostgreSQL newer than the client's table of page magics
/// (19+): delivered with one WARNING line when the data directory's
/// PG_VERSION says the cluster is that new and every record CRC holds;
/// refused otherwise.
#[test]
fn a_newer_page_magic_is_accepted_for_a_cluster_that_new() {
    let barman = server(spec(StoredCompression::None, 2));
    let archive = barman.archive();
    let wal = seg(0);
    let mut newer = raw(archive, &wal).unwrap().to_vec();
    for page in (0..newer.len()).step_by(PAGE) {
        newer[page..page + 2].copy_from_slice(&0xD11Au16.to_le_bytes());
    }
    let mut damaged = newer.clone();
    damaged[PAGE * 3 + 500] ^= 0x10;
    let cases = [
        ("19", newer.clone(), 0),
        ("18", newer.clone(), 1),
        ("", newer.clone(), 1),
        ("19", damaged, 1),
    ];
    for (version, bytes, expect) in cases {
        barman.faults().set(rules(vec![FaultRule::always(
            Target::Wal(wal.clone()),
            StreamFault::SendBytes(bytes.clone()),
        )]));
        let work = Work::new();
        let data = data_dir(&work, &["standby.signal"]);
        if !version.is_empty() {
            fs::write(data.join("PG_VERSION"), format!("{version}\n")).unwrap();
        }
        let out = Call::new(&barman, &work)
            .cwd(&data)
            .args(["-p", "2"])
            .run(&wal, &work.dest());
        out.assert_code(expect);
        let warnings = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("WARNING:"))
            .count();
        if expect == 0 {
            assert_bytes(&work.dest(), &bytes);
            assert_eq!(warnings, 1, "one WARNING line: {}", out.stderr);
            out.assert_says("0xd11a");
        } else {
            out.assert_one_error(&[&wal]);
            assert!(!work.dest().exists());
        }
    }
}

/// With `--async -P`, the worker's probe past the archive's head asks for
/// the next segment as itself: Barman's `.partial` of it never lands in the
/// spool under the segment's name (a later call would take it for the
/// complete segment). The call that asks for it gets the `.partial` by
/// itself, as `-P` promises.
#[test]
fn the_worker_never_spools_a_partial_under_a_segment_name() {
    let barman = server(ArchiveSpec {
        partial: true,
        ..spec(StoredCompression::None, 3)
    });
    let archive = barman.archive();
    let work = Work::new();
    let call =
        Call::new(&barman, &work).args(["--async", "-p", "4", "--async-idle", "1", "-P", "-v"]);
    for n in 0..3 {
        let out = call.run(&seg(n), &work.dest());
        out.assert_code(0);
        assert_delivered(archive, &work.dest(), &seg(n));
    }
    // On the archive's last segment, the worker probes the one after it.
    let head = seg(3);
    let log = || fs::read_to_string(work.spool.join(common::WORKER_LOG)).unwrap_or_default();
    let probed = wait_until(Duration::from_secs(15), || {
        log()
            .lines()
            .any(|l| l.contains(&format!("{head}:")) || l.contains(&format!("{head} ready")))
    });
    assert!(probed, "the worker never probed {head}; log:\n{}", log());
    assert!(
        !work.spool.join(&head).exists(),
        "a .partial spooled as {head}; log:\n{}",
        log()
    );
    assert!(!log().contains(&format!("{head} ready")), "log:\n{}", log());
    let out = call.run(&head, &work.dest());
    out.assert_code(0);
    assert_bytes(
        &work.dest(),
        &archive.raw_file(archive.partial().unwrap()).unwrap(),
    );
    assert_clean(&work.spool, archive, None);
    // The worker leaves after its idle second (its spool goes with `work`).
    let lock = work.spool.join(common::WORKER_LOCK);
    let left = wait_until(Duration::from_secs(20), || {
        fs::File::open(&lock).is_ok_and(|f| f.try_lock_shared().is_ok())
    });
    assert!(left, "the worker is still running; log:\n{}", log());
}
