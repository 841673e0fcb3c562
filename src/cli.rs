//! The command line of `barman-wal-restore`: the Python original's options,
//! names and defaults, plus our additions (marked "ours" in the help).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser};

use crate::config::Compression;
use crate::exit::FailurePolicy;
use crate::logging::LogLevel;
use crate::ssh::ConnectOptions;

/// How to reach the Barman host: shared by `barman-wal-restore` and
/// `barman-wal-bench`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// The user used for the ssh connection to the Barman server
    /// [default: ssh_config's User, else barman]
    #[arg(short = 'U', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// The port used for the ssh connection to the Barman server
    /// [default: ssh_config's Port, else 22]
    #[arg(long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// Configuration file on the Barman server
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub config: Option<String>,

    /// (ours) Private key file for authentication; repeatable.
    /// [default: ssh-agent, then ssh_config's IdentityFile or ~/.ssh/id_*]
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// (ours) known_hosts file to check the server's host key against
    /// (besides /etc/ssh/ssh_known_hosts) [default: ~/.ssh/known_hosts]
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// (ours) ssh_config file to read instead of ~/.ssh/config
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// (ours) Give up connecting after SECS seconds [default: ssh_config's
    /// ConnectTimeout, else 10]
    #[arg(long = "connect-timeout", value_name = "SECS")]
    pub connect_timeout: Option<u64>,

    /// (ours) Fail a transfer that makes no progress for SECS seconds
    #[arg(long = "io-timeout", value_name = "SECS", default_value_t = 60)]
    pub io_timeout: u64,
}

impl ConnectionArgs {
    pub fn connect_options(&self, host: &str) -> ConnectOptions {
        ConnectOptions {
            host: host.to_string(),
            user: self.user.clone(),
            port: self.port,
            identities: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            ssh_config: self.ssh_config.clone(),
            connect_timeout: self.connect_timeout.map(|s| Duration::from_secs(s.max(1))),
            io_timeout: Duration::from_secs(self.io_timeout.max(1)),
        }
    }
}

/// What `--version` prints: this implementation (not the Python original),
/// its version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (Rust implementation, commit ",
    env!("BWR_BUILD_COMMIT"),
    ")"
);

/// Options that exclude each other (clap groups): a layer of settings that
/// turns one on overrides the others of lower layers.
pub const EXCLUSIVE_GROUPS: [&str; 2] = ["compression", "verbosity"];

/// This script will be used as a 'restore_command' based on the get-wal
/// feature of Barman. A ssh connection will be opened to the Barman host.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "barman-wal-restore",
    version = VERSION,
    disable_version_flag = true,
    // argparse lets a repeated option win; `barman restore` and wrapper
    // scripts rely on it.
    args_override_self = true,
    group(ArgGroup::new("compression").args(["gzip", "bzip2", "keep_compression", "no_keep_compression"])),
    group(ArgGroup::new("verbosity").args(["verbose", "quiet", "log_level"])),
    after_help = "Exit status: 0 the file is at WAL_DEST; 1 Barman does not have it (or its copy \
                  is damaged); 2 connection, authentication or transport failure, or a usage \
                  error (as argparse); 3 local problem (WAL_DEST, spool, WAL or server name); \
                  any other remote status is clamped to 1..125; 130/143 interrupted by \
                  SIGINT/SIGTERM; 255 only with --on-failure: recovery deliberately stopped."
)]
pub struct RestoreArgs {
    /// Print the version and exit
    #[arg(short = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// (ours) The settings file (TOML, keys named like the long options);
    /// `none` reads no file. Command line > environment
    /// (BARMAN_WAL_RESTORE_OPT_<OPTION>) > file > defaults
    /// [default: /etc/barman-wal-restore.conf, if present]
    #[arg(long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// (ours) Print the effective settings and where each comes from, then
    /// exit (the positional arguments may be given or left out)
    #[arg(long = "show-config")]
    pub show_config: bool,

    /// Sleep for SECONDS after a failure of get-wal request
    #[arg(
        short = 's',
        long = "sleep",
        value_name = "SECONDS",
        default_value_t = 0
    )]
    pub sleep: u64,

    /// Specifies the number of files to peek and transfer in parallel
    #[arg(
        short = 'p',
        long = "parallel",
        value_name = "JOBS",
        default_value_t = 0
    )]
    pub parallel: usize,

    /// Specifies spool directory for WAL files
    #[arg(
        long = "spool-dir",
        value_name = "SPOOL_DIR",
        default_value = "/var/tmp/walrestore"
    )]
    pub spool_dir: PathBuf,

    /// Retrieve also partial WAL files (.partial)
    #[arg(short = 'P', long = "partial")]
    pub partial: bool,

    /// Transfer the WAL files compressed with gzip (server-side recompression)
    #[arg(short = 'z', long = "gzip")]
    pub gzip: bool,

    /// Transfer the WAL files compressed with bzip2 (server-side recompression)
    #[arg(short = 'j', long = "bzip2")]
    pub bzip2: bool,

    /// Keep the compression of archived WAL files and decompress on this side
    /// (our default already, with a fallback for servers that cannot)
    #[arg(long = "keep-compression")]
    pub keep_compression: bool,

    /// (ours) Make the Barman server decompress, as the original does by default
    #[arg(long = "no-keep-compression")]
    pub no_keep_compression: bool,

    /// Test both the connection and the configuration of the requested
    /// PostgreSQL server in Barman for WAL retrieval
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// (ours) What a failure other than Barman's "not found" becomes:
    /// `auto` stops an archive recovery (PITR) with status 255 instead of
    /// letting it end early, and reports 1-3 in standby mode
    #[arg(long = "on-failure", value_enum, value_name = "POLICY", default_value_t = FailurePolicy::Auto)]
    pub on_failure: FailurePolicy,

    /// (ours) Read the stored WAL files directly (cat over the session)
    /// instead of one `barman get-wal` per file; falls back to get-wal for
    /// anything it cannot settle. Needs an account that may run cat and ls
    #[arg(long = "direct-read")]
    pub direct_read: bool,

    /// (ours) Keep the spool filled ahead of replay by one background
    /// worker per spool on one long-lived SSH session; `-p N` is how many
    /// segments it keeps ready or in flight. A call the worker cannot serve
    /// fetches its file itself
    #[arg(long = "async")]
    pub async_prefetch: bool,

    /// (ours) How long the background worker of `--async` waits for a
    /// request before it exits
    #[arg(long = "async-idle", value_name = "SECS", default_value_t = 60)]
    pub async_idle: u64,

    /// (ours) Deliver files without checking their WAL headers
    #[arg(long = "no-verify")]
    pub no_verify: bool,

    /// (ours) Say how each call gets its file: `--log-level debug`
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// (ours) Print errors only: `--log-level error`
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// (ours) The least severe lines printed on stderr and in the
    /// `--async` worker's log; `debug` adds the time and the pid to each
    /// line [default: info]
    #[arg(
        long = "log-level",
        value_enum,
        value_name = "LEVEL",
        ignore_case = true
    )]
    pub log_level: Option<LogLevel>,

    /// The host of the Barman server
    #[arg(value_name = "BARMAN_HOST")]
    pub barman_host: String,

    /// The server name configured in Barman from which WALs are taken
    #[arg(value_name = "SERVER_NAME")]
    pub server_name: String,

    /// The value of the '%f' keyword (according to 'restore_command')
    #[arg(value_name = "WAL_NAME")]
    pub wal_name: String,

    /// The value of the '%p' keyword (according to 'restore_command')
    #[arg(value_name = "WAL_DEST")]
    pub wal_dest: PathBuf,
}

impl RestoreArgs {
    /// What is printed: `-q` and `-v` are shorthands for `--log-level
    /// error` and `debug` (they exclude each other); `info` by default.
    pub fn log_level(&self) -> LogLevel {
        if self.quiet {
            LogLevel::Error
        } else if self.verbose {
            LogLevel::Debug
        } else {
            self.log_level.unwrap_or(LogLevel::Info)
        }
    }

    /// What the user asked the server to send, and whether the choice of
    /// `--keep-compression` is ours (so a server that rejects it is
    /// forgiven).
    pub fn transfer(&self) -> (Compression, bool) {
        if self.gzip {
            (Compression::Gzip, false)
        } else if self.bzip2 {
            (Compression::Bzip2, false)
        } else if self.no_keep_compression {
            (Compression::Decompressed, false)
        } else {
            (Compression::KeepCompression, !self.keep_compression)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RestoreArgs, clap::Error> {
        RestoreArgs::try_parse_from(
            std::iter::once("barman-wal-restore").chain(args.iter().copied()),
        )
    }

    #[test]
    fn options_before_or_after_positionals() {
        let a = parse(&[
            "-U",
            "barman",
            "-p",
            "8",
            "backup",
            "angus",
            "000000010000000000000002",
            "pg_wal/RECOVERYXLOG",
        ])
        .unwrap();
        let b = parse(&[
            "backup",
            "angus",
            "000000010000000000000002",
            "pg_wal/RECOVERYXLOG",
            "-p",
            "8",
            "-U",
            "barman",
        ])
        .unwrap();
        assert_eq!((a.parallel, b.parallel), (8, 8));
        assert_eq!(a.connection.user.as_deref(), Some("barman"));
        assert_eq!(b.spool_dir, PathBuf::from("/var/tmp/walrestore"));
    }

    #[test]
    fn compression_flags_are_exclusive() {
        let err = parse(&["-z", "-j", "h", "s", "w", "d"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(parse(&["--keep-compression", "-z", "h", "s", "w", "d"]).is_err());
        let plain = parse(&["h", "s", "w", "d"]).unwrap();
        assert_eq!(plain.transfer(), (Compression::KeepCompression, true));
        let explicit = parse(&["--keep-compression", "h", "s", "w", "d"]).unwrap();
        assert_eq!(explicit.transfer(), (Compression::KeepCompression, false));
        let original = parse(&["--no-keep-compression", "h", "s", "w", "d"]).unwrap();
        assert_eq!(original.transfer(), (Compression::Decompressed, false));
    }

    #[test]
    fn a_repeated_option_wins_as_in_argparse() {
        let a = parse(&["--port", "22", "h", "s", "w", "d", "--port", "2222"]).unwrap();
        assert_eq!(a.connection.port, Some(2222));
    }

    #[test]
    fn missing_positionals_are_a_usage_error() {
        assert_eq!(parse(&["h", "s", "w"]).unwrap_err().exit_code(), 2);
    }
}
