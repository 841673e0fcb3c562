//! Real-stack trial of issue 18's logging: a PostgreSQL 15 standby that has replayed the whole
//! archive and waits at its head (PostgreSQL asks for the next segment every 5 s, and for the
//! next timeline's history file) says so in its log at most once per interval, as INFO, and
//! never with an ERROR line of ours. The one-minute interval is scaled to 6 s through the
//! test-only variable, so ~30 s stand for the 5 minutes.

use std::time::{Duration, Instant};

use crate::cluster::{with_cluster, RECOVERY_TIMEOUT};
use crate::run::{fail, wait_until, TestResult};
use crate::stack::Stack;
use crate::Named;

/// src/logging.rs: for tests only, the head notice's interval in seconds.
const HEAD_NOTICE_SECS: &str = "BARMAN_WAL_RESTORE_TEST_HEAD_NOTICE_SECS";
const INTERVAL: Duration = Duration::from_secs(6);
/// How long the standby is watched once it said it waits: at most 5 notices fit.
const WATCH: Duration = Duration::from_secs(29);

/// Our lines in the server log (PostgreSQL's own start with its `%m [%p]` prefix).
fn ours<'a>(log: &'a str, level: &str) -> Vec<&'a str> {
    let prefix = format!("{level}: ");
    log.lines().filter(|l| l.starts_with(&prefix)).collect()
}

fn waiting_lines(log: &str) -> Vec<&str> {
    ours(log, "INFO")
        .into_iter()
        .filter(|l| l.contains("waiting"))
        .collect()
}

fn no_error_of_ours(log: &str) -> TestResult {
    let errors = ours(log, "ERROR");
    if errors.is_empty() {
        return Ok(());
    }
    Err(fail(format!(
        "standby-head: ERROR lines of ours while waiting at the head:\n{}",
        errors.join("\n")
    )))
}

fn standby_waits_at_the_head_quietly(st: &Stack) -> TestResult {
    let cmd = st.restore_command(&st.config("gzip"), "");
    let conf = format!(
        "restore_command = 'env {HEAD_NOTICE_SECS}={} {cmd}'",
        INTERVAL.as_secs()
    );
    with_cluster(st, "standby-head", "standby.signal", &conf, |pg| {
        pg.wait_standby_rows(st.get("ROWS"))?;
        // The first notice: the standby asked past the archive's last segment.
        wait_until(
            RECOVERY_TIMEOUT,
            "the standby's first notice at the head",
            || {
                let log = pg.log_text();
                no_error_of_ours(&log)?;
                Ok((!waiting_lines(&log).is_empty()).then_some(()))
            },
        )?;
        let since = Instant::now();
        // The trial's span: the standby polls on its own meanwhile.
        wait_until(WATCH + Duration::from_secs(5), "the watch to pass", || {
            Ok((since.elapsed() >= WATCH).then_some(()))
        })?;
        let log = pg.log_text();
        let waiting = waiting_lines(&log);
        no_error_of_ours(&log)?;
        // At most one per interval in the watch (and the first one); at least two: the
        // notice repeats once its interval passed, so the limit, not silence, kept it at that.
        let most = (WATCH.as_secs() / INTERVAL.as_secs() + 1) as usize;
        if !(2..=most).contains(&waiting.len()) {
            return Err(fail(format!(
                "standby-head: {} waiting notices in {WATCH:?} (interval {INTERVAL:?}, at most \
                 {most}):\n{}",
                waiting.len(),
                waiting.join("\n")
            )));
        }
        println!(
            "FAULT-MATRIX | real stack: PostgreSQL 15 standby waiting {WATCH:?} at the archive's \
             head (notice interval scaled to {INTERVAL:?}) | {} INFO waiting line(s), 0 ERROR",
            waiting.len()
        );
        Ok(())
    })
}

pub fn trials() -> Vec<Named> {
    vec![Named::new(
        "logging::standby_waits_at_the_head_quietly",
        standby_waits_at_the_head_quietly,
    )]
}
