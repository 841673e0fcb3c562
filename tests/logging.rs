//! What a DBA reads: every line we print starts with its level as Barman
//! prints them (`ERROR:`, `WARNING:`, `INFO:`, `DEBUG:`), with the time and
//! pid in front at the debug level and in the `--async` worker's log;
//! `--log-level` and `-q` choose what is printed; the worker's log stays
//! bounded; a standby waiting at the archive's head says so at most once
//! per interval and never as an ERROR.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use embedded_barman::StoredCompression;

/// For tests only (see src/logging.rs): the head notice's interval and
/// the worker log's limit, scaled down.
const HEAD_NOTICE_SECS: &str = "BARMAN_WAL_RESTORE_TEST_HEAD_NOTICE_SECS";
const WORKER_LOG_BYTES: &str = "BARMAN_WAL_RESTORE_TEST_WORKER_LOG_BYTES";

const LEVELS: [&str; 4] = ["ERROR", "WARNING", "INFO", "DEBUG"];

/// A line as the formatter writes it: its level, and the time and pid if
/// stamped (`2026-12-03 10:00:00.123 [4242] INFO: ...`).
#[derive(Debug)]
struct Parsed<'a> {
    stamp: Option<(&'a str, u32)>,
    level: &'a str,
    message: &'a str,
}

/// `LEVEL: message` (or a bare `LEVEL:`), if LEVEL is one of ours.
fn level_and_message(text: &str) -> Option<(&str, &str)> {
    let (level, message) = text
        .split_once(": ")
        .or_else(|| text.strip_suffix(':').map(|level| (level, "")))?;
    LEVELS.contains(&level).then_some((level, message))
}

fn parse(line: &str) -> Option<Parsed<'_>> {
    if let Some((level, message)) = level_and_message(line) {
        return Some(Parsed {
            stamp: None,
            level,
            message,
        });
    }
    // "YYYY-MM-DD HH:MM:SS.mmm [PID] LEVEL: message"
    let time = line.get(..23)?;
    let shaped = time.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b' ',
        13 | 16 => b == b':',
        19 => b == b'.',
        _ => b.is_ascii_digit(),
    });
    if !shaped {
        return None;
    }
    let (pid, rest) = line.get(23..)?.strip_prefix(" [")?.split_once("] ")?;
    let (level, message) = level_and_message(rest)?;
    Some(Parsed {
        stamp: Some((time, pid.parse().ok()?)),
        level,
        message,
    })
}

/// Every line of `text` parsed; panics naming the first line without a level.
fn levelled<'a>(text: &'a str, what: &str) -> Vec<Parsed<'a>> {
    text.lines()
        .map(|line| {
            parse(line)
                .unwrap_or_else(|| panic!("{what}: a line without a level: {line:?}\n{text}"))
        })
        .collect()
}

/// A data directory whose pg_control cannot be read: each call warns
/// (and still delivers).
fn data_dir_warning(work: &Work, signals: &[&str]) -> std::path::PathBuf {
    let data = data_dir(work, signals);
    fs::create_dir_all(data.join("global")).unwrap();
    fs::write(data.join("global/pg_control"), b"not a pg_control").unwrap();
    data
}

#[test]
fn every_line_of_a_successful_and_a_failing_call_has_a_level() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let work = Work::new();
    let data = data_dir_warning(&work, &[]);
    for options in [&[][..], &["-p", "3"][..], &["-v", "-p", "3"][..]] {
        let call = Call::new(&barman, &work).cwd(&data).args(options);
        let out = call.run(&seg(0), &work.dest());
        out.assert_code(0);
        let lines = levelled(&out.stderr, "success");
        assert!(
            lines.iter().any(|l| l.level == "WARNING"),
            "{options:?}: the unreadable pg_control is said: {}",
            out.stderr
        );
        // Not found (called by hand: an ERROR), and a connection refused.
        let out = call.run(&seg(7), &work.dest());
        out.assert_code(1);
        let lines = levelled(&out.stderr, "not found");
        assert_eq!(
            lines.iter().filter(|l| l.level == "ERROR").count(),
            1,
            "{}",
            out.stderr
        );
        let out = call
            .clone()
            .set("--port", closed_port().to_string())
            .run(&seg(1), &work.dest());
        out.assert_code(2);
        levelled(&out.stderr, "connection refused");
    }
}

#[test]
fn quiet_prints_nothing_on_success_and_only_the_error_on_failure() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let work = Work::new();
    // Its pg_control cannot be read: a WARNING on every call, but for -q.
    let data = data_dir_warning(&work, &[]);
    for quiet in [
        &["-q"][..],
        &["--log-level", "error"][..],
        &["--log-level=ERROR"][..],
    ] {
        let call = Call::new(&barman, &work)
            .cwd(&data)
            .args(["-p", "2"])
            .args(quiet);
        let out = call.run(&seg(0), &work.dest());
        out.assert_code(0);
        assert_eq!(out.stderr, "", "{quiet:?}: silent on success");
        let out = call.run(&seg(7), &work.dest());
        out.assert_code(1);
        let lines = levelled(&out.stderr, "not found");
        assert_eq!(lines.len(), 1, "{quiet:?}: only the ERROR: {}", out.stderr);
        assert_eq!(lines[0].level, "ERROR");
        assert!(lines[0].message.contains(&seg(7)), "{}", out.stderr);
    }
    // The same call without -q warns: the silence above is -q's.
    let out = Call::new(&barman, &work)
        .cwd(&data)
        .run(&seg(1), &work.dest());
    out.assert_code(0);
    assert!(out.stderr.starts_with("WARNING: "), "{}", out.stderr);
    // -q and -v contradict each other: a usage error.
    let out = Call::new(&barman, &work)
        .args(["-q", "-v"])
        .run(&seg(1), &work.dest());
    out.assert_code(2);
}

#[test]
fn debug_lines_carry_the_time_and_the_pid() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let work = Work::new();
    for debug in [&["--log-level", "debug"][..], &["-v"][..]] {
        let call = Call::new(&barman, &work).args(["-p", "2"]).args(debug);
        let running = call.spawn(&seg(0), &work.dest());
        let pid = running.pid() as u32;
        let before = Instant::now();
        let out = running.wait();
        out.assert_code(0);
        let lines = levelled(&out.stderr, "debug");
        assert!(
            lines
                .iter()
                .any(|l| l.level == "DEBUG" && l.message.contains("fetched")),
            "{debug:?}: how the file came: {}",
            out.stderr
        );
        for line in &lines {
            let (time, line_pid) = line.stamp.unwrap_or_else(|| panic!("no stamp: {line:?}"));
            assert_eq!(line_pid, pid, "{debug:?}: {}", out.stderr);
            assert!(time.starts_with("20"), "{time}");
        }
        assert!(before.elapsed() < CALL_TIMEOUT);
        // The spool hit: the fast path prints through the same formatter.
        let out = call.run(&seg(1), &work.dest());
        out.assert_code(0);
        let lines = levelled(&out.stderr, "spool hit");
        assert!(lines.iter().all(|l| l.stamp.is_some()), "{}", out.stderr);
        out.assert_says("served from the spool");
    }
    // At the default level, no debug line and no stamp.
    let out = Call::new(&barman, &work).run(&seg(2), &work.dest());
    out.assert_code(0);
    assert_eq!(out.stderr, "");
}

#[test]
fn the_worker_log_has_time_pid_and_level_on_every_line_and_stays_bounded() {
    // Small enough that 40 calls fill it past the limit even when a loaded
    // machine makes some calls fetch without the worker (4096 did not, in CI).
    const LIMIT: u64 = 1024;
    let barman = server(spec(StoredCompression::None, 40));
    let work = Work::new();
    let call = Call::new(&barman, &work)
        .args(["--async", "-p", "2", "--async-idle", "1", "-v"])
        .env(WORKER_LOG_BYTES, LIMIT.to_string());
    for n in 0..40 {
        call.run(&seg(n), &work.dest()).assert_code(0);
    }
    let log_path = work.spool.join(".bwr-worker.log");
    let older = work.spool.join(".bwr-worker.log.1");
    assert!(
        wait_until(Duration::from_secs(15), || worker_log(&work)
            .contains(" exiting (")),
        "the worker never left: {}",
        worker_log(&work)
    );
    for path in [&log_path, &older] {
        let size = fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(size <= LIMIT, "{}: {size} bytes", path.display());
        let text = fs::read_to_string(path).unwrap();
        let lines = levelled(&text, "worker log");
        assert!(!lines.is_empty());
        for line in &lines {
            assert!(line.stamp.is_some(), "no time and pid: {line:?}");
        }
    }
    // The pid is the worker's own: its exit line names it.
    let exits: Vec<(u32, String)> = levelled(&worker_log(&work), "worker log")
        .iter()
        .filter(|l| l.message.contains(" exiting ("))
        .map(|l| (l.stamp.unwrap().1, l.message.to_string()))
        .collect();
    assert!(!exits.is_empty(), "{}", worker_log(&work));
    for (pid, message) in exits {
        assert!(
            message.starts_with(&format!("worker {pid} exiting")),
            "{pid}: {message}"
        );
    }
}

/// Calls for the segment after the archive's last, back to back for
/// `span`, from `data`: what PostgreSQL does at the head, faster.
fn poll_head(call: &Call, dest: &std::path::Path, wal: &str, span: Duration) -> (usize, String) {
    let start = Instant::now();
    let mut calls = 0;
    let mut stderr = String::new();
    while start.elapsed() < span {
        let out = call.run(wal, dest);
        out.assert_code(1);
        calls += 1;
        stderr.push_str(&out.stderr);
    }
    (calls, stderr)
}

#[test]
fn a_standby_at_the_head_says_so_once_per_interval_and_never_as_an_error() {
    let barman = server(spec(StoredCompression::Gzip, 3));
    let interval = Duration::from_secs(2);
    let span = Duration::from_secs(7);
    for options in [
        &["-p", "2"][..],
        &["--async", "-p", "2", "--async-idle", "2"][..],
    ] {
        let work = Work::new();
        let data = data_dir(&work, &["standby.signal"]);
        let call = Call::new(&barman, &work)
            .cwd(&data)
            .args(options)
            .env(HEAD_NOTICE_SECS, interval.as_secs().to_string());
        for n in 0..3 {
            call.run(&seg(n), &work.dest()).assert_code(0);
        }
        let head = seg(3);
        let (calls, stderr) = poll_head(&call, &work.dest(), &head, span);
        let lines = levelled(&stderr, "standby at the head");
        let waiting = lines
            .iter()
            .filter(|l| {
                l.level == "INFO" && l.message.contains("waiting") && l.message.contains(&head)
            })
            .count();
        let most = (span.as_secs() / interval.as_secs() + 1) as usize;
        assert!(
            calls > 2 * most,
            "{options:?}: {calls} calls are too few to show a limit"
        );
        assert!(
            (2..=most).contains(&waiting),
            "{options:?}: {waiting} INFO lines over {calls} calls in {span:?}, interval \
             {interval:?}:\n{stderr}"
        );
        assert_eq!(lines.len(), waiting, "{options:?}: nothing else:\n{stderr}");
        // The calls remember the notice in the data directory; without
        // that memory the next miss says it again.
        fs::remove_file(data.join(".bwr-head-notice")).expect("the stamp in the data directory");
        // A timeline's history file PostgreSQL probes for meanwhile: not
        // even an INFO line, and the notice stays due for the segment.
        let out = call.run("00000002.history", &work.dest());
        out.assert_code(1);
        assert_eq!(out.stderr, "", "{options:?}");
        let out = call.run(&head, &work.dest());
        out.assert_code(1);
        assert!(
            out.stderr
                .starts_with("INFO: standby waiting at the archive's head for"),
            "{options:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn the_end_of_an_archive_recovery_is_info_and_a_call_by_hand_an_error() {
    let barman = server(spec(StoredCompression::Gzip, 2));
    let work = Work::new();
    let recovery = data_dir(&work, &["recovery.signal"]);
    let out = Call::new(&barman, &work)
        .cwd(&recovery)
        .run(&seg(2), &work.dest());
    out.assert_code(1);
    let lines = levelled(&out.stderr, "end of recovery");
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert_eq!(lines[0].level, "INFO", "{}", out.stderr);
    assert!(lines[0].message.contains(&seg(2)));
    // Outside any recovery (by hand): Barman's answer is an error.
    let out = Call::new(&barman, &work).run(&seg(2), &work.dest());
    out.assert_code(1);
    out.assert_one_error(&[&seg(2)]);
}
