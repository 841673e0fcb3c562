//! Every compression x `-p` x `--keep-compression`, byte-identical to what PostgreSQL archived,
//! through the spool as PostgreSQL would call us; the server recompressing (`-z`, `-j`); a
//! backup label file.

use crate::run::TestResult;
use crate::sequence::{fetch_sequence, next_missing, window, Tool, Window};
use crate::stack::{Stack, COMPRESSIONS};
use crate::Named;

/// `fetch::COMP::pP[::keep_compression]` for every compression, `-p` 0, 1, 8 and 16.
pub fn compression_matrix() -> Vec<Named> {
    let mut list = Vec::new();
    for comp in COMPRESSIONS {
        for p in [0u32, 1, 8, 16] {
            for keep in [false, true] {
                let name = format!(
                    "fetch::{comp}::p{p}{}",
                    if keep { "::keep_compression" } else { "" }
                );
                let work = name.clone();
                list.push(Named::with(name, move |st| {
                    through_the_spool(st, &work, comp, p, keep)
                }));
            }
        }
    }
    list
}

/// Calls for a window of the archive stored with `comp`, `-p p`, each delivered byte-identical;
/// the name after the archive's end is not available; nothing is left in the spool.
fn through_the_spool(st: &Stack, name: &str, comp: &str, p: u32, keep: bool) -> TestResult {
    let work = st.workdir(name)?;
    let ps = p.to_string();
    let mut opts = vec!["-p", ps.as_str()];
    if keep {
        opts.push("--keep-compression");
    }
    let names = window(st, Window::for_parallel(p))?;
    fetch_sequence(
        st,
        Tool::Ours,
        &st.config(comp),
        &names,
        &st.orig(),
        &opts,
        Some(&next_missing(st)),
        &work,
    )
}

/// `fetch::server_recompress-z` and `-j`: the server recompresses, the client decompresses.
pub fn server_recompress_trials() -> Vec<Named> {
    [("-z", "zstd"), ("-j", "none")]
        .into_iter()
        .map(|(flag, comp)| {
            Named::with(format!("fetch::server_recompress{flag}"), move |st| {
                server_recompress(st, flag, comp)
            })
        })
        .collect()
}

fn server_recompress(st: &Stack, flag: &str, comp: &str) -> TestResult {
    let work = st.workdir(flag)?;
    let names = window(st, Window::AroundData(2))?;
    fetch_sequence(
        st,
        Tool::Ours,
        &st.config(comp),
        &names,
        &st.orig(),
        &[flag],
        None,
        &work,
    )
}

pub fn backup_label_file(st: &Stack) -> TestResult {
    let work = st.workdir("backup_label")?;
    let names = vec![st.get("WAL_BACKUP_LABEL").to_string()];
    fetch_sequence(
        st,
        Tool::Ours,
        &st.config("xz"),
        &names,
        &st.orig(),
        &["-p", "8"],
        None,
        &work,
    )?;
    fetch_sequence(
        st,
        Tool::Ours,
        &st.config("xz"),
        &names,
        &st.orig(),
        &[],
        None,
        &work,
    )
}
