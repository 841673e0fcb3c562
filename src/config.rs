//! The settings of a run, resolved once: the command line (over the
//! environment over the settings file, see [`crate::config_file`]) turned
//! into a [`Config`] and checked, before anything connects. The call and its
//! `--async` worker share it: the worker receives the resolved [`Config`]
//! from the call that starts it ([`crate::handoff`]), never a command line.
//!
//! What one call asks for (`%f`, `%p`, `--test`) is its [`Request`], not a
//! setting: the worker serves many calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::RestoreArgs;
use crate::error::Error;
use crate::exit::FailurePolicy;
use crate::logging::LogLevel;
use crate::ssh::ConnectOptions;

/// Everything a call or a worker needs to know before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// What is printed (`--log-level`, `-q`, `-v`); the worker logs at its
    /// caller's level.
    pub log_level: LogLevel,
    pub target: Target,
    pub server: Server,
    pub transfer: Transfer,
    pub spool: SpoolPolicy,
    pub background: AsyncSettings,
    pub on_failure: OnFailure,
}

/// The Barman host and how to reach it, as given (ssh_config fills the
/// rest when the session resolves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identities: Vec<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
}

/// The archive on the Barman host: SERVER_NAME and `barman --config`,
/// checked before they can reach a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedServer")]
pub struct Server {
    name: String,
    config: Option<String>,
}

/// What the server should send for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Compression {
    /// The server decompresses and sends raw WAL (Barman's default).
    #[default]
    Decompressed,
    /// The server sends the stored bytes; we decode them as they arrive.
    KeepCompression,
    /// The server recompresses with gzip (`-z`, deprecated upstream).
    Gzip,
    /// The server recompresses with bzip2 (`-j`, deprecated upstream).
    Bzip2,
}

/// How files are asked for, checked and bounded in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// `-p N`: how many files one call fetches (the requested one and
    /// N-1 prefetches), or how many the worker keeps ready or in flight.
    pub parallel: usize,
    /// What the server is asked to send. [`Compression::KeepCompression`]
    /// is also what we choose by default (see [`Transfer::auto_keep`]).
    pub compression: Compression,
    /// We chose `--keep-compression` ourselves: fall back to a plain
    /// `get-wal` when the server rejects the flag (Barman before 3.12).
    pub auto_keep: bool,
    /// `-P`: ask for `.partial` files too.
    pub partial: bool,
    /// Check WAL headers before delivering (`--no-verify` turns it off).
    pub verify: bool,
    /// `--direct-read`: read the stored files with `cat` first.
    pub direct_read: bool,
    /// `--connect-timeout` (ssh_config's, else 10 s, when absent).
    pub connect_timeout: Option<Duration>,
    /// `--io-timeout`: the longest wait for a byte; the per-transfer and
    /// per-call bounds are multiples of it.
    pub io_timeout: Duration,
}

/// Where prefetched files wait for PostgreSQL, and whether this run may
/// make that spool its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolPolicy {
    pub dir: PathBuf,
    /// `-p 1` or more: create the spool, and take it over from another
    /// caller identity nobody holds it for. With `-p 0` an existing spool
    /// is only read, as the original does.
    pub own: bool,
}

/// `--async`: one background worker per spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncSettings {
    pub enabled: bool,
    /// `--async-idle`: how long the worker waits for a request before it
    /// exits.
    pub idle: Duration,
}

/// What a failure becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnFailure {
    /// `--on-failure`.
    #[serde(with = "policy_name")]
    pub policy: FailurePolicy,
    /// `--sleep`: the pause after a failure that was not local.
    pub sleep: Duration,
}

/// What one restore_command call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `%f`, as given (checked by the call, except for `--test`).
    pub wal_name: String,
    /// `%p`.
    pub wal_dest: PathBuf,
    /// `--test`: check the connection and Barman's configuration instead.
    pub test: bool,
}

impl Config {
    /// The settings of `args` (already merged with the environment and the
    /// settings file), checked: a bad SERVER_NAME or `--config` is a local
    /// failure before any connection.
    pub fn from_args(args: &RestoreArgs) -> Result<Config, Error> {
        let connect = args.connection.connect_options(&args.barman_host);
        let (compression, auto_keep) = args.transfer();
        Ok(Config {
            log_level: args.log_level(),
            target: Target {
                host: connect.host,
                user: connect.user,
                port: connect.port,
                identities: connect.identities,
                known_hosts: connect.known_hosts,
                ssh_config: connect.ssh_config,
            },
            server: Server::new(&args.server_name, args.connection.config.as_deref())?,
            transfer: Transfer {
                parallel: args.parallel,
                compression,
                auto_keep,
                partial: args.partial,
                verify: !args.no_verify,
                direct_read: args.direct_read,
                connect_timeout: connect.connect_timeout,
                io_timeout: connect.io_timeout,
            },
            spool: SpoolPolicy {
                dir: args.spool_dir.clone(),
                own: args.parallel > 0,
            },
            background: AsyncSettings {
                enabled: args.async_prefetch,
                idle: Duration::from_secs(args.async_idle),
            },
            on_failure: OnFailure::from_args(args),
        })
    }

    /// What the SSH layer resolves the target from.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.target.host.clone(),
            user: self.target.user.clone(),
            port: self.target.port,
            identities: self.target.identities.clone(),
            known_hosts: self.target.known_hosts.clone(),
            ssh_config: self.target.ssh_config.clone(),
            connect_timeout: self.transfer.connect_timeout,
            io_timeout: self.transfer.io_timeout,
        }
    }

    /// Makes every relative path absolute against `base`: for the
    /// `--async` worker, which does not run in its caller's working
    /// directory.
    pub fn resolve_paths_against(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.spool.dir);
        self.target.identities.iter_mut().for_each(resolve);
        self.target.known_hosts.iter_mut().for_each(resolve);
        self.target.ssh_config.iter_mut().for_each(resolve);
    }
}

impl OnFailure {
    /// Needed even when the other settings are refused: it decides the
    /// status of that refusal.
    pub fn from_args(args: &RestoreArgs) -> OnFailure {
        OnFailure {
            policy: args.on_failure,
            sleep: Duration::from_secs(args.sleep),
        }
    }
}

impl Request {
    pub fn from_args(args: &RestoreArgs) -> Request {
        Request {
            wal_name: args.wal_name.clone(),
            wal_dest: args.wal_dest.clone(),
            test: args.test,
        }
    }
}

impl Server {
    /// Checks SERVER_NAME and `--config` before they can reach a shell.
    ///
    /// Barman server names are configuration section names: letters, digits
    /// and a little punctuation. We refuse anything else outright (a quote, a
    /// `;` or a newline in a server name is an attack or a typo, never a
    /// server), and quote the result anyway. A config path may hold any
    /// printable character; it is quoted, and control characters are refused
    /// because no honest path has them.
    pub fn new(name: &str, config: Option<&str>) -> Result<Server, Error> {
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b));
        if !name_ok {
            return Err(Error::invalid_input(format!(
                "invalid SERVER_NAME {:?}: a Barman server name has only letters, digits and ._-+@:",
                name
            )));
        }
        if let Some(config) = config {
            if config.is_empty() || config.chars().any(char::is_control) {
                return Err(Error::invalid_input(format!(
                    "invalid --config {:?}: a path without control characters is expected",
                    config
                )));
            }
        }
        Ok(Server {
            name: name.to_string(),
            config: config.map(str::to_string),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `barman --config`, the configuration file on the Barman host.
    pub fn config(&self) -> Option<&str> {
        self.config.as_deref()
    }
}

/// A [`Server`] as read back by the worker: checked again on the way in.
#[derive(Deserialize)]
struct UncheckedServer {
    name: String,
    config: Option<String>,
}

impl TryFrom<UncheckedServer> for Server {
    type Error = String;

    fn try_from(raw: UncheckedServer) -> Result<Server, String> {
        Server::new(&raw.name, raw.config.as_deref()).map_err(|f| f.to_string())
    }
}

/// `--on-failure` by its command-line name, so [`crate::exit`] need not
/// know about serialization.
mod policy_name {
    use clap::ValueEnum;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::exit::FailurePolicy;

    pub fn serialize<S: Serializer>(policy: &FailurePolicy, s: S) -> Result<S::Ok, S::Error> {
        let value = policy
            .to_possible_value()
            .ok_or_else(|| serde::ser::Error::custom("a policy without a name"))?;
        s.serialize_str(value.get_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FailurePolicy, D::Error> {
        let name = String::deserialize(d)?;
        FailurePolicy::from_str(&name, false).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, Error> {
        let args = RestoreArgs::try_parse_from(
            std::iter::once("barman-wal-restore").chain(args.iter().copied()),
        )
        .unwrap();
        Config::from_args(&args)
    }

    #[test]
    fn bad_server_names_and_configs_are_refused_when_resolved() {
        for bad in ["", "a'b", "a;b", "$(id)", "a b", "a\nb", "`x`", "a\"b"] {
            assert!(Server::new(bad, None).is_err(), "{bad:?}");
            assert!(config(&["h", bad, "w", "d"]).is_err(), "{bad:?}");
        }
        assert!(Server::new("angus", Some("a\nb")).is_err());
        assert!(config(&["-c", "", "h", "angus", "w", "d"]).is_err());
    }

    #[test]
    fn the_worker_gets_the_same_config_back() {
        let config = config(&[
            "-U",
            "barman",
            "--port",
            "2222",
            "-i",
            "k1",
            "-i",
            "k2",
            "-c",
            "/etc/it's barman.conf",
            "-p",
            "8",
            "--async",
            "--async-idle",
            "7",
            "--on-failure",
            "not-available",
            "--connect-timeout",
            "3",
            "-s",
            "2",
            "h",
            "angus",
            "w",
            "d",
        ])
        .unwrap();
        let text = toml::to_string(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.on_failure.policy, FailurePolicy::NotAvailable);
        // A server name that would not pass on the command line does not
        // pass this way either.
        let hostile = text.replace("name = \"angus\"", "name = \"a;b\"");
        assert_ne!(hostile, text);
        assert!(toml::from_str::<Config>(&hostile).is_err());
    }

    #[test]
    fn relative_paths_are_made_absolute_for_the_worker() {
        let mut config = config(&[
            "--spool-dir",
            "spool",
            "-i",
            "/abs/key",
            "-i",
            "key",
            "-F",
            "ssh_config",
            "h",
            "s",
            "w",
            "d",
        ])
        .unwrap();
        config.resolve_paths_against(Path::new("/data"));
        assert_eq!(config.spool.dir, Path::new("/data/spool"));
        assert_eq!(
            config.target.identities,
            [PathBuf::from("/abs/key"), PathBuf::from("/data/key")]
        );
        assert_eq!(
            config.target.ssh_config.as_deref(),
            Some(Path::new("/data/ssh_config"))
        );
        assert_eq!(config.target.known_hosts, None);
    }
}
