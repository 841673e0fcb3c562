//! The Python `barman-wal-restore` as the compatibility oracle, on the same stack: every
//! compression, `-p` 0 and 8, with and without `--keep-compression`, byte-identical.

use crate::run::TestResult;
use crate::sequence::{fetch_sequence, window, Tool, Window};
use crate::stack::{Stack, COMPRESSIONS};
use crate::Named;

/// `oracle::COMP::pP[::keep_compression]`.
pub fn compression_matrix() -> Vec<Named> {
    let mut list = Vec::new();
    for comp in COMPRESSIONS {
        for p in [0u32, 8] {
            for keep in [false, true] {
                let name = format!(
                    "oracle::{comp}::p{p}{}",
                    if keep { "::keep_compression" } else { "" }
                );
                let work = name.clone();
                list.push(Named::with(name, move |st| {
                    compression(st, &work, comp, p, keep)
                }));
            }
        }
    }
    list
}

fn compression(st: &Stack, name: &str, comp: &str, p: u32, keep: bool) -> TestResult {
    let work = st.workdir(name)?;
    let ps = p.to_string();
    let mut opts = vec!["-p", ps.as_str()];
    if keep {
        opts.push("--keep-compression");
    }
    let names = window(st, Window::AroundData(3))?;
    fetch_sequence(
        st,
        Tool::Oracle,
        &st.config(comp),
        &names,
        &st.orig(),
        &opts,
        None,
        &work,
    )
}
