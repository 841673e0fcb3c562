//! `barman-wal-bench --embedded`, the README's first command, as a newcomer
//! runs it: it finds the restore binary beside itself, measures, and ends
//! with one line saying what was measured and the ratio.

use std::process::Command;

#[test]
fn the_embedded_run_ends_with_a_line_saying_what_was_measured() {
    let out = Command::new(env!("CARGO_BIN_EXE_barman-wal-bench"))
        .args(["--embedded", "--count", "4", "-p", "0,2"])
        .args(["--segment-mib", "1", "--command-latency-ms", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "Result: 4 sequential restore_command calls from the embedded Barman \
             (zstd archive, 1 MiB segments): ours with -p "
        ),
        "last line: {last}"
    );
    assert!(
        last.ends_with(" s).") || last.ends_with(" s."),
        "last line: {last}"
    );
}

/// `--clients N`: N standbys at once, each its own sequence of calls, all
/// counted in one row.
#[test]
fn clients_each_run_the_whole_sequence_against_the_one_barman() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_barman-wal-bench"))
        .args(["--embedded", "--count", "3", "-p", "0", "--clients", "2"])
        .args(["--segment-mib", "1", "--command-latency-ms", "5", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("by each of 2 clients at once"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &report["summaries"][0];
    assert_eq!(row["calls"], 6, "{row}");
    assert_eq!(row["failed"], 0, "{row}");
    // -p 0: one connection per call, counted by the embedded server.
    assert_eq!(row["connections"], 6, "{row}");
}
