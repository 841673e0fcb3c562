//! Exit codes: the one place that decides what PostgreSQL is told.
//!
//! PostgreSQL reads a restore_command's status as: 0 the file is at `%p`;
//! 1..=125 "not available, try later or elsewhere"; above 125, or death by a
//! signal other than SIGTERM, aborts recovery. Every failure in this crate is
//! an [`Error`], and [`status`] (with [`FailurePolicy::exit_code`] above it)
//! is the only mapping from its [`ErrorKind`] to a status, so no path can
//! leak OpenSSH's 255 or a remote shell's 127, and no message text can
//! change a status.

use crate::error::{Error, ErrorKind};

/// The file is at its destination.
pub const SUCCESS: i32 = 0;
/// Barman does not have the file (or refused to give it).
pub const NOT_AVAILABLE: i32 = 1;
/// Connection, authentication, host key or transport failure.
pub const CONNECTION: i32 = 2;
/// A local problem: bad argument, unwritable destination, unusable spool.
pub const LOCAL: i32 = 3;
/// The command line or the settings cannot be read: argparse's status, as
/// the Python original exits for a usage error.
pub const USAGE: i32 = 2;
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
    pub fn exit_code(self, failure: &Error, mode: RecoveryMode) -> i32 {
        let confirmed_miss = failure.kind() == ErrorKind::NotFound;
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

/// The status of a failure of `kind`, whatever its message says.
pub fn status(kind: ErrorKind) -> i32 {
    // No wildcard: a new kind must be given its status here.
    match kind {
        ErrorKind::NotFound
        | ErrorKind::RemoteSignal
        | ErrorKind::BadPayload
        | ErrorKind::ForeignCluster
        | ErrorKind::TooSlow => NOT_AVAILABLE,
        ErrorKind::RemoteStatus(status) => clamp_remote_status(status),
        ErrorKind::Connection
        | ErrorKind::HostKeyRejected
        | ErrorKind::AuthRefused
        | ErrorKind::ConfigRefused
        | ErrorKind::ConnectForbidden => CONNECTION,
        ErrorKind::DiskFull | ErrorKind::Local | ErrorKind::InvalidInput => LOCAL,
        ErrorKind::Usage => USAGE,
    }
}

impl Error {
    /// The status for this failure outside archive recovery: see [`status`].
    pub fn exit_code(&self) -> i32 {
        status(self.kind())
    }
}

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

    /// Every kind and the status it gets when nothing stops recovery.
    const PLAIN_STATUS: &[(ErrorKind, i32)] = &[
        (ErrorKind::NotFound, NOT_AVAILABLE),
        (ErrorKind::RemoteStatus(3), 3),
        (ErrorKind::RemoteStatus(127), NOT_AVAILABLE),
        (ErrorKind::RemoteSignal, NOT_AVAILABLE),
        (ErrorKind::BadPayload, NOT_AVAILABLE),
        (ErrorKind::ForeignCluster, NOT_AVAILABLE),
        (ErrorKind::TooSlow, NOT_AVAILABLE),
        (ErrorKind::Connection, CONNECTION),
        (ErrorKind::HostKeyRejected, CONNECTION),
        (ErrorKind::AuthRefused, CONNECTION),
        (ErrorKind::ConfigRefused, CONNECTION),
        (ErrorKind::ConnectForbidden, CONNECTION),
        (ErrorKind::DiskFull, LOCAL),
        (ErrorKind::Local, LOCAL),
        (ErrorKind::InvalidInput, LOCAL),
        (ErrorKind::Usage, USAGE),
    ];

    /// Fails to compile when a kind is added: it then needs a line in
    /// [`PLAIN_STATUS`].
    #[allow(dead_code)]
    fn listed(kind: ErrorKind) {
        match kind {
            ErrorKind::NotFound
            | ErrorKind::RemoteStatus(_)
            | ErrorKind::RemoteSignal
            | ErrorKind::BadPayload
            | ErrorKind::ForeignCluster
            | ErrorKind::TooSlow
            | ErrorKind::Connection
            | ErrorKind::HostKeyRejected
            | ErrorKind::AuthRefused
            | ErrorKind::ConfigRefused
            | ErrorKind::ConnectForbidden
            | ErrorKind::DiskFull
            | ErrorKind::Local
            | ErrorKind::InvalidInput
            | ErrorKind::Usage => {}
        }
    }

    /// Whether a policy stops recovery in a mode (for anything but
    /// Barman's confirmed "not found").
    const STOPS: &[(FailurePolicy, RecoveryMode, bool)] = &[
        (FailurePolicy::Auto, RecoveryMode::Standby, false),
        (FailurePolicy::Auto, RecoveryMode::ArchiveRecovery, true),
        (FailurePolicy::Auto, RecoveryMode::Unknown, false),
        (FailurePolicy::NotAvailable, RecoveryMode::Standby, false),
        (
            FailurePolicy::NotAvailable,
            RecoveryMode::ArchiveRecovery,
            false,
        ),
        (FailurePolicy::NotAvailable, RecoveryMode::Unknown, false),
        (FailurePolicy::Abort, RecoveryMode::Standby, true),
        (FailurePolicy::Abort, RecoveryMode::ArchiveRecovery, true),
        (FailurePolicy::Abort, RecoveryMode::Unknown, true),
    ];

    #[test]
    fn every_kind_has_its_status_in_every_mode_under_every_policy() {
        for &(kind, plain) in PLAIN_STATUS {
            assert_eq!(status(kind), plain, "{kind:?}");
            assert_eq!(Error::new(kind, "x").exit_code(), plain, "{kind:?}");
            for &(policy, mode, stops) in STOPS {
                let expected = if stops && kind != ErrorKind::NotFound {
                    ABORT_RECOVERY
                } else {
                    plain
                };
                assert_eq!(
                    policy.exit_code(&Error::new(kind, "x"), mode),
                    expected,
                    "{kind:?} under {policy:?} in {mode:?}"
                );
            }
        }
    }

    /// What the program once read in messages: none of it moves a status.
    #[test]
    fn rewording_a_message_changes_no_status() {
        let wordings = [
            "",
            "No space left on device (os error 28)",
            "host key of h:22 is not known",
            "HOST KEY OF h:22 HAS CHANGED",
            "Permission denied (publickey)",
            "WAL file 'X' not found in server 'angus'",
            "cat: x: No such file or directory",
            "unrecognized arguments: --keep-compression",
        ];
        for &(kind, plain) in PLAIN_STATUS {
            for wording in wordings {
                let failure = Error::new(kind, wording);
                assert_eq!(failure.exit_code(), plain, "{kind:?} {wording:?}");
                for &(policy, mode, _) in STOPS {
                    assert_eq!(
                        policy.exit_code(&failure, mode),
                        policy.exit_code(&Error::new(kind, "reworded"), mode),
                        "{kind:?} {wording:?} under {policy:?} in {mode:?}"
                    );
                }
            }
        }
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
            let code = Error::new(ErrorKind::RemoteStatus(status), "").exit_code();
            assert!((1..=125).contains(&code), "{status} -> {code}");
        }
        assert_eq!(clamp_remote_status(3), 3);
        assert_eq!(clamp_remote_status(127), 1);
        for &(kind, _) in PLAIN_STATUS {
            for &(policy, mode, _) in STOPS {
                let code = policy.exit_code(&Error::new(kind, ""), mode);
                assert!(
                    (1..=125).contains(&code) || code == ABORT_RECOVERY,
                    "{kind:?}"
                );
            }
        }
    }
}
