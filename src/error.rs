//! The one error type of the restore library: a kind the program acts on, a
//! message for the one `ERROR:` line, and the error underneath, if any.
//!
//! Every decision about a failure (retry the connection, reconnect, make
//! room on a full disk, answer a worker's caller, the exit status) is made
//! on its [`ErrorKind`], never on its message: a message can be reworded
//! without changing what the program does. The statuses PostgreSQL reads
//! are decided from kinds in [`crate::exit`] alone. The text a remote
//! program printed (Barman's "not found", `cat`'s "No such file") is read
//! once, where its output arrives, and becomes a kind there.

use std::fmt;
use std::io;

/// What went wrong, as far as anything acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Barman answered that it does not have the file: the one confirmed
    /// miss, which never stops a recovery.
    NotFound,
    /// A remote command ended with a status of its own.
    RemoteStatus(i32),
    /// A remote command was killed by a signal.
    RemoteSignal,
    /// An answer that is not a good copy of what was asked for: a stream
    /// that does not decode, not WAL, the wrong segment, segments of mixed
    /// clusters, a peek answer that is not a list of WAL names.
    BadPayload,
    /// A good segment of another database system (or segment size) than
    /// this cluster's pg_control names.
    ForeignCluster,
    /// Bytes kept coming, too slowly to finish within the transfer's bound.
    TooSlow,
    /// The Barman host could not be reached, or the session or a channel
    /// was lost: refused, reset, timed out. Waiting may cure it.
    Connection,
    /// The host key was refused: unknown, changed, revoked, too weak.
    HostKeyRejected,
    /// The server accepted none of the keys offered.
    AuthRefused,
    /// ssh_config asks for something not implemented here.
    ConfigRefused,
    /// This system forbids the connection (EACCES): a local policy, which
    /// waiting does not change.
    ConnectForbidden,
    /// No space left on the device of WAL_DEST or the spool.
    DiskFull,
    /// Another failure on this machine: an I/O error, a task that died.
    Local,
    /// An argument, setting or ssh_config value that is refused: a bad
    /// WAL name or server name, a WAL_DEST that is a directory, a spool
    /// others could tamper with.
    InvalidInput,
    /// The command line or the settings cannot be read at all.
    Usage,
}

impl ErrorKind {
    /// A failure to reach, authenticate to or stay connected to the Barman
    /// host: the session is unusable.
    pub fn is_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection
                | ErrorKind::HostKeyRejected
                | ErrorKind::AuthRefused
                | ErrorKind::ConfigRefused
                | ErrorKind::ConnectForbidden
        )
    }

    /// Worth another connection attempt after a pause; a refused host key,
    /// key or setting cannot change by waiting.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Connection
    }

    /// Something on this machine is wrong: retrying the call won't help.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ErrorKind::DiskFull | ErrorKind::Local | ErrorKind::InvalidInput | ErrorKind::Usage
        )
    }

    /// The kind of a local I/O error: a full disk is told by the OS
    /// (ENOSPC), never by the message.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
            ErrorKind::DiskFull
        } else {
            ErrorKind::Local
        }
    }
}

/// Why something did not work. The message is printed after `ERROR: ` as
/// one line; it names the WAL, host or path involved.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A local I/O failure, `message` saying what was being done.
    pub fn io(message: impl Into<String>, e: io::Error) -> Error {
        Error::new(ErrorKind::of_io(&e), message).with_source(e)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn bad_payload(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadPayload, message)
    }

    /// A connection failure worth a retry.
    pub fn connection(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Connection, message)
    }

    pub fn invalid_input(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidInput, message)
    }

    pub fn local(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Local, message)
    }

    /// The error underneath, for [`std::error::Error::source`]; the message
    /// says what the user needs, usually with this error's text in it.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        self.source = Some(source.into());
        self
    }

    /// The same failure, said of `what`: `what: message`.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the work could succeed on a new session: the session is
    /// gone (or never was). Answers from Barman and local failures would
    /// be the same again.
    pub fn is_transient(&self) -> bool {
        self.kind.is_connection()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_by_the_os_not_by_the_message() {
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(ErrorKind::of_io(&enospc), ErrorKind::DiskFull);
        let failure = Error::io("writing failed", enospc);
        assert_eq!(failure.kind(), ErrorKind::DiskFull);
        assert_eq!(failure.message(), "writing failed");
        assert!(std::error::Error::source(&failure).is_some());
        let storage_full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(ErrorKind::of_io(&storage_full), ErrorKind::DiskFull);
        // The words of ENOSPC without the OS saying it: another local failure.
        let said = io::Error::other("No space left on device (os error 28)");
        assert_eq!(ErrorKind::of_io(&said), ErrorKind::Local);
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(ErrorKind::of_io(&denied), ErrorKind::Local);
        let reworded = Error::local("Cannot open 'x': No space left on device (os error 28)");
        assert_eq!(reworded.kind(), ErrorKind::Local);
    }

    #[test]
    fn only_a_plain_connection_failure_is_worth_a_retry() {
        for kind in [
            ErrorKind::HostKeyRejected,
            ErrorKind::AuthRefused,
            ErrorKind::ConfigRefused,
            ErrorKind::ConnectForbidden,
        ] {
            assert!(kind.is_connection() && !kind.is_retryable(), "{kind:?}");
        }
        assert!(ErrorKind::Connection.is_retryable());
        for kind in [ErrorKind::NotFound, ErrorKind::TooSlow, ErrorKind::DiskFull] {
            assert!(!kind.is_connection() && !kind.is_retryable(), "{kind:?}");
        }
        // A message that once meant "do not retry" means nothing now.
        assert!(Error::connection("Permission denied; host key HOST KEY")
            .kind()
            .is_retryable());
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_kind() {
        let failure = Error::new(ErrorKind::RemoteStatus(4), "boom").context("prefetch of X");
        assert_eq!(failure.to_string(), "prefetch of X: boom");
        assert_eq!(failure.kind(), ErrorKind::RemoteStatus(4));
    }
}
