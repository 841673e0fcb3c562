//! What calls left behind, judged against what PostgreSQL archived (`wal-orig/`): files in a
//! directory (`tests/common`'s audit), WAL left in a spool, the ERROR line of a failed call.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use libtest_mimic::Failed;

use crate::common::{audit_against, compare_files, Audit, Outcome};
use crate::run::{fail, TestResult};
use crate::stack::{DEST, HOST};

/// `got` holds exactly the bytes of `want`.
pub fn compare_file(got: &Path, want: &Path) -> TestResult {
    compare_files(got, want).map_err(fail)
}

fn is_wal_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// WAL-named files left anywhere under the spool directory (all must have been delivered).
pub fn spool_leftovers(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![spool.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .file_name()
                .to_str()
                .map(is_wal_segment_name)
                .unwrap_or(false)
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// `dir` judged against the archived WAL in `orig`: `dest` is (file name, WAL) when `dir` holds
/// WAL_DEST; any other final name must be the name of an archived WAL with its bytes. The spool's
/// bookkeeping is never served as WAL and is not judged.
pub fn audit_dir(dir: &Path, orig: &Path, dest: Option<(&str, &str)>) -> Audit {
    let dest = dest.map(|(name, wal)| (dir.join(name), wal));
    audit_against(dir, dest.as_ref().map(|(p, w)| (p.as_path(), *w)), |wal| {
        let archived = orig.join(wal);
        if !archived.is_file() {
            return None;
        }
        fs::read(archived).ok().map(Arc::new)
    })
}

/// After a call that failed: no WAL_DEST, no temp file (the call ended by itself and removes
/// its own), nothing wrong under a final name in pg_wal/ or the spool.
pub fn expect_nothing_left(work: &Path, orig: &Path, wal: &str) -> TestResult {
    for (dir, dest) in [
        (work.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
        (work.join("spool"), None),
    ] {
        let audit = audit_dir(&dir, orig, dest);
        if !audit.bad.is_empty() || !audit.temps.is_empty() {
            return Err(fail(format!(
                "{}: wrong files {:?}, temp files {:?}",
                dir.display(),
                audit.bad,
                audit.temps
            )));
        }
    }
    if work.join(DEST).exists() {
        return Err(fail(format!("{DEST} delivered by a call that failed")));
    }
    Ok(())
}

/// stderr holds exactly one `ERROR:` line, naming the Barman host; returns it.
pub fn one_error_line(out: &Outcome, port: &str) -> Result<String, Failed> {
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    match errors[..] {
        [line] if line.contains(&format!("{HOST}:{port}")) => Ok(line.to_string()),
        _ => Err(fail(format!(
            "want one ERROR line naming {HOST}:{port}:\n{}",
            out.describe()
        ))),
    }
}
