//! The SSH side: resolving the target from flags and ssh_config
//! ([`target`]), checking host keys ([`known_hosts`]), and the one russh
//! session a call uses, with its exec channels ([`session`]).

pub mod config;
pub mod known_hosts;
pub mod session;
pub mod target;

pub use session::{ExecChannel, OpenError, Session, SessionStats};
pub use target::{ConnectOptions, HostKeyPolicy, SshTarget};
