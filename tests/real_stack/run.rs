//! Commands run with a deadline for the trials, over `tests/common`'s [`Running`]: a command
//! that outlives its time is killed and fails the trial (a hang is a failure, not a stuck suite);
//! waits are bounded polls of a condition.

use std::process::Command;
use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{self, Outcome, Running};
use crate::stack::CALL_TIMEOUT;

pub type TestResult = Result<(), Failed>;

pub fn fail(msg: impl Into<String>) -> Failed {
    msg.into().into()
}

/// Prefixes a failure's message with `ctx`.
pub fn context(ctx: &str) -> impl Fn(Failed) -> Failed + '_ {
    move |e| fail(format!("{ctx}: {}", e.message().unwrap_or("failed")))
}

/// Runs `cmd` (stdin closed, output captured), killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Outcome, Failed> {
    start(cmd, timeout)?.finish().map_err(fail)
}

/// Starts `cmd` (stdin closed, output captured) for at most [`CALL_TIMEOUT`], without waiting.
pub fn spawn(cmd: &mut Command) -> Result<Running, Failed> {
    start(cmd, CALL_TIMEOUT)
}

fn start(cmd: &mut Command, timeout: Duration) -> Result<Running, Failed> {
    Running::start(cmd, timeout).map_err(|e| {
        fail(format!(
            "cannot start `{}`: {e}",
            common::describe_command(cmd)
        ))
    })
}

/// Polls `probe` until it yields a value, for at most `timeout`; an `Err` from the probe ends the
/// wait at once (the thing waited for can no longer happen).
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    probe: impl FnMut() -> Result<Option<T>, Failed>,
) -> Result<T, Failed> {
    // 20 ms: probes read logs and /proc, some run pg_ctl every 50 polls
    common::poll(timeout, Duration::from_millis(20), probe)?
        .ok_or_else(|| fail(format!("waited {timeout:?} in vain for {what}")))
}

/// [`Outcome::check_code`] as a trial's result.
pub trait ExpectCode {
    fn expect_code(&self, want: i32) -> TestResult;
}

impl ExpectCode for Outcome {
    fn expect_code(&self, want: i32) -> TestResult {
        self.check_code(want).map_err(fail)
    }
}
