//! `barman-wal-bench`: what prefetch and compressed transfer buy, measured
//! the way PostgreSQL calls a restore_command.
//!
//! - [`options`]: the command line.
//! - [`runner`]: measurement, one process per call, digests checked.
//! - [`report`]: summaries, the table and JSON.
//!
//! Settings run interleaved (ours, then the compared command, setting by
//! setting) so a noisy machine affects both alike, and ratios come from one
//! run.

pub mod options;
pub mod report;
pub mod runner;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::embedded_barman::{
    ArchiveSpec, BackgroundBarman, EmbeddedBarman, EmbeddedConfig, Faults,
};
use crate::wal::WalName;
use options::{BenchArgs, OnOff};
use report::{BenchReport, Summary};
use runner::{Oracle, Program, Setting};

/// What the bench runs against.
struct Target {
    host: String,
    server: String,
    first: WalName,
    connection_args: Vec<String>,
    /// Kept alive for the run; counts connections server-side.
    embedded: Option<BackgroundBarman>,
}

fn connection_args(args: &BenchArgs) -> Vec<String> {
    let c = &args.connection;
    let mut out = Vec::new();
    if let Some(user) = &c.user {
        out.extend(["-U".to_string(), user.clone()]);
    }
    if let Some(port) = c.port {
        out.extend(["--port".to_string(), port.to_string()]);
    }
    if let Some(config) = &c.config {
        out.extend(["--config".to_string(), config.clone()]);
    }
    for identity in &c.identity {
        out.extend(["-i".to_string(), identity.display().to_string()]);
    }
    if let Some(kh) = &c.known_hosts {
        out.extend(["--known-hosts".to_string(), kh.display().to_string()]);
    }
    if let Some(cfg) = &c.ssh_config {
        out.extend(["-F".to_string(), cfg.display().to_string()]);
    }
    if let Some(t) = c.connect_timeout {
        out.extend(["--connect-timeout".to_string(), t.to_string()]);
    }
    out.extend(["--io-timeout".to_string(), c.io_timeout.to_string()]);
    out
}

fn prepare_target(args: &BenchArgs) -> Result<Target, String> {
    if !args.embedded {
        let first = args
            .from
            .as_deref()
            .ok_or("--from WAL is required against a real Barman")?;
        return Ok(Target {
            host: args.barman_host.clone().unwrap_or_default(),
            server: args.server_name.clone().unwrap_or_default(),
            first: WalName::parse(first).map_err(|e| e.to_string())?,
            connection_args: connection_args(args),
            embedded: None,
        });
    }
    let segment_size = args.segment_mib.max(1) << 20;
    if !segment_size.is_power_of_two() || segment_size > 1 << 30 {
        return Err("--segment-mib must be a power of two from 1 to 1024".into());
    }
    let first = args
        .from
        .clone()
        .unwrap_or_else(|| "000000010000000000000001".to_string());
    WalName::parse(&first).map_err(|e| e.to_string())?;
    eprintln!(
        "generating {} segments of {} MiB ({:?}) for the embedded Barman...",
        args.count, args.segment_mib, args.stored
    );
    let config = EmbeddedConfig {
        archive: ArchiveSpec {
            first_segment: first.clone(),
            segment_count: args.count,
            segment_size,
            compression: args.stored,
            ..ArchiveSpec::default()
        },
        faults: Faults {
            command_latency: Duration::from_millis(args.command_latency_ms),
            ..Faults::default()
        },
        ..EmbeddedConfig::default()
    };
    let barman =
        EmbeddedBarman::start_in_background(config).map_err(|e| format!("embedded Barman: {e}"))?;
    let connection_args = vec![
        "-U".to_string(),
        "barman".to_string(),
        "--port".to_string(),
        barman.port().to_string(),
        "-i".to_string(),
        barman.client_key_path().display().to_string(),
        "--known-hosts".to_string(),
        barman.known_hosts_path().display().to_string(),
        // The user's own ssh_config has no say over the embedded server.
        "-F".to_string(),
        "/dev/null".to_string(),
    ];
    Ok(Target {
        host: "127.0.0.1".to_string(),
        server: barman.servers()[0].clone(),
        first: WalName::parse(&first).map_err(|e| e.to_string())?,
        connection_args,
        embedded: Some(barman),
    })
}

fn restore_bin(args: &BenchArgs) -> Result<PathBuf, String> {
    if let Some(bin) = &args.restore_bin {
        return Ok(bin.clone());
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = me.with_file_name("barman-wal-restore");
    if beside.exists() {
        Ok(beside)
    } else {
        Err(format!(
            "no barman-wal-restore beside {}: build it (cargo build --release) or pass --restore-bin",
            me.display()
        ))
    }
}

/// Runs the whole bench and prints the table; returns the exit status.
pub fn run(args: &BenchArgs) -> Result<i32, String> {
    let target = prepare_target(args)?;
    let bin = restore_bin(args)?;
    let mut names = Vec::with_capacity(args.count);
    let mut next = Some(target.first.clone());
    let segment_size = args.segment_mib.max(1) << 20;
    while names.len() < args.count {
        let Some(wal) = next else { break };
        next = wal.next_segment(segment_size);
        names.push(wal);
    }
    let work = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut ours_args = target.connection_args.clone();
    ours_args.extend([target.host.clone(), target.server.clone()]);
    let compare = args.compare.as_ref().map(|t| Program::Template(t.clone()));

    // The compared command runs once per -p/keep setting, right after ours.
    let ours = Program::Ours {
        bin: bin.clone(),
        args: ours_args,
    };
    let on = |v: &[OnOff]| v.iter().map(|&x| x == OnOff::On).collect::<Vec<bool>>();
    let mut runs: Vec<(&str, &Program, Setting)> = Vec::new();
    for &parallel in &args.parallel {
        for keep_compression in on(&args.keep_compression) {
            for direct_read in on(&args.direct_read) {
                for async_mode in on(&args.async_mode) {
                    let setting = Setting {
                        parallel,
                        keep_compression,
                        direct_read,
                        async_mode,
                    };
                    runs.push(("ours", &ours, setting));
                }
            }
            if let Some(compare) = &compare {
                let setting = Setting {
                    parallel,
                    keep_compression,
                    direct_read: false,
                    async_mode: false,
                };
                runs.push(("compare", compare, setting));
            }
        }
    }
    let total = (runs.len() * names.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} calls {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut oracle = Oracle::default();
    let mut summaries = Vec::new();
    let replay = Duration::from_millis(args.replay_ms);
    for &(label, program, setting) in &runs {
        bar.set_message(format!("{label} -p {}", setting.parallel));
        let before = target.embedded.as_ref().map(|b| b.stats());
        let run = runner::run_calls(program, &names, &work, setting, replay, &mut oracle, || {
            bar.inc(1)
        })
        .map_err(|e| format!("running {label}: {e}"))?;
        let server_counts = match (&target.embedded, before) {
            (Some(b), Some(before)) => {
                let after = b.stats();
                Some((
                    after.connections - before.connections,
                    after.channels_opened - before.channels_opened,
                ))
            }
            _ => None,
        };
        summaries.push(Summary::new(label, setting, run, server_counts));
    }
    bar.finish_and_clear();
    let report = BenchReport {
        target: if target.embedded.is_some() {
            format!(
                "the embedded Barman ({} archive, {} MiB segments)",
                format!("{:?}", args.stored).to_lowercase(),
                args.segment_mib
            )
        } else {
            format!("{} server {}", target.host, target.server)
        },
        first_wal: target.first.to_string(),
        count: names.len(),
        summaries,
    };
    print!("{}", report::render_table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let bad = report
        .summaries
        .iter()
        .any(|s| s.failed > 0 || s.mismatched > 0);
    Ok(if bad { 1 } else { 0 })
}
