//! Real-stack integration tests: our `barman-wal-restore` against a real OpenSSH sshd, Barman 3.19
//! (one config per archive compression, each with server `angus`) and PostgreSQL 15, all on
//! 127.0.0.1, built by `fixtures/real-stack/stack.sh` once for all trials and torn down at the end
//! (a watchdog in the stack tears it down too if this process dies).
//!
//! Needs root, /usr/sbin/sshd, PostgreSQL 15 and the Barman venv (`scripts/install-test-deps.sh`).
//! Environment:
//! - `CI=true` or `BWR_REAL_STACK=require`: a missing prerequisite fails every trial.
//! - otherwise a missing prerequisite skips every trial (reported as ignored, with a loud message);
//!   `BWR_REAL_STACK=skip` skips on purpose (never under CI).
//! - `BWR_KEEP_STACK=1`: keep the stack directory (logs, archives, clusters) after the run.
//! - `BWR_BARMAN_VENV`: Barman venv (default /opt/bwr-test/barman-venv).
//! - `BWR_STACK_BASE`: where the stack directory is made (default /tmp; must be reachable by
//!   the users postgres and barman).
//! - `BWR_STACK_DIR=DIR`: use a stack already up (`stack.sh up DIR`) and leave it up.
//! - `BWR_TIMINGS=1`: print every trial's duration at the end (default: the 8 slowest).
//!
//! Runs with `harness = false` (libtest-mimic): `cargo test --test real_stack -- FILTER`.
//!
//! Layout: this file holds the trial list and the stack's lifetime; `real_stack/` the harness
//! (`stack`, `run`, `checks`, `sequence`, `cluster`, `sshd`, over `tests/common`) and one module
//! per concern of the trials (`postgres`, `fault`, `identity`, `fetch`, `direct`, `oracle`,
//! `cli`, `partial`, `walk`, `timeline`, `ssh`, `ssh_config`, `logging`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Trial};

mod common;

#[path = "real_stack/checks.rs"]
mod checks;
#[path = "real_stack/cluster.rs"]
mod cluster;
#[path = "real_stack/debian_barman.rs"]
mod debian_barman;
#[path = "real_stack/run.rs"]
mod run;
#[path = "real_stack/sequence.rs"]
mod sequence;
#[path = "real_stack/sshd.rs"]
mod sshd;
#[path = "real_stack/stack.rs"]
mod stack;

#[path = "real_stack/cli.rs"]
mod cli;
#[path = "real_stack/direct.rs"]
mod direct;
#[path = "real_stack/fault.rs"]
mod fault;
#[path = "real_stack/fetch.rs"]
mod fetch;
#[path = "real_stack/identity.rs"]
mod identity;
#[path = "real_stack/logging.rs"]
mod logging;
#[path = "real_stack/oracle.rs"]
mod oracle;
#[path = "real_stack/partial.rs"]
mod partial;
#[path = "real_stack/postgres.rs"]
mod postgres;
#[path = "real_stack/ssh.rs"]
mod ssh;
#[path = "real_stack/ssh_config.rs"]
mod ssh_config;
#[path = "real_stack/timeline.rs"]
mod timeline;
#[path = "real_stack/walk.rs"]
mod walk;

use run::{fail, TestResult};
use stack::{missing_prerequisites, Stack};

/// A trial: its name as CI reports it, and its body.
pub struct Named {
    name: String,
    body: Box<dyn FnOnce(&Stack) -> TestResult + Send>,
}

impl Named {
    pub fn new(name: &str, body: fn(&Stack) -> TestResult) -> Named {
        Named::with(name.to_string(), body)
    }

    /// A trial of a family (`fetch::zstd::p8`): its body calls the family's function with the
    /// trial's parameters.
    pub fn with(name: String, body: impl FnOnce(&Stack) -> TestResult + Send + 'static) -> Named {
        Named {
            name,
            body: Box::new(body),
        }
    }
}

/// Every trial, in the order they start (the longest first).
fn trials() -> Vec<Named> {
    let mut list = vec![
        // PostgreSQL 15 with restore_command = our binary, and faults injected into the real
        // sshd and into our binary.
        Named::new(
            "postgres::pitr_stops_when_barman_unreachable_then_resumes",
            postgres::pitr_stops_when_barman_unreachable_then_resumes,
        ),
        Named::new(
            "fault::sigkill_during_p8_fetch",
            fault::sigkill_during_p8_fetch,
        ),
        Named::new(
            "fault::sshd_killed_mid_stream",
            fault::sshd_killed_mid_stream,
        ),
        Named::new(
            "fault::sshd_stalled_mid_stream",
            fault::sshd_stalled_mid_stream,
        ),
        Named::new(
            "fault::sshd_session_stalled_reconnects",
            fault::sshd_session_stalled_reconnects,
        ),
        Named::new(
            "postgres::standby_p8_keep_compression",
            postgres::standby_p8_keep_compression,
        ),
        Named::new(
            "postgres::archive_recovery_async_p8",
            postgres::archive_recovery_async_p8,
        ),
        Named::new(
            "postgres::standby_async_direct_read",
            postgres::standby_async_direct_read,
        ),
        Named::new(
            "identity::pitr_naming_another_clusters_server_stops_then_recovers",
            identity::pitr_naming_another_clusters_server_stops_then_recovers,
        ),
        Named::new(
            "identity::two_standbys_share_one_async_spool",
            identity::two_standbys_share_one_async_spool,
        ),
        Named::new("postgres::standby_plain", postgres::standby_plain),
        Named::new(
            "postgres::pitr_to_restore_point",
            postgres::pitr_to_restore_point,
        ),
        Named::new(
            "postgres::archive_recovery_to_end",
            postgres::archive_recovery_to_end,
        ),
        Named::new(
            "postgres::archive_recovery_direct_read_p8",
            postgres::archive_recovery_direct_read_p8,
        ),
        Named::new(
            "postgres::recovery_follows_timeline_switch",
            postgres::recovery_follows_timeline_switch,
        ),
    ];
    list.extend(fetch::compression_matrix());
    list.extend(direct::compression_matrix());
    list.extend([
        Named::new("direct::incoming_segment", direct::incoming_segment),
        Named::new("direct::timeline_history_p8", direct::timeline_history_p8),
        Named::new(
            "direct::restricted_account_falls_back",
            direct::restricted_account_falls_back,
        ),
    ]);
    list.extend(oracle::compression_matrix());
    list.extend(debian_barman::trials());
    list.extend(fetch::server_recompress_trials());
    list.extend([
        Named::new("cli::test_flag", cli::test_flag),
        Named::new("cli::unknown_server_exits_1", cli::unknown_server_exits_1),
        Named::new("cli::missing_wal_exits_1", cli::missing_wal_exits_1),
        Named::new(
            "cli::wal_dest_is_directory_exits_3",
            cli::wal_dest_is_directory_exits_3,
        ),
        Named::new("fetch::backup_label_file", fetch::backup_label_file),
    ]);
    list.extend(partial::trials());
    list.push(Named::new("walk::segment_kinds", walk::segment_kinds));
    list.extend(timeline::trials());
    list.extend([
        Named::new("ssh::config_file_alias", ssh::config_file_alias),
        Named::new(
            "ssh::unknown_host_key_exits_2",
            ssh::unknown_host_key_exits_2,
        ),
        Named::new("ssh::sshd_stopped_exits_2", ssh::sshd_stopped_exits_2),
    ]);
    list.extend(ssh_config::trials());
    list.extend(logging::trials());
    list
}

// ------------------------------------------------------------------------------------------------
// The stack's lifetime

fn env_is(name: &str, values: &[&str]) -> bool {
    std::env::var(name)
        .map(|v| values.contains(&v.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn required() -> bool {
    env_is("CI", &["true", "1", "yes"]) || env_is("BWR_REAL_STACK", &["require", "required", "1"])
}

/// One stack for all trials, built by the first trial that runs.
struct Shared {
    cell: OnceLock<Result<Stack, String>>,
    skip: Option<String>,
    timings: Mutex<Vec<(Duration, String)>>,
}

impl Shared {
    fn stack(&self) -> Result<&Stack, libtest_mimic::Failed> {
        match self.cell.get_or_init(Stack::up) {
            Ok(s) => Ok(s),
            Err(e) => Err(fail(format!("real stack unavailable: {e}"))),
        }
    }

    /// `named` as a libtest-mimic trial on the shared stack (ignored when the suite is skipped).
    fn trial(self: &Arc<Shared>, named: Named) -> Trial {
        let shared = Arc::clone(self);
        let Named { name, body } = named;
        let trial_name = name.clone();
        Trial::ignorable_test(name, move || {
            if let Some(reason) = &shared.skip {
                return Ok(Completion::ignored_with(reason.clone()));
            }
            let st = shared.stack()?;
            let start = Instant::now();
            let r = body(st).map(|()| Completion::Completed);
            if let Ok(mut t) = shared.timings.lock() {
                t.push((start.elapsed(), trial_name));
            }
            r
        })
    }
}

fn main() {
    let args = Arguments::from_args();
    let missing = missing_prerequisites();
    let mut skip = None;
    if env_is("BWR_REAL_STACK", &["skip", "0", "off"]) && !required() {
        skip = Some("BWR_REAL_STACK=skip".to_string());
    } else if !missing.is_empty() {
        let msg = format!(
            "real-stack prerequisites missing: {} (run scripts/install-test-deps.sh as root, or scripts/test.sh)",
            missing.join(", ")
        );
        if required() {
            eprintln!("ERROR: {msg}");
        } else {
            eprintln!(
                "\n************************************************************\n\
                       SKIPPING the real-stack tests: {msg}\n\
                       (set CI=true or BWR_REAL_STACK=require to make this a failure)\n\
                       ************************************************************\n"
            );
            skip = Some(msg);
        }
    }
    let shared = Arc::new(Shared {
        cell: OnceLock::new(),
        skip,
        timings: Default::default(),
    });
    if shared.skip.is_none() && !missing.is_empty() {
        // required and missing: every trial fails with the reason (the stack is never attempted)
        let _ = shared.cell.set(Err(format!(
            "prerequisites missing: {}",
            missing.join(", ")
        )));
    }
    let trials = trials().into_iter().map(|t| shared.trial(t)).collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(stack)) = shared.cell.get() {
        stack.teardown();
    }
    if let Ok(mut t) = shared.timings.lock() {
        if !t.is_empty() {
            t.sort_by_key(|e| std::cmp::Reverse(e.0));
            let total: Duration = t.iter().map(|x| x.0).sum();
            let n = if env_is("BWR_TIMINGS", &["1", "all"]) {
                t.len()
            } else {
                8
            };
            let top: Vec<String> = t
                .iter()
                .take(n)
                .map(|(d, n)| format!("{n} {d:.1?}"))
                .collect();
            eprintln!(
                "real_stack: {} trials took {total:.1?} in all; slowest: {}",
                t.len(),
                top.join(", ")
            );
        }
    }
    conclusion.exit();
}
