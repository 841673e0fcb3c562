//! `--direct-read` against the embedded Barman: stored files read with
//! `cat`, the layout learnt once from `show-server`, and `barman get-wal`
//! asked for whatever direct read cannot settle.

mod common;

use common::*;
use embedded_barman::{ArchiveSpec, Faults, StoredCompression};

fn get_wals(commands: &[String]) -> Vec<&String> {
    commands.iter().filter(|c| c.contains("get-wal")).collect()
}

#[test]
fn every_compression_is_read_directly_and_byte_identical() {
    for compression in StoredCompression::REAL
        .into_iter()
        .chain([StoredCompression::Mixed])
    {
        let barman = server(spec(compression, 10));
        let work = Work::new();
        let call = Call::new(&barman, &work).args(["--direct-read", "-p", "4"]);
        for n in 0..10 {
            call.run(&seg(n), &work.dest()).assert_code(0);
            let expected = barman.archive().raw_segment(&seg(n)).unwrap();
            assert!(
                std::fs::read(work.dest()).unwrap() == expected,
                "{compression:?}: {} differs",
                seg(n)
            );
        }
        let stats = barman.stats();
        assert!(
            get_wals(&stats.commands).is_empty(),
            "{compression:?}: get-wal was used: {:?}",
            stats.commands
        );
        let show_servers = stats
            .commands
            .iter()
            .filter(|c| c.contains("show-server"))
            .count();
        assert_eq!(
            show_servers, 1,
            "the layout is learnt once and cached: {:?}",
            stats.commands
        );
    }
}

#[test]
fn a_file_still_in_incoming_is_found() {
    let barman = server(ArchiveSpec {
        incoming_count: 1,
        ..spec(StoredCompression::Zstd, 3)
    });
    let incoming = barman.archive().incoming()[0].clone();
    let work = Work::new();
    Call::new(&barman, &work)
        .args(["--direct-read"])
        .run(&incoming, &work.dest())
        .assert_code(0);
    assert!(
        std::fs::read(work.dest()).unwrap() == barman.archive().raw_segment(&incoming).unwrap()
    );
    assert!(get_wals(&barman.stats().commands).is_empty());
}

#[test]
fn a_forced_command_account_falls_back_to_get_wal_and_remembers() {
    let barman = server_with(
        spec(StoredCompression::Zstd, 6),
        Faults {
            forced_command: true,
            ..Faults::default()
        },
    );
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["--direct-read", "-p", "2"]);
    for n in [0, 2, 4] {
        call.run(&seg(n), &work.dest()).assert_code(0);
        assert!(
            std::fs::read(work.dest()).unwrap() == barman.archive().raw_segment(&seg(n)).unwrap()
        );
    }
    let commands = barman.stats().commands;
    let cats = commands.iter().filter(|c| c.starts_with("cat ")).count();
    assert_eq!(
        cats, 1,
        "refused once, then remembered in the cache: {commands:?}"
    );
    assert!(!get_wals(&commands).is_empty());
}

#[test]
fn custom_compression_is_asked_of_get_wal() {
    let barman = server(spec(StoredCompression::Custom, 2));
    let work = Work::new();
    Call::new(&barman, &work)
        .args(["--direct-read"])
        .run(&seg(0), &work.dest())
        .assert_code(0);
    assert!(std::fs::read(work.dest()).unwrap() == barman.archive().raw_segment(&seg(0)).unwrap());
    let commands = barman.stats().commands;
    let last = commands.last().unwrap();
    assert!(
        last.contains("get-wal") && !last.contains("--keep-compression"),
        "custom bytes are decompressed by Barman: {commands:?}"
    );
}

/// An encrypted WAL file (Barman's `encryption = gpg`) is read directly,
/// found undecodable, and asked of get-wal, which decrypts it on the Barman
/// host: the right bytes at %p, with no key on the standby. Encryption is a
/// server-wide setting, so the next calls go to get-wal at once.
#[test]
fn an_encrypted_archive_is_asked_of_get_wal_and_remembered() {
    let barman = server(spec(StoredCompression::Encrypted, 6));
    let work = Work::new();
    let call = Call::new(&barman, &work).args(["--direct-read", "-p", "1", "-v"]);
    let first = call.run(&seg(0), &work.dest());
    first.assert_code(0);
    first.assert_says("only Barman can read");
    assert_delivered(barman.archive(), &work.dest(), &seg(0));
    for n in [1, 2] {
        call.run(&seg(n), &work.dest()).assert_code(0);
        assert_delivered(barman.archive(), &work.dest(), &seg(n));
    }
    let commands = barman.stats().commands;
    let cats = commands.iter().filter(|c| c.starts_with("cat ")).count();
    assert_eq!(cats, 1, "read directly once, then remembered: {commands:?}");
    let last = commands.last().unwrap();
    assert!(
        last.contains("get-wal") && !last.contains("--keep-compression"),
        "Barman decrypts and decompresses: {commands:?}"
    );
}

#[test]
fn a_missing_file_is_confirmed_by_barman_before_exit_1() {
    let barman = server(spec(StoredCompression::Zstd, 2));
    let work = Work::new();
    let out = Call::new(&barman, &work)
        .args(["--direct-read", "-p", "4"])
        .run(&seg(5), &work.dest());
    out.assert_code(1);
    out.assert_one_error(&["not found"]);
    assert!(!get_wals(&barman.stats().commands).is_empty());
    assert!(!work.dest().exists());
}
