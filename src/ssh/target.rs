//! Where and how to connect: the command line merged over the invoking
//! user's ssh_config, as OpenSSH would read it.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

use crate::exit::Failure;

/// What `StrictHostKeyChecking` asks for an unknown host. A changed key is
/// refused whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse unknown hosts (OpenSSH's `yes`, and our default: a
    /// restore_command has nobody to answer a prompt).
    Strict,
    /// Record an unknown host's key in the first known_hosts file and go on
    /// (`accept-new`).
    AcceptNew,
    /// Accept unknown hosts without recording them (`no`).
    AcceptAny,
}

/// The command-line side of the connection, all optional: what is absent
/// comes from ssh_config, then from defaults.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identities: Vec<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// An ssh_config file to read instead of `~/.ssh/config`.
    pub ssh_config: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub io_timeout: Duration,
}

/// A fully resolved destination.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// BARMAN_HOST as given (an ssh_config alias, or the host itself).
    pub alias: String,
    pub host_name: String,
    pub port: u16,
    pub user: String,
    /// Identity files to try, in order; `identities_explicit` says whether
    /// the user named them (then a missing one is an error).
    pub identities: Vec<PathBuf>,
    pub identities_explicit: bool,
    pub known_hosts: Vec<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub server_alive_interval: Option<Duration>,
}

pub const DEFAULT_USER: &str = "barman";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalives even when ssh_config asks for none: a black-holed connection
/// must end within a bounded time, never hang recovery.
const DEFAULT_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The invoking user's home from the password database, as OpenSSH uses it
/// (not `$HOME`, which PostgreSQL's environment may not set usefully).
pub fn passwd_home() -> Option<PathBuf> {
    // SAFETY: getpwuid_r writes into our buffers only.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return std::env::var_os("HOME").map(PathBuf::from);
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir);
        Some(PathBuf::from(
            std::ffi::OsStr::from_encoded_bytes_unchecked(dir.to_bytes()),
        ))
    }
}

fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

impl SshTarget {
    /// Resolves the target: flags win over ssh_config, which wins over the
    /// defaults (user `barman`, port 22, OpenSSH's default identities and
    /// known_hosts files, strict host key checking).
    pub fn resolve(opts: &ConnectOptions) -> Result<SshTarget, Failure> {
        let home = passwd_home();
        let config_path = opts
            .ssh_config
            .clone()
            .or_else(|| home.as_ref().map(|h| h.join(".ssh/config")));
        let params = match config_path {
            Some(path) if path.exists() => {
                let file = File::open(&path).map_err(|e| {
                    Failure::Local(format!("cannot read ssh config {}: {e}", path.display()))
                })?;
                let mut config = SshConfig::default();
                if let Some(home) = &home {
                    config = config.home_dir(home);
                }
                let config = config
                    .parse(
                        &mut BufReader::new(file),
                        ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
                    )
                    .map_err(|e| {
                        Failure::Local(format!("cannot parse ssh config {}: {e}", path.display()))
                    })?;
                Some(config.query(&opts.host))
            }
            Some(path) if opts.ssh_config.is_some() => {
                return Err(Failure::Local(format!(
                    "ssh config {} does not exist",
                    path.display()
                )));
            }
            _ => None,
        };
        // Fields ssh2-config does not model come back as raw arguments.
        let raw = |field: &str| -> Option<Vec<String>> {
            params
                .as_ref()
                .and_then(|p| {
                    p.unsupported_fields
                        .get(field)
                        .or(p.ignored_fields.get(field))
                })
                .filter(|args| !args.is_empty())
                .cloned()
        };

        let host_name = params
            .as_ref()
            .and_then(|p| p.host_name.clone())
            .unwrap_or_else(|| opts.host.clone());
        let port = opts
            .port
            .or(params.as_ref().and_then(|p| p.port))
            .unwrap_or(22);
        let user = opts
            .user
            .clone()
            .or(params.as_ref().and_then(|p| p.user.clone()))
            .unwrap_or_else(|| DEFAULT_USER.to_string());

        let (identities, identities_explicit) = if !opts.identities.is_empty() {
            (opts.identities.clone(), true)
        } else if let Some(files) = params.as_ref().and_then(|p| p.identity_file.clone()) {
            (files, false)
        } else {
            let defaults = ["id_ed25519", "id_ecdsa", "id_rsa"];
            let files = home
                .as_ref()
                .map(|h| defaults.iter().map(|f| h.join(".ssh").join(f)).collect())
                .unwrap_or_default();
            (files, false)
        };

        let mut known_hosts = Vec::new();
        if let Some(path) = &opts.known_hosts {
            known_hosts.push(path.clone());
        } else if let Some(files) = raw("userknownhostsfile") {
            known_hosts.extend(
                files
                    .iter()
                    .flat_map(|f| f.split_whitespace())
                    .map(|f| expand_tilde(f, home.as_deref())),
            );
        } else if let Some(home) = &home {
            known_hosts.push(home.join(".ssh/known_hosts"));
            known_hosts.push(home.join(".ssh/known_hosts2"));
        }
        known_hosts.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
        known_hosts.push(PathBuf::from("/etc/ssh/ssh_known_hosts2"));

        let host_key_policy = match raw("stricthostkeychecking")
            .and_then(|v| v.first().map(|v| v.to_ascii_lowercase()))
            .as_deref()
        {
            Some("accept-new") => HostKeyPolicy::AcceptNew,
            Some("no") | Some("off") => HostKeyPolicy::AcceptAny,
            _ => HostKeyPolicy::Strict,
        };

        let connect_timeout = opts
            .connect_timeout
            .or(params.as_ref().and_then(|p| p.connect_timeout))
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let server_alive_interval = params
            .as_ref()
            .and_then(|p| p.server_alive_interval)
            .filter(|d| !d.is_zero())
            .or(Some(
                DEFAULT_ALIVE_INTERVAL.min(opts.io_timeout.max(Duration::from_secs(1))),
            ));

        Ok(SshTarget {
            alias: opts.host.clone(),
            host_name,
            port,
            user,
            identities,
            identities_explicit,
            known_hosts,
            host_key_policy,
            connect_timeout,
            io_timeout: opts.io_timeout,
            server_alive_interval,
        })
    }

    /// `user@host:port` for messages.
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.host_name, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_ssh_config_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host backup\n  HostName 127.0.0.1\n  Port 2222\n  User barmanx\n  \
             IdentityFile /keys/id\n  UserKnownHostsFile /kh/one /kh/two\n  \
             StrictHostKeyChecking accept-new\n  ConnectTimeout 3\n  ServerAliveInterval 7\n",
        )
        .unwrap();
        let mut opts = ConnectOptions {
            host: "backup".into(),
            ssh_config: Some(cfg.clone()),
            io_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let t = SshTarget::resolve(&opts).unwrap();
        assert_eq!(
            (t.host_name.as_str(), t.port, t.user.as_str()),
            ("127.0.0.1", 2222, "barmanx")
        );
        assert_eq!(t.identities, [PathBuf::from("/keys/id")]);
        assert_eq!(
            t.known_hosts[..2],
            [PathBuf::from("/kh/one"), PathBuf::from("/kh/two")]
        );
        assert_eq!(t.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        assert_eq!(t.server_alive_interval, Some(Duration::from_secs(7)));

        opts.port = Some(22);
        opts.user = Some("me".into());
        opts.identities = vec!["/mine".into()];
        opts.known_hosts = Some("/kh/mine".into());
        let t = SshTarget::resolve(&opts).unwrap();
        assert_eq!((t.port, t.user.as_str()), (22, "me"));
        assert!(t.identities_explicit);
        assert_eq!(t.known_hosts[0], PathBuf::from("/kh/mine"));

        opts.host = "elsewhere".into();
        opts.user = None;
        let t = SshTarget::resolve(&opts).unwrap();
        assert_eq!(
            (t.host_name.as_str(), t.user.as_str()),
            ("elsewhere", "barman")
        );
        assert_eq!(t.host_key_policy, HostKeyPolicy::Strict);
    }
}
