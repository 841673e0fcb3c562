//! `barman-wal-bench`: what prefetch and compressed transfer buy, measured
//! the way PostgreSQL calls a restore_command.
//!
//! - [`options`]: the command line.
//! - [`runner`]: measurement, one process per call, digests checked.
//! - [`report`]: the results as data, a summary per program and setting.
//! - [`export`]: the results rendered: table, markdown, CSV (stdout,
//!   `--format`), SVG (`--plot`); JSON is the report through serde.
//! - [`relay`]: `--rtt` and `--bandwidth`, a shaped relay standing in for a
//!   WAN between the standby and the Barman host.
//!
//! Settings run interleaved (ours, then the compared command, setting by
//! setting) so a noisy machine affects both alike, and ratios come from one
//! run.

pub mod export;
pub mod options;
pub mod relay;
pub mod report;
pub mod runner;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use barman_wal_restore::wal::WalName;
use embedded_barman::{ArchiveSpec, BackgroundBarman, EmbeddedBarman, EmbeddedConfig, Faults};
use options::{BenchArgs, OnOff};
use relay::{LinkShape, Relay};
use report::{BenchReport, Summary};
use runner::{Oracle, Program, Setting};

/// What the bench runs against.
struct Target {
    server: String,
    first: WalName,
    description: String,
    /// Kept alive for the run; counts connections server-side.
    embedded: Option<BackgroundBarman>,
    /// One per `--rtt` value.
    links: Vec<Link>,
}

/// One way to reach the target: directly, or through a shaped relay.
struct Link {
    rtt_ms: u64,
    /// BARMAN_HOST and the flags ours is given.
    host: String,
    connection_args: Vec<String>,
    /// Where the compared command connects (`%H %P`).
    connect_host: String,
    connect_port: u16,
    /// Kept alive for the run.
    _relay: Option<Relay>,
}

/// How ours reaches the target without a relay, and what a relay needs to
/// stand in front of it.
struct Direct {
    host: String,
    port: u16,
    flags: FlagsFor,
    /// The target's address and its keys as known_hosts lines for
    /// `[127.0.0.1]:PORT`, for a relay; resolved only when one is asked for.
    for_relay: Box<dyn Fn() -> Result<(SocketAddr, KeysAt), String>>,
}

/// The flags for ours, given the port and known_hosts file to use (`None`:
/// the target's own).
type FlagsFor = Box<dyn Fn(Option<(u16, &Path)>) -> Vec<String>>;

/// The target's host keys as known_hosts lines for a given relay port.
type KeysAt = Box<dyn Fn(u16) -> Result<Vec<String>, String>>;

fn connection_args(args: &BenchArgs, through: Option<(u16, &Path)>) -> Vec<String> {
    let c = &args.connection;
    let mut out = Vec::new();
    if let Some(user) = &c.user {
        out.extend(["-U".to_string(), user.clone()]);
    }
    if let Some(port) = through.map(|(port, _)| port).or(c.port) {
        out.extend(["--port".to_string(), port.to_string()]);
    }
    if let Some(config) = &c.config {
        out.extend(["--config".to_string(), config.clone()]);
    }
    for identity in &c.identity {
        out.extend(["-i".to_string(), identity.display().to_string()]);
    }
    let known_hosts = through
        .map(|(_, file)| file.to_path_buf())
        .or(c.known_hosts.clone());
    if let Some(kh) = known_hosts {
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

/// The value after `flag` in ours' connection flags.
fn flag_value<'a>(flags: &'a [String], flag: &str) -> Option<&'a str> {
    flags
        .iter()
        .position(|f| f == flag)
        .and_then(|i| flags.get(i + 1))
        .map(String::as_str)
}

fn bits_per_second(args: &BenchArgs) -> Result<Option<u64>, String> {
    match args.bandwidth {
        Some(mbit) if mbit.is_finite() && mbit > 0.0 => Ok(Some((mbit * 1e6) as u64)),
        Some(mbit) => Err(format!("--bandwidth {mbit}: give a rate above 0 Mbit/s")),
        None => Ok(None),
    }
}

/// The links to measure: one per `--rtt` value, each direct or through a
/// relay of its own.
fn links(args: &BenchArgs, direct: &Direct, work: &Path) -> Result<Vec<Link>, String> {
    let bits_per_second = bits_per_second(args)?;
    let mut links = Vec::new();
    let mut next_relay_port = args.relay_port;
    for &rtt_ms in &args.rtt {
        let shape = LinkShape {
            round_trip: Duration::from_millis(rtt_ms),
            bits_per_second,
        };
        if shape.is_loopback() {
            links.push(Link {
                rtt_ms,
                host: direct.host.clone(),
                connection_args: (direct.flags)(None),
                connect_host: direct.host.clone(),
                connect_port: direct.port,
                _relay: None,
            });
            continue;
        }
        let (address, keys_at) = (direct.for_relay)()?;
        let relay = Relay::start(address, shape, next_relay_port.unwrap_or(0))
            .map_err(|e| format!("starting the --rtt/--bandwidth relay: {e}"))?;
        let port = relay.address().port();
        next_relay_port = next_relay_port.map(|p| p.saturating_add(1));
        let known_hosts = work.join(format!("bwr-bench-relay-{port}.known_hosts"));
        std::fs::write(&known_hosts, keys_at(port)?.join("\n") + "\n")
            .map_err(|e| format!("writing {}: {e}", known_hosts.display()))?;
        eprintln!(
            "relay on 127.0.0.1:{port} -> {address}: {rtt_ms} ms round trip{}",
            bits_per_second
                .map(|b| format!(", {} Mbit/s each way", b as f64 / 1e6))
                .unwrap_or_default()
        );
        links.push(Link {
            rtt_ms,
            // Ours connects to the relay by address: the user's ssh_config
            // for the alias no longer applies (say -U and -i).
            host: "127.0.0.1".to_string(),
            connection_args: (direct.flags)(Some((port, &known_hosts))),
            connect_host: "127.0.0.1".to_string(),
            connect_port: port,
            _relay: Some(relay),
        });
    }
    Ok(links)
}

fn prepare_target(args: &BenchArgs, work: &Path) -> Result<Target, String> {
    let link_note = match args.bandwidth {
        Some(mbit) => format!(" through a relay of {mbit} Mbit/s"),
        None => String::new(),
    };
    if !args.embedded {
        let first = args
            .from
            .as_deref()
            .ok_or("--from WAL is required against a real Barman")?;
        let host = args.barman_host.clone().unwrap_or_default();
        let server = args.server_name.clone().unwrap_or_default();
        let direct = Direct {
            host: host.clone(),
            port: args.connection.port.unwrap_or(22),
            flags: {
                let args = args.clone();
                Box::new(move |through| connection_args(&args, through))
            },
            for_relay: {
                let args = args.clone();
                Box::new(move || real_target_for_relay(&args, &host))
            },
        };
        return Ok(Target {
            description: format!("{} server {server}{link_note}", direct.host),
            links: links(args, &direct, work)?,
            server,
            first: WalName::parse(first).map_err(|e| e.to_string())?,
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
    let key_line = barman.known_hosts_line();
    let key = key_line
        .split_once(' ')
        .map_or(String::new(), |(_, key)| key.to_string());
    let own_known_hosts = barman.known_hosts_path().to_path_buf();
    let key_path = barman.client_key_path().to_path_buf();
    let (port, address) = (barman.port(), barman.address());
    let direct = Direct {
        host: "127.0.0.1".to_string(),
        port,
        flags: Box::new(move |through: Option<(u16, &Path)>| {
            let (port, known_hosts) = through.unwrap_or((port, &own_known_hosts));
            vec![
                "-U".to_string(),
                "barman".to_string(),
                "--port".to_string(),
                port.to_string(),
                "-i".to_string(),
                key_path.display().to_string(),
                "--known-hosts".to_string(),
                known_hosts.display().to_string(),
                // The user's own ssh_config has no say over the embedded server.
                "-F".to_string(),
                "/dev/null".to_string(),
            ]
        }),
        for_relay: Box::new(move || {
            let key = key.clone();
            let keys_at: KeysAt =
                Box::new(move |port| Ok(vec![format!("[127.0.0.1]:{port} {key}")]));
            Ok((address, keys_at))
        }),
    };
    Ok(Target {
        server: barman.servers()[0].clone(),
        first: WalName::parse(&first).map_err(|e| e.to_string())?,
        description: format!(
            "the embedded Barman ({} archive, {} MiB segments){link_note}",
            format!("{:?}", args.stored).to_lowercase(),
            args.segment_mib
        ),
        links: links(args, &direct, work)?,
        embedded: Some(barman),
    })
}

/// A real Barman host for a relay: its address as ssh_config resolves it,
/// and the keys known_hosts holds for it.
fn real_target_for_relay(args: &BenchArgs, host: &str) -> Result<(SocketAddr, KeysAt), String> {
    let ssh = barman_wal_restore::ssh::SshTarget::resolve(&args.connection.connect_options(host))
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let address = (ssh.host_name.as_str(), ssh.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {}:{}", ssh.host_name, ssh.port))?;
    // The name OpenSSH looks the host up by in known_hosts.
    let lookup = match &ssh.host_key_alias {
        Some(alias) => alias.clone(),
        None if ssh.port == 22 => ssh.host_name.clone(),
        None => format!("[{}]:{}", ssh.host_name, ssh.port),
    };
    let file = args
        .connection
        .known_hosts
        .clone()
        .or_else(|| {
            barman_wal_restore::ssh::target::passwd_home().map(|h| h.join(".ssh/known_hosts"))
        })
        .ok_or("no known_hosts file: pass --known-hosts")?;
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let keys_at: KeysAt = Box::new(move |port| {
        let lines = relay::rekey_known_hosts(&text, &lookup, port);
        if lines.is_empty() {
            return Err(format!(
                "{} has no plain entry for {lookup}: the relay can only vouch for keys it can \
                 match to the target (hashed entries say no host)",
                file.display()
            ));
        }
        Ok(lines)
    });
    Ok((address, keys_at))
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
    let work = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let target = prepare_target(args, &work)?;
    let bin = restore_bin(args)?;
    let mut names = Vec::with_capacity(args.count);
    let mut next = Some(target.first.clone());
    let segment_size = args.segment_mib.max(1) << 20;
    while names.len() < args.count {
        let Some(wal) = next else { break };
        next = wal.next_segment(segment_size);
        names.push(wal);
    }
    // The compared command runs once per -p/keep setting, right after ours.
    let on = |v: &[OnOff]| v.iter().map(|&x| x == OnOff::On).collect::<Vec<bool>>();
    let mut runs: Vec<(&str, Program, Setting)> = Vec::new();
    for link in &target.links {
        let mut ours_args = link.connection_args.clone();
        ours_args.extend([link.host.clone(), target.server.clone()]);
        let ours = Program::Ours {
            bin: bin.clone(),
            args: ours_args,
        };
        let compare = match &args.compare {
            Some(template) => Some(Program::Template(runner::expand_endpoint(
                template,
                &runner::Endpoint {
                    host: &link.connect_host,
                    port: link.connect_port,
                    identity: flag_value(&link.connection_args, "-i"),
                    known_hosts: flag_value(&link.connection_args, "--known-hosts"),
                },
            )?)),
            None => None,
        };
        for &parallel in &args.parallel {
            for keep_compression in on(&args.keep_compression) {
                let setting = Setting {
                    parallel,
                    keep_compression,
                    direct_read: false,
                    async_mode: false,
                    rtt_ms: link.rtt_ms,
                    clients: args.clients as usize,
                };
                for direct_read in on(&args.direct_read) {
                    for async_mode in on(&args.async_mode) {
                        let ours_setting = Setting {
                            direct_read,
                            async_mode,
                            ..setting
                        };
                        runs.push(("ours", ours.clone(), ours_setting));
                    }
                }
                if let Some(compare) = &compare {
                    runs.push(("compare", compare.clone(), setting));
                }
            }
        }
    }
    let total = (runs.len() * names.len() * args.clients as usize) as u64;
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

    let oracle = std::sync::Mutex::new(Oracle::default());
    let mut summaries = Vec::new();
    let replay = Duration::from_millis(args.replay_ms);
    let barman_cpu = || -> Result<Option<f64>, String> {
        args.barman_cgroup
            .as_ref()
            .map(|dir| {
                runner::cgroup_cpu_seconds(dir)
                    .map_err(|e| format!("--barman-cgroup {}: {e}", dir.display()))
            })
            .transpose()
    };
    for (label, program, setting) in &runs {
        let (label, setting) = (*label, *setting);
        bar.set_message(format!("{label} -p {}", setting.parallel));
        let before = target.embedded.as_ref().map(|b| b.stats());
        let cpu_before = barman_cpu()?;
        let run = runner::run_clients(program, &names, &work, setting, replay, &oracle, &|| {
            bar.inc(1)
        })
        .map_err(|e| format!("running {label}: {e}"))?;
        let barman_cpu_seconds = cpu_before
            .zip(barman_cpu()?)
            .map(|(before, after)| after - before);
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
        let mut summary = Summary::new(label, setting, run, server_counts);
        summary.barman_cpu_seconds = barman_cpu_seconds;
        summaries.push(summary);
    }
    bar.finish_and_clear();
    let report = BenchReport {
        target: target.description.clone(),
        first_wal: target.first.to_string(),
        count: names.len(),
        summaries,
    };
    print!("{}", export::render(&report, args.format)?);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        export::svg::write_plot(&report, path)?;
    }
    Ok(if report.bad_calls() > 0 { 1 } else { 0 })
}
