//! One restore_command call, from its resolved settings and request to
//! its exit status; talking to Barman is the [`crate::client`]'s.
//!
//! Order of work: check every argument locally (no connection for a bad
//! name); serve a spool hit with a rename and no connection at all; else
//! open one session, start the requested file at once, peek and prefetch
//! beside it, and wait for all of them (a prefetch killed by our exit would
//! be wasted work).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, output, Delivered, Fetcher, LayoutSource, Window};
use crate::config::{Config, OnFailure, Request};
use crate::error::{Error, ErrorKind};
use crate::exit::{self, RecoveryMode};
use crate::handoff::{self, Handed};
use crate::logging;
use crate::owner::{self, Claim, Claimed, Owner};
use crate::pg_control::ClusterIdentity;
use crate::spool::{self, Spool};
use crate::ssh::{SessionStats, SshTarget};
use crate::stats;
use crate::validate::LongPageHeader;
use crate::wal::{self, WalKind, WalName};

/// How many sessions a call opens for its file: a reconnect after a
/// session broke mid-transfer, once.
const SESSION_ATTEMPTS: u32 = 2;

/// What a successful call did.
#[derive(Debug)]
pub enum Outcome {
    FromSpool,
    /// The `--async` worker delivered it.
    FromWorker,
    Fetched {
        delivered: Delivered,
        prefetched: usize,
        prefetch_failed: usize,
    },
    Tested,
}

/// Runs the call and returns the exit status, printing one `ERROR:` line on
/// failure (after `--sleep` for a failure that was not local), but for
/// Barman's "not found" where it is the normal state: see
/// [`report_failure`].
pub async fn run(config: &Config, request: &Request) -> i32 {
    let stats = Arc::new(SessionStats::default());
    let cluster = cluster_here();
    crate::validate::set_data_directory(std::path::Path::new("."));
    let result = within_call_deadline(config, request, &stats, cluster.as_ref()).await;
    stats::write_call_stats(&stats);
    match result {
        Ok(outcome) => {
            report(&outcome, &stats);
            report_identity(cluster.as_ref(), &outcome);
            exit::SUCCESS
        }
        Err(failure) => {
            let mode = RecoveryMode::detect(std::path::Path::new("."));
            report_failure(&failure, mode, &request.wal_name);
            let sleep = config.on_failure.sleep;
            if !sleep.is_zero() && !failure.kind().is_local() {
                tokio::time::sleep(sleep).await;
            }
            status_of(&failure, mode, &config.on_failure, request)
        }
    }
}

/// A call whose settings were refused as they were resolved (a bad
/// SERVER_NAME or `--config`, see [`Config::from_args`]): a local failure,
/// reported as the call would have reported it, no connection made.
pub fn refused(failure: Error, on_failure: &OnFailure, request: &Request) -> i32 {
    let _ = cluster_here();
    stats::write_call_stats(&SessionStats::default());
    let mode = RecoveryMode::detect(std::path::Path::new("."));
    report_failure(&failure, mode, &request.wal_name);
    status_of(&failure, mode, on_failure, request)
}

/// The exit status for `failure` in `mode`, with the line that says why
/// recovery stops when the policy stops it.
fn status_of(
    failure: &Error,
    mode: RecoveryMode,
    on_failure: &OnFailure,
    request: &Request,
) -> i32 {
    let code = on_failure.policy.exit_code(failure, mode);
    if code == exit::ABORT_RECOVERY {
        tracing::error!(
            "stopping recovery instead of ending it early without {}: fix the cause \
             and start PostgreSQL again, recovery resumes where it stopped \
             (--on-failure=not-available would end recovery here instead)",
            request.wal_name.escape_debug()
        );
    }
    code
}

/// Says why the call failed. Barman's "not found" is no error where it is
/// the normal state: a standby waiting at the archive's head asks for the
/// next segment every few seconds (`wal_retrieve_retry_interval`), and
/// an ERROR on each ask floods PostgreSQL's log (Barman's issue #322). It
/// says so as INFO at most once per [`logging::HEAD_NOTICE_INTERVAL`]
/// across calls, remembered by the modification time of
/// [`HEAD_NOTICE_STAMP`] in the data directory (where the call runs: the
/// standby's own, and the only directory certain to exist that belongs to
/// it alone, without a spool), and as DEBUG otherwise. An archive recovery
/// ends where the archive does: that miss is INFO. A missing timeline
/// history file is what PostgreSQL probes for routinely in either mode:
/// DEBUG. Called by hand (neither mode), Barman's answer stays an ERROR.
fn report_failure(failure: &Error, mode: RecoveryMode, wal: &str) {
    if failure.kind() != ErrorKind::NotFound {
        tracing::error!("{failure}");
        return;
    }
    let message = failure.message();
    let history = WalName::parse(wal).is_ok_and(|w| w.kind() == WalKind::History);
    match mode {
        RecoveryMode::Unknown => tracing::error!("{message}"),
        _ if history => tracing::debug!("{message}"),
        RecoveryMode::ArchiveRecovery => {
            tracing::info!("{message}: the end of the archive, where this recovery ends")
        }
        RecoveryMode::Standby => {
            let interval = logging::head_notice_interval();
            let due = tracing::enabled!(tracing::Level::INFO)
                && logging::notice_due(
                    std::path::Path::new(HEAD_NOTICE_STAMP),
                    interval,
                    std::time::SystemTime::now(),
                );
            if due {
                tracing::info!(
                    "standby waiting at the archive's head for {}: {message} (said at most \
                     every {} s)",
                    wal.escape_debug(),
                    interval.as_secs()
                );
            } else {
                tracing::debug!("{message}");
            }
        }
    }
}

/// See [`report_failure`]: relative to the data directory.
pub const HEAD_NOTICE_STAMP: &str = ".bwr-head-notice";

/// The cluster PostgreSQL runs this call for: restore_command runs in its
/// data directory. A pg_control we cannot read is said, not fatal: the
/// call then checks what it checks outside a data directory.
fn cluster_here() -> Option<ClusterIdentity> {
    match ClusterIdentity::of_data_dir(std::path::Path::new(".")) {
        Ok(cluster) => cluster,
        Err(why) => {
            tracing::warn!("{why}; delivering without checking the cluster's identity");
            None
        }
    }
}

/// Whether the file was checked against the cluster (debug).
fn report_identity(cluster: Option<&ClusterIdentity>, outcome: &Outcome) {
    match (cluster, outcome) {
        (_, Outcome::Tested) => {}
        (Some(c), _) => tracing::debug!(
            "checked against this cluster's pg_control (database system {}, {} byte segments)",
            c.system_identifier,
            c.segment_size
        ),
        (None, _) => tracing::debug!(
            "no cluster identity checked: the working directory is not a data directory \
             (no readable global/pg_control)"
        ),
    }
}

/// Where a delivered file came from, for [`confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The spool, or the worker through it: a copy that may be a leftover.
    Spool,
    /// Barman, in this call.
    Barman,
}

/// The one check every delivery passes before exit 0: the segment at
/// WAL_DEST belongs to this cluster (pg_control's system identifier and
/// segment size). A foreign file is removed, and the reason returned.
/// History and backup-label files carry no identifier; outside a data
/// directory nothing is checked here.
fn confirm(
    cluster: Option<&ClusterIdentity>,
    wal: &str,
    dest: &std::path::Path,
    source: Source,
    config: &Config,
) -> Result<(), String> {
    let Some(cluster) = cluster else {
        return Ok(());
    };
    let Ok(name) = WalName::parse(wal) else {
        return Ok(());
    };
    if !matches!(name.kind(), WalKind::Segment | WalKind::Partial) {
        return Ok(());
    }
    let mut head = [0u8; 40];
    let read = std::fs::File::open(dest).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut head)
    });
    let header = read.ok().and_then(|()| LongPageHeader::parse(&head));
    let found = match header {
        Some(h) => (h.system_identifier, h.segment_size),
        // --no-verify delivers what it got; nothing to compare it with.
        None if !config.transfer.verify => return Ok(()),
        None => (0, 0),
    };
    if found == (cluster.system_identifier, cluster.segment_size) {
        return Ok(());
    }
    let _ = std::fs::remove_file(dest);
    let what = if found.0 == cluster.system_identifier {
        format!(
            "{wal} has {} byte segments, but this cluster's pg_control says {}",
            found.1, cluster.segment_size
        )
    } else {
        format!(
            "{wal} belongs to database system {}, but this cluster's pg_control says {}",
            found.0, cluster.system_identifier
        )
    };
    Err(match source {
        Source::Spool => format!(
            "{what}: a leftover of another cluster in spool {} (a spool shared between clusters?)",
            config.spool.dir.display()
        ),
        Source::Barman => format!(
            "{what}: Barman server '{}' on '{}' archives another cluster (wrong SERVER_NAME \
             in restore_command?); not delivered",
            config.server.name(),
            config.target.host
        ),
    })
}

/// A restore whose delivery is checked against the cluster. A foreign
/// file from the spool (or the worker) is removed and the file fetched
/// from Barman instead: a leftover says nothing about our archive, and
/// failing for it would stop a recovery that Barman can serve. A foreign
/// file from Barman is a failure, never delivered.
async fn restore_confirmed(
    config: &Config,
    request: &Request,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
    deadline: tokio::time::Instant,
) -> Result<Outcome, Error> {
    let mut local = true;
    loop {
        let outcome = run_restore(config, request, stats, cluster, local, deadline).await?;
        let source = match outcome {
            Outcome::FromSpool | Outcome::FromWorker => Source::Spool,
            _ => Source::Barman,
        };
        match confirm(
            cluster,
            &request.wal_name,
            &request.wal_dest,
            source,
            config,
        ) {
            Ok(()) => return Ok(outcome),
            Err(why) if source == Source::Spool && local => {
                tracing::warn!("{why}: removed it; fetching it from Barman");
                local = false;
            }
            Err(why) => return Err(Error::new(ErrorKind::ForeignCluster, why)),
        }
    }
}

/// How the call got its file (debug).
fn report(outcome: &Outcome, stats: &SessionStats) {
    let (connections, channels, refused) = stats.snapshot();
    match outcome {
        Outcome::FromSpool => tracing::debug!("served from the spool, no connection"),
        Outcome::FromWorker => tracing::debug!("delivered by the --async worker"),
        Outcome::Fetched {
            delivered,
            prefetched,
            prefetch_failed,
        } => tracing::debug!(
            "{} fetched ({} stored, {} -> {} bytes, {:.0} ms); {prefetched} prefetched, \
             {prefetch_failed} failed; {connections} connection(s), {channels} channel(s), {refused} refused",
            delivered.wal,
            delivered.format.name(),
            delivered.bytes_in,
            delivered.bytes_out,
            delivered.elapsed.as_secs_f64() * 1000.0
        ),
        Outcome::Tested => {}
    }
}

/// How long one call may take, in `--io-timeout`s, whatever happens: the
/// idle timer and the per-transfer bound each cover one wait, this covers
/// their sum (a handoff, connection attempts, a transfer, a reconnect and
/// another transfer) and anything no bound foresaw. Ten minutes by default.
pub const CALL_IO_TIMEOUTS: u32 = 10;

/// The call's deadline: see [`CALL_IO_TIMEOUTS`].
pub fn call_limit(config: &Config) -> Duration {
    config.transfer.io_timeout * CALL_IO_TIMEOUTS
}

async fn within_call_deadline(
    config: &Config,
    request: &Request,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
) -> Result<Outcome, Error> {
    let limit = call_limit(config);
    let deadline = tokio::time::Instant::now() + limit;
    let call = async {
        if request.test {
            run_test(config, request, stats).await
        } else {
            restore_confirmed(config, request, stats, cluster, deadline).await
        }
    };
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result,
        Err(_) => {
            // Transfers still running on other tasks must leave no temp
            // file behind, nor start new ones: the process exits now.
            crate::shutdown::TempRegistry::remove_all();
            Err(Error::connection(format!(
                "gave up on {} after {} s, the deadline of one call ({CALL_IO_TIMEOUTS} x \
                 --io-timeout): the Barman host answers too slowly or never finishes",
                request.wal_name.escape_debug(),
                limit.as_secs()
            )))
        }
    }
}

/// The longest `--test` answer kept: Barman's is a few lines.
const TEST_ANSWER_CAP: usize = 1 << 20;

async fn run_test(
    config: &Config,
    request: &Request,
    stats: &Arc<SessionStats>,
) -> Result<Outcome, Error> {
    let target = Arc::new(SshTarget::resolve(&config.connect_options())?);
    let session =
        client::connect_with_retries(target, stats.clone(), client::CONNECT_ATTEMPTS).await?;
    // What we resolved and whom we reached, on stderr: stdout stays Barman's answer.
    tracing::info!(
        "{}",
        session.target().describe(session.host_key_fingerprint())
    );
    let answer = async {
        let test = config.server.test(&request.wal_name);
        let exec = session.exec(&test).await.map_err(|e| match e {
            crate::ssh::OpenError::Failed(f) => f,
            crate::ssh::OpenError::Refused => Error::connection("the server refused a channel"),
        })?;
        output::read(exec, TEST_ANSWER_CAP, output::Beyond::Drop, None).await
    }
    .await;
    session.close().await;
    let answer = answer?;
    std::io::stdout().write_all(&answer.stdout).ok();
    std::io::stderr().write_all(&answer.exit.stderr).ok();
    if answer.exit.status == Some(0) {
        Ok(Outcome::Tested)
    } else {
        Err(answer.exit.into_failure("barman get-wal --test"))
    }
}

/// The spool to use, if any. With `-p 0` an existing spool is still served
/// from (as the original does) but never created, and one we could not
/// trust is ignored rather than fatal, since nothing needs it. A spool
/// that another caller identity holds is not used at all (see
/// [`crate::owner`]).
fn open_spool(config: &Config, me: &Owner) -> Result<Option<(Spool, Claim)>, Error> {
    let spool = if config.spool.own {
        Spool::open(&config.spool.dir)?
    } else if config.spool.dir.is_dir() {
        match Spool::open(&config.spool.dir) {
            Ok(spool) => spool,
            Err(_) => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    match owner::claim(&spool, me, config.spool.own) {
        Ok(Claimed::Ours(claim)) => Ok(Some((spool, claim))),
        Ok(Claimed::Held(other)) => {
            tracing::debug!(
                "spool {} holds the files of another caller ({other}); working without it",
                config.spool.dir.display()
            );
            Ok(None)
        }
        Err(e) if config.spool.own => Err(Error::io(
            format!("spool {}: cannot claim it: {e}", config.spool.dir.display()),
            e,
        )),
        Err(_) => Ok(None),
    }
}

/// What every call checks before anything else, no connection involved.
struct Checked {
    wal: WalName,
    dest: std::path::PathBuf,
    spool: Option<Spool>,
    /// Held while the call uses the spool.
    _claim: Option<Claim>,
}

fn check_locally(
    config: &Config,
    request: &Request,
    cluster: Option<&ClusterIdentity>,
) -> Result<Checked, Error> {
    let wal = WalName::parse(&request.wal_name).map_err(|e| Error::invalid_input(e.to_string()))?;
    let dest = request.wal_dest.clone();
    spool::check_destination(&dest)?;
    // Leftovers of a killed run beside WAL_DEST go with the next call, hit
    // or miss (a read_dir of pg_wal: tens of microseconds).
    spool::remove_dead_temp_files(spool::parent_dir(&dest));
    let (spool, claim) = open_spool(config, &Owner::of(config, cluster))?.unzip();
    Ok(Checked {
        wal,
        dest,
        spool,
        _claim: claim,
    })
}

/// History files are always asked of Barman: a timeline may have appeared
/// since any earlier run.
fn take_from_spool(checked: &Checked) -> Result<bool, Error> {
    match &checked.spool {
        Some(spool) if checked.wal.kind() != WalKind::History => {
            spool.take(&checked.wal, &checked.dest)
        }
        _ => Ok(false),
    }
}

/// The spool-hit fast path, before any async runtime exists: a hit is a
/// rename and should cost little more than the process start. `None` when
/// the call needs more (a miss, `--test`, or a problem that the full path
/// reports).
pub fn serve_from_spool(config: &Config, request: &Request) -> Option<i32> {
    if request.test {
        return None;
    }
    let cluster = ClusterIdentity::of_data_dir(std::path::Path::new("."))
        .ok()
        .flatten();
    let checked = check_locally(config, request, cluster.as_ref()).ok()?;
    if !take_from_spool(&checked).ok()? {
        return None;
    }
    if let Err(why) = confirm(
        cluster.as_ref(),
        &request.wal_name,
        &request.wal_dest,
        Source::Spool,
        config,
    ) {
        // The full path fetches it from Barman.
        tracing::warn!("{why}: removed it; fetching it from Barman");
        return None;
    }
    stats::write_call_stats(&SessionStats::default());
    report(&Outcome::FromSpool, &SessionStats::default());
    report_identity(cluster.as_ref(), &Outcome::FromSpool);
    Some(exit::SUCCESS)
}

/// One attempt: the spool, the worker, then Barman; with `local` false,
/// Barman alone.
async fn run_restore(
    config: &Config,
    request: &Request,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
    local: bool,
    deadline: tokio::time::Instant,
) -> Result<Outcome, Error> {
    let checked = check_locally(config, request, cluster)?;
    if checked.wal.kind() == WalKind::History && checked.wal.timeline() == 1 {
        // PostgreSQL writes a history file only when it creates a timeline,
        // and timeline 1 is never created that way: no archive has this
        // file. PostgreSQL still asks for it at the end of every archive
        // recovery from timeline 1; answering here saves a connection and a
        // Barman start-up on that critical path.
        return Err(Error::not_found(format!(
            "WAL file '{}' cannot exist: timeline 1 has no history file",
            checked.wal
        )));
    }
    if local && take_from_spool(&checked)? {
        return Ok(Outcome::FromSpool);
    }
    let Checked {
        wal,
        dest,
        spool,
        _claim,
    } = checked;

    // History files stay direct, and never wait for a show-server. With
    // --async, PostgreSQL asks for them just before a recovery's first
    // segments: a worker started now connects and learns the layout while
    // this call runs, and is ready when the first segment is asked for.
    let layout = if wal.kind() == WalKind::History {
        if let (true, Some(spool)) = (config.background.enabled, &spool) {
            // PostgreSQL runs restore_command in its data directory.
            let first = std::fs::read_to_string("backup_label")
                .ok()
                .and_then(|label| wal::backup_label_start(&label));
            handoff::start_worker_unless_running(spool, config, first.as_ref());
        }
        LayoutSource::CacheOnly
    } else {
        LayoutSource::CacheOrBarman
    };
    if config.background.enabled && wal.is_segment() && local {
        if let Some(spool) = &spool {
            let timeout = config.transfer.io_timeout;
            match handoff::ask_worker(spool, config, &wal, &dest, timeout).await? {
                Handed::Delivered => return Ok(Outcome::FromWorker),
                // With -P, the partial file of a missing segment is a direct fetch's job.
                Handed::Missing(message) if !config.transfer.partial => {
                    return Err(Error::not_found(message))
                }
                Handed::Missing(_) => {}
                Handed::Unanswered(why) => {
                    tracing::debug!("{why}; fetching {wal} without the worker");
                }
            }
        } else {
            tracing::debug!(
                "--async needs a spool of this caller's own (-p 1 or more); fetching directly"
            );
        }
    }
    // What PostgreSQL has moved past goes (with --async, the worker does
    // this, and keeps what it knows PostgreSQL will read again).
    if let (Some(spool), false) = (&spool, config.background.enabled) {
        spool.purge_stale(&wal, None);
    }

    let target = Arc::new(SshTarget::resolve(&config.connect_options())?);
    let mut session_attempt = 1;
    let mut broke: Option<Error> = None;
    loop {
        // The first connection gets the bounded retries; a reconnect after a
        // session that broke or stalled mid-transfer gets one try, so a hung
        // host costs --io-timeout plus one --connect-timeout, not three.
        let attempts = if broke.is_some() {
            1
        } else {
            client::CONNECT_ATTEMPTS
        };
        let connected = client::connect(config, &target, spool.as_ref(), stats, attempts, layout);
        let fetcher = match connected.await {
            Ok(fetcher) => fetcher,
            // Say what broke first: the reconnect's own failure alone would
            // hide that a transfer was cut.
            Err(again) => {
                return Err(match broke {
                    Some(first) => Error::connection(format!(
                        "{}; reconnecting failed: {}",
                        first.message(),
                        again.message()
                    ))
                    .with_source(again),
                    None => again,
                })
            }
        };
        // A delivered file is not given up for prefetches still running:
        // they get nine tenths of the call's time.
        let prefetch_deadline = deadline - call_limit(config) / 10;
        let result = fetch_with_prefetch(
            &fetcher,
            &wal,
            &dest,
            spool.as_ref(),
            config.transfer.parallel,
            prefetch_deadline,
        )
        .await;
        fetcher.session().close().await;
        match result {
            Err(failure) if failure.is_transient() && session_attempt < SESSION_ATTEMPTS => {
                tracing::debug!("{failure}; reconnecting");
                session_attempt += 1;
                broke = Some(failure);
            }
            other => return other,
        }
    }
}

/// The requested file and, with `-p N`, the next N-1 ones, on one session.
async fn fetch_with_prefetch(
    fetcher: &Arc<Fetcher>,
    wal: &WalName,
    dest: &std::path::Path,
    spool: Option<&Spool>,
    parallel: usize,
    prefetch_deadline: tokio::time::Instant,
) -> Result<Outcome, Error> {
    let requested = {
        let fetcher = fetcher.clone();
        let wal = wal.clone();
        let dest = dest.to_path_buf();
        tokio::spawn(async move { fetcher.transfer_requested(&wal, &dest).await })
    };
    let prefetch = match spool {
        Some(spool) if parallel > 1 && wal.is_segment() => {
            let fetcher = fetcher.clone();
            let wal = wal.clone();
            let spool = spool.clone();
            Some(tokio::spawn(async move {
                let window = Window::for_call(parallel);
                // The spool's copy of an earlier peek, when it reaches far
                // enough past this segment, saves a peek.
                let listing: Vec<WalName> = match spool.known_after(&wal, window.size()) {
                    Some(known) => std::iter::once(wal.clone()).chain(known).collect(),
                    None => {
                        // The prefetches' channels open while the peek is
                        // answered: each then starts in one round trip.
                        fetcher.expect_commands(1 + window.size());
                        match fetcher.peek(&wal, window.peek_size()).await {
                            Ok(names) => {
                                let listing = window.listing(&wal, names);
                                spool.remember_listing(&listing);
                                listing
                            }
                            Err(failure) => {
                                fetcher.expect_commands(0);
                                return (0, vec![failure]);
                            }
                        }
                    }
                };
                let names = window.ahead(&listing, &wal, |n| spool.contains(n));
                let results = fetcher
                    .prefetch(
                        names,
                        &spool,
                        (parallel - 1).min(fetcher.stream_limit() - 1),
                    )
                    .await;
                let delivered = results.iter().filter(|r| r.is_ok()).count();
                let failures = results
                    .into_iter()
                    .filter_map(|r| {
                        r.err()
                            .map(|(wal, f)| f.context(format_args!("prefetch of {wal}")))
                    })
                    .collect();
                (delivered, failures)
            }))
        }
        _ => None,
    };
    let result = match requested.await {
        Ok(result) => result,
        Err(e) => Err(Error::local(format!("transfer task failed: {e}"))),
    };
    if result.as_ref().is_err_and(|f| f.is_transient()) {
        if let Some(task) = &prefetch {
            task.abort();
        }
    }
    let (prefetched, prefetch_failures) = match prefetch {
        Some(mut task) => match tokio::time::timeout_at(prefetch_deadline, &mut task).await {
            Ok(done) => done.unwrap_or_default(),
            Err(_) => {
                task.abort();
                // Its transfers run on tasks of their own: their temp files
                // go now, and no new one starts before the process exits.
                crate::shutdown::TempRegistry::remove_all();
                let late = Error::connection(
                    "prefetches still running at the call's deadline were abandoned".to_string(),
                );
                (0, vec![late])
            }
        },
        None => (0, Vec::new()),
    };
    for failure in &prefetch_failures {
        tracing::debug!("{failure}");
    }
    // The requested file comes first: if prefetched segments filled the
    // disk it shares with them, drop them and try once more.
    let result = match (result, spool) {
        (Err(failure), Some(spool))
            if failure.kind() == ErrorKind::DiskFull && spool.evict_prefetched(wal) > 0 =>
        {
            tracing::debug!("{failure}; dropped prefetched files to make room");
            fetcher.transfer_requested(wal, dest).await
        }
        (result, _) => result,
    };
    let delivered = result?;
    Ok(Outcome::Fetched {
        delivered,
        prefetched,
        prefetch_failed: prefetch_failures.len(),
    })
}
