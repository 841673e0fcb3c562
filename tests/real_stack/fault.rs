//! Faults injected into the real sshd and into our binary mid-fetch: SIGKILL at a random moment
//! of a `-p 8` fetch, Barman's sshd killed, the whole Barman host stalled, only the session
//! stalled. Each prints a FAULT-MATRIX line (docs/fault-matrix.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::checks::{audit_dir, compare_file, expect_nothing_left, one_error_line};
use crate::common::{Running, TEMP_PREFIX};
use crate::run::{context, fail, run, spawn, wait_until, ExpectCode, TestResult};
use crate::sshd::{send_signal, Sshd};
use crate::stack::{Stack, CALL_TIMEOUT, DEST};

/// Bytes per second each exec channel of a throttled sshd streams: a segment of config "none"
/// (16 MiB stored raw) takes 4 s, long enough to break the connection while it streams.
const THROTTLE: &str = "4194304";
/// --io-timeout of the stall and kill trials.
const IO_TIMEOUT: u64 = 5;

/// Starts a `-p 8` fetch of the last data segment (config "none": 16 MiB on the wire) through
/// `sshd` in standby mode (standby.signal in the cwd, as PostgreSQL runs us), and returns once
/// bytes of it have arrived under its temp name beside WAL_DEST: mid-stream.
fn start_fetch_mid_stream(
    st: &Stack,
    sshd: &Sshd,
    work: &Path,
    extra: &[&str],
) -> Result<(Running, String), Failed> {
    fs::write(work.join("standby.signal"), "").map_err(|e| fail(e.to_string()))?;
    let wal = st
        .list("WAL_DATA_SEGMENTS")
        .last()
        .cloned()
        .ok_or_else(|| fail("stack.env lists no data segment"))?;
    let spool = work.join("spool").to_string_lossy().into_owned();
    let io = IO_TIMEOUT.to_string();
    let mut opts = vec!["-p", "8", "--spool-dir", &spool, "--io-timeout", &io];
    opts.extend(extra);
    let mut running =
        spawn(&mut st.ours_to(&sshd.port, &st.config("none"), &opts, &wal, DEST, work))?;
    let pg_wal = work.join("pg_wal");
    let streaming = wait_until(
        Duration::from_secs(60),
        &format!("bytes of {wal} to arrive"),
        || {
            if running.has_exited() {
                return Ok(Some(false));
            }
            let arrived = fs::read_dir(&pg_wal)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                            && e.metadata().is_ok_and(|m| m.len() > 0)
                    })
                })
                .unwrap_or(false);
            Ok(arrived.then_some(true))
        },
    );
    match streaming {
        Ok(true) => Ok((running, wal)),
        Ok(false) => {
            let out = running.finish().map_err(fail)?;
            Err(fail(format!(
                "the call ended before any byte of {wal} arrived:\n{}",
                out.describe()
            )))
        }
        Err(e) => {
            running.kill();
            Err(e)
        }
    }
}

/// The fault matrix on the real stack: our binary SIGKILLed at a pseudo-random moment of a `-p 8` fetch
/// (start-up, handshake, peek, eight transfers, renames), with a fresh spool each time. No final
/// name, in the spool or at WAL_DEST, ever holds other bytes than PostgreSQL archived; the next
/// call for the same segment delivers them and leaves no temp file.
pub fn sigkill_during_p8_fetch(st: &Stack) -> TestResult {
    const ITERATIONS: usize = 20;
    const BUDGET: Duration = Duration::from_secs(300);
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("BWR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    eprintln!(
        "fault::sigkill_during_p8_fetch: seed {seed} (BWR_FAULT_SEED={seed} replays the delays)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cfg = st.config("zstd");
    let orig = st.orig();
    let segs = st.list("WAL_SEGMENTS");
    let data = st.list("WAL_DATA_SEGMENTS");
    // requested segments whose window (it and the 7 after it) holds a segment full of data
    let starts: Vec<&str> = (0..segs.len().saturating_sub(8))
        .filter(|&i| segs[i..i + 8].iter().any(|s| data.contains(s)))
        .map(|i| segs[i].as_str())
        .collect();
    if starts.is_empty() {
        return Err(fail(format!(
            "no -p 8 window of {segs:?} holds a data segment"
        )));
    }
    let work = st.workdir("sigkill_p8")?;
    let call = |dir: &Path, wal: &str, keep: &str| {
        let spool = dir.join("spool").to_string_lossy().into_owned();
        st.ours(
            &cfg,
            &["-p", "8", "--spool-dir", &spool, keep],
            wal,
            DEST,
            dir,
        )
    };
    let fresh = |name: String| -> Result<PathBuf, Failed> {
        let dir = work.join(name);
        fs::create_dir_all(dir.join("pg_wal")).map_err(|e| fail(e.to_string()))?;
        Ok(dir)
    };
    // The kill window is one whole call (fresh spool), shrunk whenever a call ends before its
    // kill, so that kills spread over the whole call whatever the machine's speed.
    let warm = fresh("warm-up".into())?;
    let out = run(
        &mut call(&warm, starts[0], "--keep-compression"),
        CALL_TIMEOUT,
    )?;
    out.expect_code(0)?;
    compare_file(&warm.join(DEST), &orig.join(starts[0]))?;
    let _ = fs::remove_dir_all(&warm);
    let mut window_ms = (out.elapsed.as_millis() as u64).clamp(100, 10_000);
    let first_window = window_ms;
    let (mut done, mut killed_n, mut dest_done, mut temps, mut spooled) = (0, 0, 0, 0, 0);
    let (mut next_max, mut codes) = (Duration::ZERO, std::collections::BTreeMap::new());
    let started = Instant::now();
    for i in 0..ITERATIONS {
        if started.elapsed() > BUDGET {
            eprintln!("fault::sigkill_during_p8_fetch: {BUDGET:?} spent after {i} iterations");
            break;
        }
        let wal = starts[i % starts.len()];
        // --keep-compression is the default; the other half as the original fetches
        let keep = if i % 2 == 0 {
            "--keep-compression"
        } else {
            "--no-keep-compression"
        };
        let dir = fresh(format!("kill-{i:02}"))?;
        let delay = rng.random_range(0..=window_ms);
        let ctx = format!("iteration {i} (seed {seed}: {wal} {keep}, SIGKILL after {delay} ms)");
        let mut running = spawn(&mut call(&dir, wal, keep))?;
        std::thread::sleep(Duration::from_millis(delay)); // the random moment is the point of the test
        running.kill();
        let killed = running.finish().map_err(fail)?;
        if killed.signaled == Some(libc::SIGKILL) {
            killed_n += 1;
            if dir.join(DEST).exists() {
                dest_done += 1;
            }
        } else {
            *codes.entry(killed.code).or_insert(0) += 1;
            killed.expect_code(0).map_err(context(&ctx))?;
            window_ms = window_ms.min(killed.elapsed.as_millis() as u64).max(50);
        }
        for (d, dest) in [
            (dir.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
            (dir.join("spool"), None),
        ] {
            let audit = audit_dir(&d, &orig, dest);
            if !audit.bad.is_empty() {
                return Err(fail(format!(
                    "{ctx}: final names with wrong or partial bytes in {}: {:?}",
                    d.display(),
                    audit.bad
                )));
            }
            temps += audit.temps.len();
            if dest.is_none() {
                spooled += audit.complete.len();
            }
        }
        // PostgreSQL removes RECOVERYXLOG before it calls again.
        let _ = fs::remove_file(dir.join(DEST));
        let next = run(&mut call(&dir, wal, keep), CALL_TIMEOUT)?;
        *codes.entry(next.code).or_insert(0) += 1;
        next.expect_code(0)
            .map_err(context(&format!("{ctx}, next call")))?;
        next_max = next_max.max(next.elapsed);
        compare_file(&dir.join(DEST), &orig.join(wal)).map_err(context(&ctx))?;
        for (d, dest) in [
            (dir.join("pg_wal"), Some(("RECOVERYXLOG", wal))),
            (dir.join("spool"), None),
        ] {
            let audit = audit_dir(&d, &orig, dest);
            if !audit.bad.is_empty() || !audit.temps.is_empty() {
                return Err(fail(format!(
                    "{ctx}, after the next call: {} holds wrong files {:?}, temp files {:?}",
                    d.display(),
                    audit.bad,
                    audit.temps
                )));
            }
        }
        done += 1;
        let _ = fs::remove_dir_all(&dir); // 8 segments of 16 MiB each
    }
    let codes: Vec<String> = codes
        .iter()
        .map(|(c, n)| format!("exit {c}: {n}"))
        .collect();
    eprintln!(
        "FAULT-MATRIX | real stack: SIGKILL at a random moment within one call ({first_window} ms, \
         down to {window_ms} ms) of a -p 8 fetch (zstd, --keep-compression / \
         --no-keep-compression, fresh spool), then the same call again | {done} iterations | \
         SIGKILL: {killed_n}, {} | {killed_n} killed mid-call ({dest_done} after \
         WAL_DEST was complete), {temps} temp files left by the kills (all removed by the next \
         call), {spooled} segments spooled by killed calls (all byte-identical), next call \
         byte-identical every time (slowest {next_max:.1?}); 0 wrong bytes under a final name",
        codes.join(", ")
    );
    if done < ITERATIONS / 2 {
        return Err(fail(format!(
            "only {done} of {ITERATIONS} iterations within {BUDGET:?}"
        )));
    }
    if killed_n < done / 3 {
        return Err(fail(format!(
            "only {killed_n} of {done} calls were killed mid-way: too few to prove anything"
        )));
    }
    Ok(())
}

/// Barman's sshd dies (SIGKILL: the listener and the session's processes) while a `-p 8` fetch
/// streams: exit 2 within --io-timeout, one ERROR line, nothing final left behind.
pub fn sshd_killed_mid_stream(st: &Stack) -> TestResult {
    let sshd = Sshd::start(st, "killed", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_killed")?;
    let (running, wal) = start_fetch_mid_stream(st, &sshd, &work, &[])?;
    let killed = sshd.signal_sshd(libc::SIGKILL, true)?;
    let at = Instant::now();
    let out = running.finish().map_err(fail)?;
    let after = at.elapsed();
    out.expect_code(2)?;
    let bound = Duration::from_secs(IO_TIMEOUT + 5);
    if after > bound {
        return Err(fail(format!(
            "exit 2 came {after:.1?} after the kill, more than {bound:?}:\n{}",
            out.describe()
        )));
    }
    let error = one_error_line(&out, &sshd.port)?;
    expect_nothing_left(&work, &st.orig(), &wal)?;
    eprintln!(
        "FAULT-MATRIX | real stack: sshd killed mid-stream (SIGKILL to its {} sshd processes: \
         listener and session) during a -p 8 fetch, --io-timeout {IO_TIMEOUT}, standby.signal | 1 | \
         exit 2, {after:.1?} after the kill | `{error}`; nothing under a final name, no temp file",
        killed.len()
    );
    Ok(())
}

/// The Barman host hangs (SIGSTOP to its sshd and everything under it) while a `-p 8` fetch
/// streams: no progress for --io-timeout, then reconnects that get no SSH banner (each bounded
/// by --connect-timeout): exit 2, one ERROR line, nothing final left behind.
pub fn sshd_stalled_mid_stream(st: &Stack) -> TestResult {
    const CONNECT_TIMEOUT: u64 = 2;
    let sshd = Sshd::start(st, "stalled", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_stalled")?;
    let (running, wal) = start_fetch_mid_stream(
        st,
        &sshd,
        &work,
        &["--connect-timeout", &CONNECT_TIMEOUT.to_string()],
    )?;
    let stopped = sshd.signal_all(libc::SIGSTOP)?;
    let at = Instant::now();
    let out = running.finish().map_err(fail);
    let after = at.elapsed();
    for p in &stopped {
        send_signal(p, libc::SIGCONT);
    }
    let out = out?;
    out.expect_code(2)?;
    // the stall is noticed after --io-timeout; then one reconnect whose TCP connect succeeds
    // (the kernel queues it) but whose SSH banner never comes (--connect-timeout)
    let bound = Duration::from_millis((IO_TIMEOUT + CONNECT_TIMEOUT) * 1000 + 3000);
    if after < Duration::from_secs(IO_TIMEOUT) - Duration::from_millis(500) || after > bound {
        return Err(fail(format!(
            "exit 2 came {after:.1?} after the stall; want between --io-timeout {IO_TIMEOUT} s \
             and {bound:?}:\n{}",
            out.describe()
        )));
    }
    let error = one_error_line(&out, &sshd.port)?;
    expect_nothing_left(&work, &st.orig(), &wal)?;
    eprintln!(
        "FAULT-MATRIX | real stack: Barman host hangs mid-stream (SIGSTOP to the sshd's {} \
         processes: listener, session, commands) during a -p 8 fetch, --io-timeout {IO_TIMEOUT} --connect-timeout \
         {CONNECT_TIMEOUT}, standby.signal | 1 | exit 2, {after:.1?} after the stall \
         (--io-timeout, then one reconnect without an SSH banner) | `{error}`; nothing \
         under a final name, no temp file",
        stopped.len()
    );
    Ok(())
}

/// Only the session stalls (SIGSTOP to its sshd processes; the listener still accepts): after
/// --io-timeout the call reconnects and delivers everything.
pub fn sshd_session_stalled_reconnects(st: &Stack) -> TestResult {
    let sshd = Sshd::start(st, "session-stalled", &["--throttle", THROTTLE])?;
    let work = st.workdir("sshd_session_stalled")?;
    let (running, wal) = start_fetch_mid_stream(st, &sshd, &work, &["-v"])?;
    let stopped = sshd.signal_sshd(libc::SIGSTOP, false)?;
    if stopped.is_empty() {
        return Err(fail("no session process under the sshd to stop"));
    }
    let at = Instant::now();
    let out = running.finish().map_err(fail);
    let after = at.elapsed();
    for p in &stopped {
        send_signal(p, libc::SIGCONT);
    }
    let out = out?;
    out.expect_code(0)?;
    if after < Duration::from_secs(IO_TIMEOUT) - Duration::from_millis(500)
        || !out.stderr.contains("2 connection(s)")
    {
        return Err(fail(format!(
            "want a second connection after --io-timeout {IO_TIMEOUT} s ({after:.1?}):\n{}",
            out.describe()
        )));
    }
    compare_file(&work.join(DEST), &st.orig().join(&wal))?;
    let mut spooled = 0;
    for (dir, dest) in [
        (work.join("pg_wal"), Some(("RECOVERYXLOG", wal.as_str()))),
        (work.join("spool"), None),
    ] {
        let audit = audit_dir(&dir, &st.orig(), dest);
        if !audit.bad.is_empty() || !audit.temps.is_empty() {
            return Err(fail(format!(
                "{}: wrong files {:?}, temp files {:?}",
                dir.display(),
                audit.bad,
                audit.temps
            )));
        }
        if dest.is_none() {
            spooled = audit.complete.len();
        }
    }
    eprintln!(
        "FAULT-MATRIX | real stack: the SSH session stalls mid-stream (SIGSTOP to its {} sshd \
         processes; the listener still accepts) during a -p 8 fetch, --io-timeout {IO_TIMEOUT} | 1 \
         | exit 0, {after:.1?} after the stall, on a second connection | WAL_DEST and {spooled} \
         spooled segments byte-identical, no temp file",
        stopped.len()
    );
    Ok(())
}
