//! A run of calls as PostgreSQL makes them, one WAL after the other through one spool, each
//! delivered file compared with what PostgreSQL archived; the windows of the archive they ask for.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use libtest_mimic::Failed;

use crate::checks::{compare_file, spool_leftovers};
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::stack::{Stack, CALL_TIMEOUT, DEST};

#[derive(Clone, Copy, PartialEq)]
pub enum Tool<'a> {
    Ours,
    /// Ours with the key of a forced-command account.
    OursKeyed(&'a Path),
    Oracle,
    /// Ours against Debian's Barman 3.4.0 (sshd "debian").
    OursDebian,
    /// Debian's Python barman-wal-restore 3.4.0 against Debian's Barman.
    DebianOracle,
}

/// Call the tool once per name, in order, as PostgreSQL would (fresh spool for the run), and
/// compare every delivered file with what PostgreSQL archived. With our tool, finish with a name
/// that is not in the archive (must exit 1) and check that the spool holds no leftover WAL.
#[allow(clippy::too_many_arguments)]
pub fn fetch_sequence(
    st: &Stack,
    tool: Tool<'_>,
    cfg: &str,
    names: &[String],
    orig: &Path,
    opts: &[&str],
    missing_after: Option<&str>,
    work: &Path,
) -> TestResult {
    let spool = work.join("spool");
    let spool_s = spool.to_string_lossy().into_owned();
    let mut all_opts: Vec<&str> = opts.to_vec();
    all_opts.extend(["--spool-dir", &spool_s]);
    let dest = work.join(DEST);
    let mut timings = String::new();
    for name in names {
        let _ = fs::remove_file(&dest);
        let mut cmd = match tool {
            Tool::Ours => st.ours(cfg, &all_opts, name, DEST, work),
            Tool::OursKeyed(key) => st.ours_keyed(key, cfg, &all_opts, name, DEST, work),
            Tool::Oracle => st.oracle(cfg, &all_opts, name, DEST, work),
            Tool::OursDebian => st.ours_debian(cfg, &all_opts, name, DEST, work),
            Tool::DebianOracle => st.debian_oracle(cfg, &all_opts, name, DEST, work),
        };
        let out = run(&mut cmd, CALL_TIMEOUT)?;
        write!(timings, " {:.0?}", out.elapsed).ok();
        out.expect_code(0)
            .map_err(|e| fail(format!("fetching {name}: {}", e.message().unwrap_or(""))))?;
        compare_file(&dest, &orig.join(name))?;
    }
    let _ = fs::remove_file(&dest);
    if !matches!(tool, Tool::Oracle | Tool::DebianOracle) {
        if let Some(m) = missing_after {
            let mut cmd = match tool {
                Tool::OursKeyed(key) => st.ours_keyed(key, cfg, &all_opts, m, DEST, work),
                Tool::OursDebian => st.ours_debian(cfg, &all_opts, m, DEST, work),
                _ => st.ours(cfg, &all_opts, m, DEST, work),
            };
            let out = run(&mut cmd, CALL_TIMEOUT)?;
            out.expect_code(1).map_err(|e| {
                fail(format!(
                    "{m} is not in the archive: {}",
                    e.message().unwrap_or("")
                ))
            })?;
        }
        let left = spool_leftovers(&spool);
        if !left.is_empty() {
            return Err(fail(format!("spool not empty after the run: {left:?}")));
        }
    }
    let _ = timings; // per-call durations, handy when debugging: eprintln!("{timings}")
    Ok(())
}

/// Segments for a fetch sequence, always including one full of real data (a segment that was
/// switched early is mostly empty). `AtEnd`: the last `n` of the archive, so that a prefetch runs
/// into the end of the archive; `AroundData`: `n` starting just before the last data segment.
#[derive(Clone, Copy)]
pub enum Window {
    AtEnd(usize),
    AroundData(usize),
}

impl Window {
    /// The window a trial at `-p p` asks for: p0/p1: every call goes to the server, a few
    /// suffice; p8/p16: through the spool up to the end of the archive (p8: with one refill).
    pub fn for_parallel(p: u32) -> Window {
        match p {
            0 | 1 => Window::AroundData(3),
            8 => Window::AtEnd(9),
            _ => Window::AtEnd(8),
        }
    }
}

pub fn window(st: &Stack, w: Window) -> Result<Vec<String>, Failed> {
    let segs = st.list("WAL_SEGMENTS");
    let data = st.list("WAL_DATA_SEGMENTS");
    let v: Vec<String> = match w {
        Window::AtEnd(n) => segs[segs.len().saturating_sub(n)..].to_vec(),
        Window::AroundData(n) => {
            let last_data = data
                .last()
                .ok_or_else(|| fail("stack.env lists no data segment"))?;
            let i = segs
                .iter()
                .position(|s| s == last_data)
                .ok_or_else(|| fail("data segment not in WAL_SEGMENTS"))?;
            let from = i.saturating_sub(1);
            segs[from..(from + n).min(segs.len())].to_vec()
        }
    };
    if !v.iter().any(|s| data.contains(s)) {
        return Err(fail(format!(
            "window {v:?} holds none of the data segments {data:?}"
        )));
    }
    Ok(v)
}

/// The name after the last archived segment (the one PostgreSQL asks for next): not archived.
pub fn next_missing(st: &Stack) -> String {
    st.get("WAL_PARTIAL")
        .trim_end_matches(".partial")
        .to_string()
}
