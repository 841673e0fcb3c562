//! `--direct-read`: the stored files read with `cat` over the session, every compression
//! byte-identical; a log-all account records what ran, so each trial proves no `barman get-wal`
//! was asked for a file that direct read can settle. Segments Barman received but never
//! archived, timeline history files, and an account that may run `barman` only.

use std::fs;
use std::path::Path;

use crate::checks::compare_file;
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::sequence::{fetch_sequence, next_missing, window, Tool, Window};
use crate::stack::{Stack, CALL_TIMEOUT, COMPRESSIONS, DEST};
use crate::Named;

/// `direct::COMP::pP`: `-p 8` for every compression, `-p` 0, 1 and 16 for two.
pub fn compression_matrix() -> Vec<Named> {
    let cases = COMPRESSIONS.iter().map(|&c| (c, 8u32)).chain(
        ["zstd", "none"]
            .into_iter()
            .flat_map(|c| [0u32, 1, 16].map(|p| (c, p))),
    );
    cases
        .map(|(comp, p)| {
            let name = format!("direct::{comp}::p{p}");
            let work = name.clone();
            Named::with(name, move |st| compression(st, &work, comp, p))
        })
        .collect()
}

fn compression(st: &Stack, name: &str, comp: &str, p: u32) -> TestResult {
    let work = st.workdir(name)?;
    let account = st.forced_key("direct", "log-all", "root")?;
    let ps = p.to_string();
    let opts = ["--direct-read", "-p", ps.as_str()];
    let names = window(st, Window::for_parallel(p))?;
    let missing = next_missing(st);
    fetch_sequence(
        st,
        Tool::OursKeyed(&account.key),
        &st.config(comp),
        &names,
        &st.orig(),
        &opts,
        Some(&missing),
        &work,
    )?;
    // the missing name is confirmed by Barman, nothing else is asked of it
    account.expect_direct(&names, Some("wals/0000000100000000"), &[&missing])?;
    let show = account.count(|c| c.contains(" show-server "));
    // with a spool (-p 1 and up) the layout is learnt once and cached there
    if p > 0 && show != 1 {
        return Err(fail(format!(
            "show-server ran {show} times, want 1; {}",
            account.describe()
        )));
    }
    Ok(())
}

/// Config "incoming": two segments Barman received but never archived.
pub fn incoming_segment(st: &Stack) -> TestResult {
    let work = st.workdir("direct_incoming")?;
    let cfg = st.get("INCOMING_CONFIG").to_string();
    let names = st.list("INCOMING_WALS");
    // the segment after them is archived in the other configs, not in this one
    let segs = st.list("WAL_SEGMENTS");
    let last = names.last().cloned().unwrap_or_default();
    let after = segs
        .iter()
        .position(|s| *s == last)
        .and_then(|i| segs.get(i + 1))
        .cloned()
        .ok_or_else(|| fail("no segment after INCOMING_WALS"))?;
    for p in ["0", "8"] {
        let account = st.forced_key("incoming", "log-all", "root")?;
        let sub = work.join(format!("p{p}"));
        fs::create_dir_all(sub.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
        fetch_sequence(
            st,
            Tool::OursKeyed(&account.key),
            &cfg,
            &names,
            &st.orig(),
            &["--direct-read", "-p", p],
            Some(&after),
            &sub,
        )?;
        account.expect_direct(&names, Some("incoming"), &[&after])?;
    }
    // Barman's own get-wal serves them from incoming/ too (the Python original)
    fetch_sequence(st, Tool::Oracle, &cfg, &names, &st.orig(), &[], None, &work)
}

pub fn timeline_history_p8(st: &Stack) -> TestResult {
    let work = st.workdir("direct_tl")?;
    let account = st.forced_key("tl", "log-all", "root")?;
    let names = st.list("TL_FILES");
    fetch_sequence(
        st,
        Tool::OursKeyed(&account.key),
        st.get("TL_CONFIG"),
        &names,
        Path::new(st.get("TL_ORIG_DIR")),
        &["--direct-read", "-p", "8"],
        Some("00000003.history"),
        &work,
    )?;
    // The first lookup, 00000002.history on a cold layout cache, is one get-wal: a
    // show-server would cost the same Barman start-up for one small file. With the layout
    // cached, the same lookup reads it from the top of wals/.
    fetch_sequence(
        st,
        Tool::OursKeyed(&account.key),
        st.get("TL_CONFIG"),
        &names[..1],
        Path::new(st.get("TL_ORIG_DIR")),
        &["--direct-read", "-p", "8"],
        None,
        &work,
    )?;
    let history_get_wals =
        account.count(|c| c.contains(" get-wal ") && c.contains(names[0].as_str()));
    if history_get_wals != 1 {
        return Err(fail(format!(
            "want 1 get-wal for {} (the cold-cache lookup), got {history_get_wals}; {}",
            names[0],
            account.describe()
        )));
    }
    let asked = [names[0].as_str(), "00000003.history"];
    account.expect_direct(&names[..1], Some("wals"), &asked)?;
    // segments in their hash directories
    account.expect_direct(&names[1..], None, &asked)
}

/// authorized_keys forces a wrapper that runs `barman ...` only: cat and ls are
/// refused, every file must still arrive, through get-wal.
pub fn restricted_account_falls_back(st: &Stack) -> TestResult {
    let work = st.workdir("direct_restricted")?;
    let account = st.forced_key("restricted", "barman-only", "root")?;
    let cfg = st.config("gzip");
    let missing = next_missing(st);
    // -p 8: refused once, remembered in the spool's cache for the later calls
    let names = window(st, Window::AtEnd(9))?;
    fetch_sequence(
        st,
        Tool::OursKeyed(&account.key),
        &cfg,
        &names,
        &st.orig(),
        &["--direct-read", "-p", "8"],
        Some(&missing),
        &work,
    )?;
    let refused = account.count(|c| !c.starts_with("barman "));
    if !(1..=2).contains(&refused) {
        return Err(fail(format!(
            "want 1 or 2 refused direct reads (cat, ls) before the cache says restricted, \
             got {refused}; {}",
            account.describe()
        )));
    }
    for name in &names {
        if !account
            .commands()
            .iter()
            .any(|c| c.contains(" get-wal ") && c.contains(name.as_str()))
        {
            return Err(fail(format!(
                "{name} was not fetched with get-wal; {}",
                account.describe()
            )));
        }
    }
    let cache: Vec<String> = fs::read_dir(work.join("spool"))
        .map_err(|e| fail(e.to_string()))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(barman_wal_restore::spool::names::LAYOUT_PREFIX)
        })
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    if cache.len() != 1 || cache[0].trim() != "restricted" {
        return Err(fail(format!("layout cache in the spool: {cache:?}")));
    }
    // -p 0 (no spool, nothing cached): every call finds out again, says so with -v
    let sub = work.join("p0");
    fs::create_dir_all(sub.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
    let seg = st
        .list("WAL_DATA_SEGMENTS")
        .last()
        .cloned()
        .unwrap_or_default();
    let out = run(
        &mut st.ours_keyed(
            &account.key,
            &cfg,
            &["--direct-read", "-v", "--spool-dir", "no-spool"],
            &seg,
            DEST,
            &sub,
        ),
        CALL_TIMEOUT,
    )?;
    out.expect_code(0)?;
    if !out.stderr.contains("direct read refused") {
        return Err(fail(format!(
            "-v does not say that direct read was refused:\n{}",
            out.describe()
        )));
    }
    compare_file(&sub.join(DEST), &st.orig().join(&seg))?;
    let names = window(st, Window::AroundData(3))?;
    fetch_sequence(
        st,
        Tool::OursKeyed(&account.key),
        &cfg,
        &names,
        &st.orig(),
        &["--direct-read", "-p", "0"],
        Some(&missing),
        &sub,
    )
}
