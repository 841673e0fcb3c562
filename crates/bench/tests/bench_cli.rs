//! `barman-wal-bench --embedded`, the README's first command, as a newcomer
//! runs it: it finds the restore binary beside itself, measures, and ends
//! with one line saying what was measured and the ratio.

use std::ffi::OsStr;
use std::process::Command;

/// Runs the bench on a tiny embedded archive (1 MiB segments, 5 ms per
/// Barman command) with `args`; it must exit 0. Returns its stdout.
fn bench_small<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_barman-wal-bench"))
        .args([
            "--embedded",
            "--segment-mib",
            "1",
            "--command-latency-ms",
            "5",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[test]
fn the_embedded_run_ends_with_a_line_saying_what_was_measured() {
    let stdout = bench_small(&["--count", "4", "-p", "0,2"]);
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
    let stdout = bench_small(&[
        OsStr::new("--count"),
        OsStr::new("3"),
        OsStr::new("-p"),
        OsStr::new("0"),
        OsStr::new("--clients"),
        OsStr::new("2"),
        OsStr::new("--json"),
        json.as_os_str(),
    ]);
    assert!(stdout.contains("by each of 2 clients at once"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &report["summaries"][0];
    assert_eq!(row["calls"], 6, "{row}");
    assert_eq!(row["failed"], 0, "{row}");
    // -p 0: one connection per call, counted by the embedded server.
    assert_eq!(row["connections"], 6, "{row}");
}

/// `--plot` and `--format csv` together: the SVG has every call as a
/// point, hits and misses in their own series, and stdout is CSV a
/// program can read, one row per setting.
#[test]
fn the_plot_draws_every_call_and_csv_goes_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("X.svg");
    let stdout = bench_small(&[
        OsStr::new("--count"),
        OsStr::new("4"),
        OsStr::new("-p"),
        OsStr::new("0,2"),
        OsStr::new("--plot"),
        plot.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("csv"),
    ]);

    let mut csv = csv::Reader::from_reader(stdout.as_bytes());
    let header = csv.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    let settings: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                &r[column("program")],
                &r[column("parallel")],
                &r[column("calls")],
            )
        })
        .collect();
    assert_eq!(settings, [("ours", "0", "4"), ("ours", "2", "4")]);
    for r in &rows {
        assert_eq!(&r[column("failed")], "0", "{stdout}");
        let mib: f64 = r[column("mib_per_second")].parse().unwrap();
        assert!(mib > 0.0, "{stdout}");
    }

    let svg = std::fs::read_to_string(&plot).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    // A panel per setting, each with a legend counting its hits and misses.
    let counted = |prefix: &str| -> Vec<usize> {
        texts
            .iter()
            .filter_map(|t| t.strip_prefix(prefix)?.strip_suffix(')')?.parse().ok())
            .collect()
    };
    let (hits, misses) = (counted("spool hit ("), counted("spool miss ("));
    assert_eq!((hits.len(), misses.len()), (2, 2), "{texts:?}");
    // -p 0 prefetches nothing: every call is a miss.
    assert_eq!((hits[0], misses[0]), (0, 4), "{texts:?}");
    assert_eq!(hits[1] + misses[1], 4, "{texts:?}");
    // One marker per call (circles for hits, triangles for misses), plus
    // one of each in each panel's legend.
    let markers = |tag: &str| doc.descendants().filter(|n| n.has_tag_name(tag)).count();
    assert_eq!(markers("circle"), hits[0] + hits[1] + 2);
    assert_eq!(markers("polygon"), misses[0] + misses[1] + 2);
    for setting in ["ours -p 0 keep on", "ours -p 2 keep on"] {
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with(setting) && t.contains("MiB/s")),
            "{setting} in {texts:?}"
        );
    }
}
