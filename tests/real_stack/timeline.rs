//! A timeline switch: the history file and the new timeline's segment, with and without `-p` and
//! `--keep-compression`; the Python reference agrees on the history file.

use std::path::PathBuf;

use crate::run::TestResult;
use crate::sequence::{fetch_sequence, Tool};
use crate::stack::Stack;
use crate::Named;

/// `timeline::history_pP[::keep_compression]`, `-p` 0 and 8.
pub fn trials() -> Vec<Named> {
    let mut list = Vec::new();
    for p in ["0", "8"] {
        for keep in [false, true] {
            let name = format!(
                "timeline::history_p{p}{}",
                if keep { "::keep_compression" } else { "" }
            );
            let work = name.clone();
            list.push(Named::with(name, move |st| history(st, &work, p, keep)));
        }
    }
    list
}

fn history(st: &Stack, name: &str, p: &str, keep: bool) -> TestResult {
    let work = st.workdir(name)?;
    let mut opts = vec!["-p", p];
    if keep {
        opts.push("--keep-compression");
    }
    let names = st.list("TL_FILES");
    let orig = PathBuf::from(st.get("TL_ORIG_DIR"));
    fetch_sequence(
        st,
        Tool::Ours,
        st.get("TL_CONFIG"),
        &names,
        &orig,
        &opts,
        Some("00000003.history"),
        &work,
    )?;
    // and the oracle agrees on the history file
    let hist = vec![st.get("TL_HISTORY").to_string()];
    fetch_sequence(
        st,
        Tool::Oracle,
        st.get("TL_CONFIG"),
        &hist,
        &orig,
        &opts,
        None,
        &work,
    )
}
