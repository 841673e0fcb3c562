//! Exit codes: the one place that decides what PostgreSQL is told.
//!
//! PostgreSQL reads a restore_command's status as: 0 the file is at `%p`;
//! 1..=125 "not available, try later or elsewhere"; above 125, or death by a
//! signal other than SIGTERM, aborts recovery. Every failure in this crate is
//! a [`Failure`], and [`Failure::exit_code`] is the only mapping to a status,
//! so no path can leak OpenSSH's 255 or a remote shell's 127.

use std::fmt;

/// The file is at its destination.
pub const SUCCESS: i32 = 0;
/// Barman does not have the file (or refused to give it).
pub const NOT_AVAILABLE: i32 = 1;
/// Connection, authentication, host key or transport failure.
pub const CONNECTION: i32 = 2;
/// A local problem: bad argument, unwritable destination, unusable spool.
pub const LOCAL: i32 = 3;
/// Interrupted by SIGINT (128 + 2): the shell convention.
pub const INTERRUPTED: i32 = 130;
/// Terminated by SIGTERM (128 + 15): PostgreSQL expects it during shutdown.
pub const TERMINATED: i32 = 143;
/// Deliberately fatal: PostgreSQL aborts recovery on a status above 125.
/// Used only to stop an archive recovery that would otherwise end early
/// (see [`FailurePolicy`]); pghoard uses the same status for the same reason.
pub const ABORT_RECOVERY: i32 = 255;

/// What PostgreSQL is doing when it calls us, told by the signal files in
/// its data directory (restore_command runs there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// `standby.signal`: a failure means "try again later"; nothing is lost.
    Standby,
    /// `recovery.signal` alone (PITR, archive recovery), or before
    /// PostgreSQL 12 a `recovery.conf` without `standby_mode = on`: ANY
    /// failure is taken as the end of WAL and the server promotes.
    ArchiveRecovery,
    /// None of those files: called by hand.
    Unknown,
}

impl RecoveryMode {
    pub fn detect(dir: &std::path::Path) -> RecoveryMode {
        if dir.join("standby.signal").exists() {
            RecoveryMode::Standby
        } else if dir.join("recovery.signal").exists() {
            RecoveryMode::ArchiveRecovery
        } else if let Ok(conf) = std::fs::read_to_string(dir.join("recovery.conf")) {
            // PostgreSQL 9.6 to 11: recovery.conf starts any recovery, and
            // standby_mode (off unless set) makes it a standby.
            if standby_mode(&conf) {
                RecoveryMode::Standby
            } else {
                RecoveryMode::ArchiveRecovery
            }
        } else {
            RecoveryMode::Unknown
        }
    }
}

/// `standby_mode` in a recovery.conf, read as PostgreSQL reads a boolean
/// setting (the last one counts; on/true/yes/1 and their prefixes).
fn standby_mode(conf: &str) -> bool {
    let mut on = false;
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((key, value)) = line
            .split_once('=')
            .or_else(|| line.split_once(char::is_whitespace))
        else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("standby_mode") {
            let value = value.trim().trim_matches('\'').trim().to_ascii_lowercase();
            on = matches!(
                value.as_str(),
                "on" | "true" | "yes" | "1" | "t" | "y" | "tr" | "tru" | "ye"
            );
        }
    }
    on
}

/// `--on-failure`: what a failure that is not Barman's confirmed "not
/// found" turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailurePolicy {
    // No double quotes in these three: they end up inside a double-quoted
    // string of the fish completions, which clap_complete does not escape.
    /// Stop an archive recovery (status 255); elsewhere report not
    /// available (1..3) as usual.
    #[default]
    Auto,
    /// Always report not available (1..3): the original's behaviour, which
    /// lets a PITR end early when Barman is unreachable.
    NotAvailable,
    /// Always stop recovery on such a failure.
    Abort,
}

impl FailurePolicy {
    /// The status for `failure` in `mode`, and whether it stops recovery.
    pub fn exit_code(self, failure: &Failure, mode: RecoveryMode) -> i32 {
        let confirmed_miss = matches!(failure, Failure::NotFound(_));
        let abort = !confirmed_miss
            && match self {
                FailurePolicy::Auto => mode == RecoveryMode::ArchiveRecovery,
                FailurePolicy::NotAvailable => false,
                FailurePolicy::Abort => true,
            };
        if abort {
            ABORT_RECOVERY
        } else {
            failure.exit_code()
        }
    }
}

/// Why a call did not deliver the file. The message is printed after
/// `ERROR: ` as one line; it names the WAL, host or path involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Barman answered that it does not have the file (its own "not found").
    NotFound(String),
    /// The remote command failed with a status of its own; `status` is
    /// clamped into 1..=125 by [`Failure::exit_code`].
    Remote { status: i32, message: String },
    /// We received bytes but they are not a good copy (bad compression
    /// stream, not WAL, wrong segment): the archive has no usable copy.
    BadPayload(String),
    /// Could not reach, authenticate to or stay connected to the Barman host.
    Connection(String),
    /// Something on this machine is wrong; retrying the same call won't help.
    Local(String),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::NotFound(_) | Failure::BadPayload(_) => NOT_AVAILABLE,
            Failure::Remote { status, .. } => clamp_remote_status(*status),
            Failure::Connection(_) => CONNECTION,
            Failure::Local(_) => LOCAL,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::NotFound(m)
            | Failure::BadPayload(m)
            | Failure::Connection(m)
            | Failure::Local(m) => m,
            Failure::Remote { message, .. } => message,
        }
    }

    /// Whether trying the same thing again could succeed: transport failures
    /// are retried within a call; answers from Barman are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Connection(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Failure {}

/// Maps a remote command's exit status into what PostgreSQL reads as "not
/// available": Barman's own 1..=125 pass through (as the Python original
/// does), anything else (127 for a missing `barman`, 128+n after a signal,
/// OpenSSH-style 255) becomes 1.
pub fn clamp_remote_status(status: i32) -> i32 {
    if (1..=125).contains(&status) {
        status
    } else {
        NOT_AVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unconfirmed_failures_in_archive_recovery_stop_it() {
        let miss = Failure::NotFound("x".into());
        let down = Failure::Connection("x".into());
        let auto = FailurePolicy::Auto;
        assert_eq!(
            auto.exit_code(&miss, RecoveryMode::ArchiveRecovery),
            NOT_AVAILABLE
        );
        assert_eq!(
            auto.exit_code(&down, RecoveryMode::ArchiveRecovery),
            ABORT_RECOVERY
        );
        assert_eq!(auto.exit_code(&down, RecoveryMode::Standby), CONNECTION);
        assert_eq!(auto.exit_code(&down, RecoveryMode::Unknown), CONNECTION);
        let never = FailurePolicy::NotAvailable;
        assert_eq!(
            never.exit_code(&down, RecoveryMode::ArchiveRecovery),
            CONNECTION
        );
        assert_eq!(
            FailurePolicy::Abort.exit_code(&down, RecoveryMode::Standby),
            ABORT_RECOVERY
        );
        assert_eq!(
            FailurePolicy::Abort.exit_code(&miss, RecoveryMode::Standby),
            NOT_AVAILABLE
        );
    }

    #[test]
    fn recovery_conf_is_a_recovery_and_standby_mode_makes_a_standby() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RecoveryMode::detect(dir.path()), RecoveryMode::Unknown);
        let conf = dir.path().join("recovery.conf");
        for (text, mode) in [
            (
                "restore_command = 'x %f %p'\n",
                RecoveryMode::ArchiveRecovery,
            ),
            ("standby_mode = 'off'\n", RecoveryMode::ArchiveRecovery),
            ("standby_mode = on\n", RecoveryMode::Standby),
            ("standby_mode='TRUE' # a standby\n", RecoveryMode::Standby),
            ("standby_mode = 'yes'\n", RecoveryMode::Standby),
            ("standby_mode = 1\n", RecoveryMode::Standby),
            ("#standby_mode = on\n", RecoveryMode::ArchiveRecovery),
            (
                "standby_mode = on\nstandby_mode = off\n",
                RecoveryMode::ArchiveRecovery,
            ),
        ] {
            std::fs::write(&conf, text).unwrap();
            assert_eq!(RecoveryMode::detect(dir.path()), mode, "{text:?}");
        }
        // The signal files of PostgreSQL 12 and later come first.
        std::fs::write(dir.path().join("standby.signal"), "").unwrap();
        std::fs::write(&conf, "").unwrap();
        assert_eq!(RecoveryMode::detect(dir.path()), RecoveryMode::Standby);
    }

    #[test]
    fn no_failure_maps_above_125_or_to_zero() {
        for status in [-1, 0, 1, 2, 3, 125, 126, 127, 128, 255, 256, 1000] {
            let code = Failure::Remote {
                status,
                message: String::new(),
            }
            .exit_code();
            assert!((1..=125).contains(&code), "{status} -> {code}");
        }
        assert_eq!(clamp_remote_status(3), 3);
        assert_eq!(clamp_remote_status(127), 1);
        assert_eq!(Failure::Connection("x".into()).exit_code(), CONNECTION);
        assert_eq!(Failure::Local("x".into()).exit_code(), LOCAL);
    }
}
