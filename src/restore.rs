//! One restore_command call, from arguments to exit status.
//!
//! Order of work: check every argument locally (no connection for a bad
//! name); serve a spool hit with a rename and no connection at all; else
//! open one session, start the requested file at once, peek and prefetch
//! beside it, and wait for all of them (a prefetch killed by our exit would
//! be wasted work).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::RestoreArgs;
use crate::direct;
use crate::exit::{self, Failure, RecoveryMode};
use crate::fetch::{Delivered, FetchOptions, Fetcher};
use crate::handoff::{self, Handed};
use crate::logging;
use crate::owner::{self, Claim, Claimed, Owner};
use crate::pg_control::ClusterIdentity;
use crate::remote::BarmanServer;
use crate::spool::{self, Spool};
use crate::ssh::{Session, SessionStats, SshTarget};
use crate::validate::LongPageHeader;
use crate::wal::{self, WalKind, WalName};

/// How many times a call tries to connect before it reports a connection
/// failure (a reconnect after a session broke mid-transfer tries once).
pub(crate) const CONNECT_ATTEMPTS: u32 = 3;
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
pub async fn run(args: &RestoreArgs) -> i32 {
    let stats = Arc::new(SessionStats::default());
    let cluster = cluster_here();
    crate::validate::set_data_directory(std::path::Path::new("."));
    let result = within_call_deadline(args, &stats, cluster.as_ref()).await;
    write_stats(&stats);
    match result {
        Ok(outcome) => {
            report(&outcome, &stats);
            report_identity(cluster.as_ref(), &outcome);
            exit::SUCCESS
        }
        Err(failure) => {
            let mode = RecoveryMode::detect(std::path::Path::new("."));
            report_failure(&failure, mode, &args.wal_name);
            if args.sleep > 0 && !matches!(failure, Failure::Local(_)) {
                tokio::time::sleep(Duration::from_secs(args.sleep)).await;
            }
            let code = args.on_failure.exit_code(&failure, mode);
            if code == exit::ABORT_RECOVERY {
                tracing::error!(
                    "stopping recovery instead of ending it early without {}: fix the cause \
                     and start PostgreSQL again, recovery resumes where it stopped \
                     (--on-failure=not-available would end recovery here instead)",
                    args.wal_name.escape_debug()
                );
            }
            code
        }
    }
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
fn report_failure(failure: &Failure, mode: RecoveryMode, wal: &str) {
    let Failure::NotFound(message) = failure else {
        tracing::error!("{failure}");
        return;
    };
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
    args: &RestoreArgs,
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
        None if args.no_verify => return Ok(()),
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
            args.spool_dir.display()
        ),
        Source::Barman => format!(
            "{what}: Barman server '{}' on '{}' archives another cluster (wrong SERVER_NAME \
             in restore_command?); not delivered",
            args.server_name, args.barman_host
        ),
    })
}

/// A restore whose delivery is checked against the cluster. A foreign
/// file from the spool (or the worker) is removed and the file fetched
/// from Barman instead: a leftover says nothing about our archive, and
/// failing for it would stop a recovery that Barman can serve. A foreign
/// file from Barman is a failure, never delivered.
async fn restore_confirmed(
    args: &RestoreArgs,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
    deadline: tokio::time::Instant,
) -> Result<Outcome, Failure> {
    let mut local = true;
    loop {
        let outcome = run_restore(args, stats, cluster, local, deadline).await?;
        let source = match outcome {
            Outcome::FromSpool | Outcome::FromWorker => Source::Spool,
            _ => Source::Barman,
        };
        match confirm(cluster, &args.wal_name, &args.wal_dest, source, args) {
            Ok(()) => return Ok(outcome),
            Err(why) if source == Source::Spool && local => {
                tracing::warn!("{why}: removed it; fetching it from Barman");
                local = false;
            }
            Err(why) => return Err(Failure::BadPayload(why)),
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

/// For benchmarks: `BARMAN_WAL_RESTORE_STATS=FILE` appends
/// `connections channels refused peak_rss_kib` of this call to FILE. The
/// peak RSS is read here because a parent's `wait4` may count memory of
/// the parent copied before `exec`.
fn write_stats(stats: &SessionStats) {
    let Some(path) = std::env::var_os("BARMAN_WAL_RESTORE_STATS") else {
        return;
    };
    let (connections, channels, refused) = stats.snapshot();
    let peak_rss_kib = peak_rss_kib();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{connections} {channels} {refused} {peak_rss_kib}");
    }
}

/// This process's peak resident set size, in KiB.
pub(crate) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// How long one call may take, in `--io-timeout`s, whatever happens: the
/// idle timer and the per-transfer bound each cover one wait, this covers
/// their sum (a handoff, connection attempts, a transfer, a reconnect and
/// another transfer) and anything no bound foresaw. Ten minutes by default.
pub const CALL_IO_TIMEOUTS: u32 = 10;

/// The call's deadline: see [`CALL_IO_TIMEOUTS`].
pub fn call_limit(args: &RestoreArgs) -> Duration {
    Duration::from_secs(args.connection.io_timeout.max(1)) * CALL_IO_TIMEOUTS
}

async fn within_call_deadline(
    args: &RestoreArgs,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
) -> Result<Outcome, Failure> {
    let limit = call_limit(args);
    let deadline = tokio::time::Instant::now() + limit;
    let call = async {
        if args.test {
            run_test(args, stats).await
        } else {
            restore_confirmed(args, stats, cluster, deadline).await
        }
    };
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result,
        Err(_) => {
            // Transfers still running on other tasks must leave no temp
            // file behind, nor start new ones: the process exits now.
            crate::shutdown::TempRegistry::remove_all();
            Err(Failure::Connection(format!(
                "gave up on {} after {} s, the deadline of one call ({CALL_IO_TIMEOUTS} x \
                 --io-timeout): the Barman host answers too slowly or never finishes",
                args.wal_name.escape_debug(),
                limit.as_secs()
            )))
        }
    }
}

async fn run_test(args: &RestoreArgs, stats: &Arc<SessionStats>) -> Result<Outcome, Failure> {
    let server = BarmanServer::new(&args.server_name, args.connection.config.as_deref())?;
    let target = Arc::new(SshTarget::resolve(
        &args.connection.connect_options(&args.barman_host),
    )?);
    let session = Session::connect_with_retries(target, stats.clone(), CONNECT_ATTEMPTS).await?;
    // What we resolved and whom we reached, on stderr: stdout stays Barman's answer.
    tracing::info!(
        "{}",
        session.target().describe(session.host_key_fingerprint())
    );
    let result = session.run(&server.test(&args.wal_name)).await;
    session.close().await;
    let (stdout, exit) = result.map_err(|e| match e {
        crate::ssh::OpenError::Failed(f) => f,
        crate::ssh::OpenError::Refused => {
            Failure::Connection("the server refused a channel".into())
        }
    })?;
    std::io::stdout().write_all(&stdout).ok();
    std::io::stderr().write_all(&exit.stderr).ok();
    if exit.status == Some(0) {
        Ok(Outcome::Tested)
    } else {
        Err(exit.into_failure("barman get-wal --test"))
    }
}

/// The spool to use, if any. With `-p 0` an existing spool is still served
/// from (as the original does) but never created, and one we could not
/// trust is ignored rather than fatal, since nothing needs it. A spool
/// that another caller identity holds is not used at all (see
/// [`crate::owner`]).
fn open_spool(args: &RestoreArgs, me: &Owner) -> Result<Option<(Spool, Claim)>, Failure> {
    let spool = if args.parallel > 0 {
        Spool::open(&args.spool_dir)?
    } else if args.spool_dir.is_dir() {
        match Spool::open(&args.spool_dir) {
            Ok(spool) => spool,
            Err(_) => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    match owner::claim(&spool, me, args.parallel > 0) {
        Ok(Claimed::Ours(claim)) => Ok(Some((spool, claim))),
        Ok(Claimed::Held(other)) => {
            tracing::debug!(
                "spool {} holds the files of another caller ({other}); working without it",
                args.spool_dir.display()
            );
            Ok(None)
        }
        Err(e) if args.parallel > 0 => Err(Failure::Local(format!(
            "spool {}: cannot claim it: {e}",
            args.spool_dir.display()
        ))),
        Err(_) => Ok(None),
    }
}

/// What every call checks before anything else, no connection involved.
struct Checked {
    wal: WalName,
    server: BarmanServer,
    dest: std::path::PathBuf,
    spool: Option<Spool>,
    /// Held while the call uses the spool.
    _claim: Option<Claim>,
}

fn check_locally(
    args: &RestoreArgs,
    cluster: Option<&ClusterIdentity>,
) -> Result<Checked, Failure> {
    let wal = WalName::parse(&args.wal_name).map_err(|e| Failure::Local(e.to_string()))?;
    let server = BarmanServer::new(&args.server_name, args.connection.config.as_deref())?;
    let dest = args.wal_dest.clone();
    spool::check_destination(&dest)?;
    // Leftovers of a killed run beside WAL_DEST go with the next call, hit
    // or miss (a read_dir of pg_wal: tens of microseconds).
    spool::remove_dead_temp_files(spool::parent_dir(&dest));
    let (spool, claim) = open_spool(args, &Owner::of(args, cluster))?.unzip();
    Ok(Checked {
        wal,
        server,
        dest,
        spool,
        _claim: claim,
    })
}

/// History files are always asked of Barman: a timeline may have appeared
/// since any earlier run.
fn take_from_spool(checked: &Checked) -> Result<bool, Failure> {
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
pub fn serve_from_spool(args: &RestoreArgs) -> Option<i32> {
    if args.test {
        return None;
    }
    let cluster = ClusterIdentity::of_data_dir(std::path::Path::new("."))
        .ok()
        .flatten();
    let checked = check_locally(args, cluster.as_ref()).ok()?;
    if !take_from_spool(&checked).ok()? {
        return None;
    }
    if let Err(why) = confirm(
        cluster.as_ref(),
        &args.wal_name,
        &args.wal_dest,
        Source::Spool,
        args,
    ) {
        // The full path fetches it from Barman.
        tracing::warn!("{why}: removed it; fetching it from Barman");
        return None;
    }
    write_stats(&SessionStats::default());
    report(&Outcome::FromSpool, &SessionStats::default());
    report_identity(cluster.as_ref(), &Outcome::FromSpool);
    Some(exit::SUCCESS)
}

/// One attempt: the spool, the worker, then Barman; with `local` false,
/// Barman alone.
async fn run_restore(
    args: &RestoreArgs,
    stats: &Arc<SessionStats>,
    cluster: Option<&ClusterIdentity>,
    local: bool,
    deadline: tokio::time::Instant,
) -> Result<Outcome, Failure> {
    let checked = check_locally(args, cluster)?;
    if checked.wal.kind() == WalKind::History && checked.wal.timeline() == 1 {
        // PostgreSQL writes a history file only when it creates a timeline,
        // and timeline 1 is never created that way: no archive has this
        // file. PostgreSQL still asks for it at the end of every archive
        // recovery from timeline 1; answering here saves a connection and a
        // Barman start-up on that critical path.
        return Err(Failure::NotFound(format!(
            "WAL file '{}' cannot exist: timeline 1 has no history file",
            checked.wal
        )));
    }
    if local && take_from_spool(&checked)? {
        return Ok(Outcome::FromSpool);
    }
    let Checked {
        wal,
        server,
        dest,
        spool,
        _claim,
    } = checked;

    // History files stay direct, and never wait for a show-server. With
    // --async, PostgreSQL asks for them just before a recovery's first
    // segments: a worker started now connects and learns the layout while
    // this call runs, and is ready when the first segment is asked for.
    let layout = if wal.kind() == WalKind::History {
        if let (true, Some(spool)) = (args.async_prefetch, &spool) {
            // PostgreSQL runs restore_command in its data directory.
            let first = std::fs::read_to_string("backup_label")
                .ok()
                .and_then(|label| wal::backup_label_start(&label));
            handoff::start_worker_unless_running(spool, first.as_ref());
        }
        LayoutSource::CacheOnly
    } else {
        LayoutSource::CacheOrBarman
    };
    if args.async_prefetch && wal.is_segment() && local {
        if let Some(spool) = &spool {
            let timeout = Duration::from_secs(args.connection.io_timeout.max(1));
            match handoff::ask_worker(spool, &wal, &dest, timeout).await? {
                Handed::Delivered => return Ok(Outcome::FromWorker),
                // With -P, the partial file of a missing segment is a direct fetch's job.
                Handed::Missing(message) if !args.partial => {
                    return Err(Failure::NotFound(message))
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
    if let (Some(spool), false) = (&spool, args.async_prefetch) {
        spool.purge_stale(&wal, None);
    }

    let target = Arc::new(SshTarget::resolve(
        &args.connection.connect_options(&args.barman_host),
    )?);
    let mut session_attempt = 1;
    let mut broke: Option<Failure> = None;
    loop {
        // The first connection gets the bounded retries; a reconnect after a
        // session that broke or stalled mid-transfer gets one try, so a hung
        // host costs --io-timeout plus one --connect-timeout, not three.
        let attempts = if broke.is_some() { 1 } else { CONNECT_ATTEMPTS };
        let connected = connect(
            args,
            &target,
            &server,
            spool.as_ref(),
            stats,
            attempts,
            layout,
        );
        let fetcher = match connected.await {
            Ok(fetcher) => fetcher,
            // Say what broke first: the reconnect's own failure alone would
            // hide that a transfer was cut.
            Err(again) => {
                return Err(match broke {
                    Some(first) => Failure::Connection(format!(
                        "{}; reconnecting failed: {}",
                        first.message(),
                        again.message()
                    )),
                    None => again,
                })
            }
        };
        // A delivered file is not given up for prefetches still running:
        // they get nine tenths of the call's time.
        let prefetch_deadline = deadline - call_limit(args) / 10;
        let result = fetch_with_prefetch(
            &fetcher,
            &wal,
            &dest,
            spool.as_ref(),
            args.parallel,
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

/// How this call's files are asked for and checked.
fn fetch_options(args: &RestoreArgs) -> FetchOptions {
    let (transfer, auto_keep) = args.transfer();
    FetchOptions {
        transfer,
        auto_keep,
        partial: args.partial,
        verify: !args.no_verify,
    }
}

/// Where a connection may learn the archive layout for `--direct-read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayoutSource {
    /// The spool's cache, else `barman show-server`.
    CacheOrBarman,
    /// The spool's cache only: for one small file, a `show-server` costs
    /// the same Barman start-up as the `get-wal` it would save.
    CacheOnly,
}

/// One session and a fetcher on it, with the archive layout learnt when
/// `--direct-read` asks for it (the spool caches that answer).
pub(crate) async fn connect(
    args: &RestoreArgs,
    target: &Arc<SshTarget>,
    server: &BarmanServer,
    spool: Option<&Spool>,
    stats: &Arc<SessionStats>,
    attempts: u32,
    layout: LayoutSource,
) -> Result<Arc<Fetcher>, Failure> {
    let session =
        Arc::new(Session::connect_with_retries(target.clone(), stats.clone(), attempts).await?);
    let fetcher = Arc::new(Fetcher::new(session, server.clone(), fetch_options(args)));
    if args.direct_read {
        let key = format!(
            "{}|{:?}|{}",
            target.display(),
            server.config(),
            server.name()
        );
        let cache = spool.map(|s| direct::cache_path(s.dir(), &key));
        fetcher
            .learn_layout(cache, layout == LayoutSource::CacheOrBarman)
            .await;
    }
    Ok(fetcher)
}

fn is_disk_full(failure: &Failure) -> bool {
    // The io::Error is rendered into the message by spool::dest_failure.
    matches!(failure, Failure::Local(m) if m.contains("os error 28"))
}

/// How many names to ask `get-wal --peek` for: a few windows' worth, so the
/// next misses find their names in the spool's copy of the answer and
/// start prefetching without a peek of their own.
pub(crate) fn peek_size(parallel: usize) -> usize {
    (parallel * 4).clamp(parallel, 256)
}

/// The requested file and, with `-p N`, the next N-1 ones, on one session.
async fn fetch_with_prefetch(
    fetcher: &Arc<Fetcher>,
    wal: &WalName,
    dest: &std::path::Path,
    spool: Option<&Spool>,
    parallel: usize,
    prefetch_deadline: tokio::time::Instant,
) -> Result<Outcome, Failure> {
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
                let listed = match spool.known_after(&wal, parallel - 1) {
                    Some(known) => known,
                    None => match fetcher.peek(&wal, peek_size(parallel)).await {
                        Ok(names) => {
                            let listed: Vec<WalName> = std::iter::once(wal.clone())
                                .chain(names.into_iter().filter(|n| n.is_segment() && n != &wal))
                                .collect();
                            spool.remember_listing(&listed);
                            listed
                        }
                        Err(failure) => return (0, vec![failure]),
                    },
                };
                let names: Vec<WalName> = listed
                    .into_iter()
                    .filter(|n| n != &wal && !spool.contains(n))
                    .take(parallel - 1)
                    .collect();
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
                        r.err().map(|(wal, f)| Failure::Remote {
                            status: f.exit_code(),
                            message: format!("prefetch of {wal}: {f}"),
                        })
                    })
                    .collect();
                (delivered, failures)
            }))
        }
        _ => None,
    };
    let result = match requested.await {
        Ok(result) => result,
        Err(e) => Err(Failure::Local(format!("transfer task failed: {e}"))),
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
                let late = Failure::Connection(
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
            if is_disk_full(&failure) && spool.evict_prefetched(wal) > 0 =>
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
