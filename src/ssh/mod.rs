//! The SSH side: ssh_config as OpenSSH resolves it (`ssh -G`, and what we
//! refuse: [`config`]), the target from flags over it ([`target`]), host
//! keys and certificates ([`known_hosts`]), and the one russh session a call
//! uses, through its ProxyJump hops or ProxyCommand, with its exec channels
//! ([`session`]).

pub mod config;
pub mod known_hosts;
pub mod session;
pub mod target;

pub use session::{ExecChannel, OpenChannel, OpenError, RemoteExit, Session, SessionStats};
pub use target::{ConnectOptions, HostKeyPolicy, SshTarget};
