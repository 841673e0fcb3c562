//! Every kind of segment PostgreSQL 15 archives (a complete segment must walk to its end or to an
//! XLOG_SWITCH followed by padding): told apart by pg_waldump, each delivered byte-identical, raw
//! and zstd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Failed;

use crate::run::{fail, TestResult};
use crate::sequence::{fetch_sequence, Tool};
use crate::stack::Stack;

pub fn segment_kinds(st: &Stack) -> TestResult {
    let work = st.workdir("segment_kinds")?;
    let waldump = Path::new(st.get("PG_BIN")).join("pg_waldump");
    let records = |path: &Path| -> Result<String, Failed> {
        let out = Command::new(&waldump)
            .arg(path)
            .output()
            .map_err(|e| fail(format!("pg_waldump: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut kinds: HashMap<&str, Vec<String>> = HashMap::new();
    for name in st.list("WAL_SEGMENTS") {
        let dump = records(&st.orig().join(&name))?;
        let switched = dump.contains("desc: SWITCH");
        let kind = if name == st.get("WAL_TIMEOUT_SEGMENT") {
            "archive_timeout"
        } else if name == st.get("WAL_RESTART_SEGMENT") {
            if !dump.contains("CHECKPOINT_SHUTDOWN") {
                return Err(fail(format!("{name}: no shutdown checkpoint in it")));
            }
            "after a restart"
        } else if switched {
            "pg_switch_wal"
        } else {
            "full"
        };
        if kind == "archive_timeout" && !switched {
            return Err(fail(format!("{name}: archive_timeout left no XLOG_SWITCH")));
        }
        kinds.entry(kind).or_default().push(name);
    }
    for kind in [
        "full",
        "pg_switch_wal",
        "archive_timeout",
        "after a restart",
    ] {
        if !kinds.contains_key(kind) {
            return Err(fail(format!(
                "the stack archived no segment of kind {kind}"
            )));
        }
    }
    let all = st.list("WAL_SEGMENTS");
    for comp in ["none", "zstd"] {
        fetch_sequence(
            st,
            Tool::Ours,
            &st.config(comp),
            &all,
            &st.orig(),
            &["-p", "0"],
            None,
            &work,
        )
        .map_err(|e| fail(format!("{comp}: {}", e.message().unwrap_or(""))))?;
    }
    // The new timeline's first segment: the old timeline's WAL up to the switch, then the new.
    let tl: Vec<String> = st
        .list("TL_FILES")
        .into_iter()
        .filter(|n| n.len() == 24 && n.starts_with("00000002"))
        .collect();
    if tl.is_empty() {
        return Err(fail("no timeline 2 segment"));
    }
    let orig = PathBuf::from(st.get("TL_ORIG_DIR"));
    fetch_sequence(
        st,
        Tool::Ours,
        st.get("TL_CONFIG"),
        &tl,
        &orig,
        &["-p", "0"],
        None,
        &work,
    )
}
