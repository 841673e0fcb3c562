//! What the user asked `barman-wal-bench` to measure.

use std::path::PathBuf;

use clap::Parser;

use super::export::Format;
use barman_wal_restore::cli::ConnectionArgs;
use embedded_barman::StoredCompression;

/// Measure what `-p`, `--keep-compression` and the archive's compression buy
/// a PostgreSQL standby: N sequential restore_command calls per setting,
/// each a new process exactly as PostgreSQL runs them, side by side with
/// another restore_command (`--compare`).
#[derive(Debug, Clone, Parser)]
#[command(name = "barman-wal-bench", version = barman_wal_restore::cli::VERSION, args_override_self = true)]
pub struct BenchArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Serve a generated archive from the in-process Barman emulation on
    /// 127.0.0.1 instead of a real Barman (no setup needed)
    #[arg(long)]
    pub embedded: bool,

    /// The Barman host (not with --embedded)
    #[arg(value_name = "BARMAN_HOST", required_unless_present = "embedded")]
    pub barman_host: Option<String>,

    /// The Barman server name (not with --embedded)
    #[arg(value_name = "SERVER_NAME", required_unless_present = "embedded")]
    pub server_name: Option<String>,

    /// First WAL segment to ask for [embedded: the first generated]
    #[arg(long, value_name = "WAL")]
    pub from: Option<String>,

    /// How many sequential restore_command calls per setting
    #[arg(long, default_value_t = 32)]
    pub count: usize,

    /// The `-p` values to measure, comma-separated
    #[arg(short = 'p', long = "parallel", value_delimiter = ',', default_values_t = vec![0usize, 8])]
    pub parallel: Vec<usize>,

    /// Compressed transfer settings to measure: on (`--keep-compression`),
    /// off (the server decompresses)
    #[arg(long = "keep-compression", value_delimiter = ',', default_values_t = vec![OnOff::On])]
    pub keep_compression: Vec<OnOff>,

    /// Direct read settings to measure for our binary: on (`--direct-read`),
    /// off (one `barman get-wal` per file). The compared command runs once
    /// per -p/keep setting, beside the direct-read off row
    #[arg(long = "direct-read", value_delimiter = ',', default_values_t = vec![OnOff::Off])]
    pub direct_read: Vec<OnOff>,

    /// `--async` settings to measure for our binary: on (a background
    /// worker keeps the spool ahead), off
    #[arg(long = "async", value_delimiter = ',', default_values_t = vec![OnOff::Off])]
    pub async_mode: Vec<OnOff>,

    /// Emulated replay time per segment: the pause between two calls, as
    /// PostgreSQL replays one segment before asking for the next. The
    /// table's "waited" column is the time spent inside calls
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub replay_ms: u64,

    /// Another restore_command to run in the same loop, interleaved setting
    /// by setting, e.g. 'barman-wal-restore.py -U barman -p %j %k --spool-dir
    /// %s barman angus %f %p'. Placeholders: %f WAL name, %p destination,
    /// %s a fresh spool directory, %j the -p value, %k --keep-compression or
    /// nothing, %H %P the host and port to connect to (the relay's under
    /// --rtt/--bandwidth), %i %K the identity and known_hosts files ours
    /// uses there (for an OpenSSH client: fixtures/bench/bin/ssh)
    #[arg(long, value_name = "TEMPLATE")]
    pub compare: Option<String>,

    /// The barman-wal-restore binary to measure [default: beside this one]
    #[arg(long, value_name = "PATH")]
    pub restore_bin: Option<PathBuf>,

    /// Write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// What to print on stdout: the aligned table, a GitHub markdown table
    /// (both with the ratios and the Result line), or CSV (one row per
    /// setting, no ratios)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Draw an SVG to FILE: MiB/s per setting, and each call's latency in
    /// call order, spool hits and misses apart
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Where fresh spools and destinations are made [default: the system
    /// temp directory; put it on the filesystem of pg_wal to be realistic]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// How many restore sequences run at once against the one Barman, each
    /// a standby of its own (own spool, own destination), each calling as
    /// PostgreSQL does; seg/s is then the aggregate
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,

    /// A cgroup holding the Barman side (its sshd, and so every get-wal):
    /// the table adds its CPU per delivered segment. Reads cpuacct.usage
    /// (cgroup v1) or cpu.stat (v2)
    #[arg(long, value_name = "DIR")]
    pub barman_cgroup: Option<PathBuf>,

    /// Round trips to measure, in ms, comma-separated: each but 0 puts a
    /// WAN in front of the target, a relay on 127.0.0.1 that delays each
    /// direction by half the round trip
    #[arg(long, value_name = "MS", value_delimiter = ',', default_values_t = vec![0u64])]
    pub rtt: Vec<u64>,

    /// The relay also paces each direction to this rate, in Mbit/s
    #[arg(long, value_name = "MBIT")]
    pub bandwidth: Option<f64>,

    /// The first relay's port on 127.0.0.1, the next relays' the ports
    /// after it [default: free ones], so that known_hosts lines for
    /// `[127.0.0.1]:PORT` can be written before the run for the compared
    /// command (ours is told the target's keys)
    #[arg(long, value_name = "PORT")]
    pub relay_port: Option<u16>,

    /// Embedded: stored compression of the generated archive (none, gzip,
    /// bzip2, xz, zstd, lz4, snappy, mixed)
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub stored: StoredCompression,

    /// Embedded: segment size in MiB (PostgreSQL's default is 16)
    #[arg(long, default_value_t = 16)]
    pub segment_mib: u64,

    /// Embedded: emulated start-up time of Barman's Python per remote
    /// command, in ms (about 110 ms on a real Barman host)
    #[arg(long, default_value_t = 110)]
    pub command_latency_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl std::fmt::Display for OnOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        })
    }
}

fn parse_compression(s: &str) -> Result<StoredCompression, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "none" => StoredCompression::None,
        "gzip" => StoredCompression::Gzip,
        "bzip2" => StoredCompression::Bzip2,
        "xz" => StoredCompression::Xz,
        "zstd" => StoredCompression::Zstd,
        "lz4" => StoredCompression::Lz4,
        "snappy" => StoredCompression::Snappy,
        "mixed" => StoredCompression::Mixed,
        other => return Err(format!("unknown compression {other:?}")),
    })
}
