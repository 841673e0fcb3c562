//! The command line against the real stack: `--test` (as the Python reference answers it), an
//! unknown server and a missing WAL (exit 1), WAL_DEST a directory (exit 3).

use crate::run::{fail, run, ExpectCode, TestResult};
use crate::sequence::next_missing;
use crate::stack::{Stack, CALL_TIMEOUT, DEST};

pub fn test_flag(st: &Stack) -> TestResult {
    let work = st.workdir("test_flag")?;
    let out = run(
        &mut st.ours(&st.config("zstd"), &["--test"], "DUMMY", "DUMMY", &work),
        CALL_TIMEOUT,
    )?;
    out.expect_code(0)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if !text.contains("Ready to retrieve WAL files from the server angus") {
        return Err(fail(format!(
            "--test output lacks the Ready line:\n{}",
            out.describe()
        )));
    }
    // same answer from the reference
    let o = run(
        &mut st.oracle(&st.config("zstd"), &["--test"], "DUMMY", "DUMMY", &work),
        CALL_TIMEOUT,
    )?;
    o.expect_code(0)?;
    if !o
        .stdout
        .contains("Ready to retrieve WAL files from the server angus")
    {
        return Err(fail(format!("oracle --test output:\n{}", o.describe())));
    }
    Ok(())
}

pub fn unknown_server_exits_1(st: &Stack) -> TestResult {
    let work = st.workdir("unknown_server")?;
    let seg = &st.list("WAL_SEGMENTS")[3];
    for opts in [&[][..], &["-p", "8", "--spool-dir", "spool"][..]] {
        let mut c = st.ours_full(
            st.get("SSH_PORT"),
            "no_such_server",
            &st.config("zstd"),
            opts,
            seg,
            DEST,
            &work,
        );
        run(&mut c, CALL_TIMEOUT)?.expect_code(1)?;
    }
    Ok(())
}

pub fn missing_wal_exits_1(st: &Stack) -> TestResult {
    let work = st.workdir("missing_wal")?;
    let missing = next_missing(st);
    for opts in [
        &[][..],
        &["-p", "8", "--spool-dir", "spool"][..],
        &["-p", "8", "--spool-dir", "spool", "--keep-compression"][..],
    ] {
        run(
            &mut st.ours(&st.config("gzip"), opts, &missing, DEST, &work),
            CALL_TIMEOUT,
        )?
        .expect_code(1)?;
        run(
            &mut st.ours(&st.config("gzip"), opts, "00000009.history", DEST, &work),
            CALL_TIMEOUT,
        )?
        .expect_code(1)?;
    }
    Ok(())
}

pub fn wal_dest_is_directory_exits_3(st: &Stack) -> TestResult {
    let work = st.workdir("dest_dir")?;
    let seg = &st.list("WAL_SEGMENTS")[3];
    run(
        &mut st.ours(&st.config("none"), &[], seg, "pg_wal", &work),
        CALL_TIMEOUT,
    )?
    .expect_code(3)
}
