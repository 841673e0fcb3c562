//! A `.partial` from Barman's streaming directory (`-P`), with and without `-p`, and from the
//! Python reference.

use std::fs;

use crate::checks::compare_file;
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::sequence::next_missing;
use crate::stack::{Stack, CALL_TIMEOUT, DEST};
use crate::Named;

/// `partial::p0`, `partial::p8` and `partial::oracle_p0`.
pub fn trials() -> Vec<Named> {
    let mut list: Vec<Named> = ["0", "8"]
        .into_iter()
        .map(|p| Named::with(format!("partial::p{p}"), move |st| with_p(st, p)))
        .collect();
    list.push(Named::new("partial::oracle_p0", oracle_p0));
    list
}

/// With -P, the segment and its .partial name deliver the .partial's bytes, from configs zstd
/// and none; without -P the segment is not available.
fn with_p(st: &Stack, p: &str) -> TestResult {
    let work = st.workdir(&format!("partial_p{p}"))?;
    let partial = st.get("WAL_PARTIAL");
    let seg = next_missing(st);
    let spool = work.join("spool");
    let spool_s = spool.to_string_lossy().into_owned();
    for comp in ["zstd", "none"] {
        for wal in [seg.as_str(), partial] {
            let _ = fs::remove_file(work.join(DEST));
            let out = run(
                &mut st.ours(
                    &st.config(comp),
                    &["-P", "-p", p, "--spool-dir", &spool_s],
                    wal,
                    DEST,
                    &work,
                ),
                CALL_TIMEOUT,
            )?;
            out.expect_code(0)
                .map_err(|e| fail(format!("-P {wal} ({comp}): {}", e.message().unwrap_or(""))))?;
            compare_file(&work.join(DEST), &st.orig().join(partial))?;
        }
        // without -P the segment is not available
        run(
            &mut st.ours(
                &st.config(comp),
                &["-p", p, "--spool-dir", &spool_s],
                &seg,
                DEST,
                &work,
            ),
            CALL_TIMEOUT,
        )?
        .expect_code(1)?;
    }
    Ok(())
}

fn oracle_p0(st: &Stack) -> TestResult {
    let work = st.workdir("partial_oracle")?;
    let out = run(
        &mut st.oracle(&st.config("zstd"), &["-P"], &next_missing(st), DEST, &work),
        CALL_TIMEOUT,
    )?;
    out.expect_code(0)?;
    compare_file(&work.join(DEST), &st.orig().join(st.get("WAL_PARTIAL")))
}
