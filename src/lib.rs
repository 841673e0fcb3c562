//! A drop-in, native-SSH replacement for Barman's `barman-wal-restore`, the
//! `restore_command` a PostgreSQL standby runs to fetch WAL from a Barman
//! server.
//!
//! One call opens at most one SSH session (russh) and runs every remote
//! `barman get-wal` as an exec channel multiplexed on it; payloads are decoded
//! while they arrive and written atomically. The map of the house:
//!
//! - [`wal`]: WAL file names, what PostgreSQL may ask for, segment arithmetic.
//! - [`cli`]: the command line, compatible with the Python original.
//! - [`config_file`]: settings from `/etc/barman-wal-restore.conf` and the
//!   environment, under the command line.
//! - [`config`]: the settings resolved once and checked (target, server,
//!   transfer, spool policy, async settings, failure policy), shared by a
//!   call and its worker; and what one call asks for.
//! - [`ssh`]: target resolution from flags and ssh_config, host keys, the
//!   session and its exec channels, which end in plain exit statuses.
//! - [`client`]: everything said to the Barman host: connecting with
//!   retries and learning its layout, `get-wal` and `--direct-read`
//!   transfers, the prefetch window, the remote command lines and what
//!   their answers mean, the bounded reader of an answer.
//! - [`decode`]: sniffing and streaming decoders (gzip, bzip2, xz, zstd, lz4,
//!   snappy) into the destination file.
//! - [`validate`]: WAL header checks before a file gets its final name.
//! - [`spool`]: the spool directory, temp files, atomic delivery, cleanup.
//! - [`restore`]: one restore_command call, from its settings to its exit
//!   status.
//! - [`handoff`] and [`worker`]: `--async`, a background worker per spool
//!   that keeps it filled on one long-lived session; how a call starts it
//!   (handing it the resolved settings) and asks it for a segment.
//! - [`pg_control`]: the cluster's own identity, from its `pg_control`.
//! - [`owner`]: whose spool it is: the caller identity its files belong to.
//! - [`error`]: the one error type, its kinds what the program acts on.
//! - [`exit`]: the only place that decides exit statuses, from error kinds.
//! - [`shutdown`]: signals, and the temp files they must not leave behind.
//! - [`stats`]: what a call or a worker cost, for `barman-wal-bench`.
//! - [`logging`]: what is printed and how: levels, the one formatter, the
//!   worker's bounded log, notices said at most once per interval.
//!
//! Two crates of the workspace sit beside this one and are not linked into
//! `barman-wal-restore`: `crates/embedded-barman`, an in-process SSH server
//! emulating a Barman host (hermetic tests, the bench's `--embedded` mode),
//! and `crates/bench`, `barman-wal-bench`, measuring calls as PostgreSQL
//! makes them.

pub mod cli;
pub mod client;
pub mod config;
pub mod config_file;
pub mod decode;
pub mod error;
pub mod exit;
pub mod handoff;
pub mod logging;
pub mod owner;
pub mod pg_control;
pub mod restore;
pub mod shutdown;
pub mod spool;
pub mod ssh;
pub mod stats;
pub mod validate;
pub mod wal;
pub mod worker;
