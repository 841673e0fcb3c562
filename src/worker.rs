//! The `--async` background worker: one per spool, one SSH session across
//! many restore_command calls, keeping the next `-p N` segments ready or in
//! flight while PostgreSQL replays.
//!
//! It learns where PostgreSQL is from the spool alone (see
//! [`crate::handoff`]): a request names the segment a call missed, and a
//! segment it delivered that disappears was taken by a call (a spool hit).
//! The window is the N segments Barman listed after that position; what it
//! fetches goes through [`Fetcher::transfer`], the same temp name,
//! validation, fsync and rename as a direct fetch. It answers a request it
//! cannot fulfil (Barman's "not found", or any failure) so the call can act
//! at once, reconnects after a broken session, and exits after
//! `--async-idle` seconds without a request or a hit, when its spool
//! disappears, or soon after a caller of another identity asked for the
//! spool (see [`crate::owner`]): it serves one caller identity only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cli::RestoreArgs;
use crate::exit::{self, Failure, RecoveryMode};
use crate::fetch::{Delivered, Fetcher};
use crate::handoff::{self, Answer, Request};
use crate::owner::{self, Claimed, Owner};
use crate::pg_control::ClusterIdentity;
use crate::remote::BarmanServer;
use crate::restore;
use crate::spool::{self, Spool};
use crate::ssh::{SessionStats, SshTarget};
use crate::wal::WalName;

/// How often the worker looks at the spool for requests and hits. A
/// request waits at most this long before the worker sees it.
const TICK: Duration = Duration::from_millis(5);

/// At the archive's head, how often to ask Barman for new segments (each
/// `get-wal --peek` is a Python start-up on the Barman host).
const HEAD_POLL: Duration = Duration::from_secs(2);

/// A prefetch that failed is not tried again for this long, unless a call
/// asks for that very segment.
const PREFETCH_BACKOFF: Duration = Duration::from_secs(5);

/// How long a caller may take to pick up a delivered segment and withdraw
/// its request before the worker concludes another caller took it.
const RACE_GRACE: Duration = Duration::from_millis(500);

/// How long Barman's "not found" for a segment answers a new request for
/// it without asking again, counted from when that get-wal started.
/// PostgreSQL asks for the segment after the archive's end twice in a row
/// when a recovery ends; a second Barman start-up would tell it nothing
/// new. A standby polling the head asks every few seconds, and each of
/// those gets a fresh answer.
const MISS_REUSE: Duration = Duration::from_secs(1);

/// What a probe past the archive's head is expected to take (a Barman
/// start-up and its "not found") until one has been measured.
const PROBE_COST_GUESS: Duration = Duration::from_millis(500);

/// How long a probe past the head is remembered (so not made again); the
/// head polls go on meanwhile.
const PROBE_MEMORY: Duration = Duration::from_secs(60);

/// After a failed connection attempt, the next one waits this long.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How long a new worker waits for the lock before deciding another
/// worker has it (a caller's liveness check holds it for an instant).
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Once a caller of another identity wants the spool, how long this
/// worker stays without a request or a hit of its own callers: long enough
/// for a replaying PostgreSQL's next request, short against
/// `--async-idle`.
const YIELD_AFTER: Duration = Duration::from_secs(2);

/// Makes the worker's paths independent of its working directory, then
/// leaves it: the worker is started in its caller's (the data directory,
/// where relative `--spool-dir`, `-i`, `-F` and `--known-hosts` mean
/// something) and must not keep it busy for its whole life.
pub fn detach(args: &mut RestoreArgs) {
    if let Ok(here) = std::env::current_dir() {
        args.resolve_paths_against(&here);
    }
    let _ = std::env::set_current_dir("/");
}

/// What a background job reports.
enum Done {
    /// A transfer and when it started.
    Transfer(WalName, Instant, Result<Delivered, Failure>),
    Peek(WalName, usize, Result<Vec<WalName>, Failure>),
}

struct Worker<'a> {
    args: &'a RestoreArgs,
    spool: Spool,
    /// The spool directory's device and inode: a directory made again at
    /// the same path (a new recovery) is not this worker's spool.
    spool_identity: (u64, u64),
    window: usize,
    idle: Duration,
    target: Arc<SshTarget>,
    server: BarmanServer,
    stats: Arc<SessionStats>,
    fetcher: Option<Arc<Fetcher>>,
    next_connect: Instant,
    jobs: JoinSet<Done>,
    in_flight: HashSet<WalName>,
    peeking: bool,
    /// Where PostgreSQL is: the segment most recently asked for or taken.
    cursor: Option<WalName>,
    /// Segments Barman listed after the last peek's start, in WAL order,
    /// and whether that listing reached the end of the archive.
    listing: Vec<WalName>,
    peek_from: Option<WalName>,
    at_head: bool,
    last_peek: Option<Instant>,
    /// The size of the segments delivered so far (PostgreSQL's
    /// `wal_segment_size`), to name the one after the archive's last.
    segment_size: Option<u64>,
    /// How fast PostgreSQL moves from one segment to the next (a moving
    /// average), and when it last did.
    pace: Option<Duration>,
    cursor_moved: Option<Instant>,
    /// How long Barman took to say "not found" last time: what a probe
    /// past the head costs.
    probe_cost: Duration,
    /// Probes past the head, per segment: whether the last one began
    /// before PostgreSQL reached the archive's last segment, and when.
    probes: HashMap<WalName, (bool, Instant)>,
    /// The archive's last segment, fetched again after PostgreSQL took it:
    /// an archive recovery that ends there reads it once more (to start its
    /// new timeline), and finds it in the spool instead of waiting for
    /// Barman. A standby never ends that way: it would be a second fetch
    /// of every segment at the head.
    reread: Option<WalName>,
    /// Segments to fetch once, outside the window: the re-read copy, and
    /// a recovery's first segment before PostgreSQL asks for it.
    fetch_once: Vec<WalName>,
    /// Segments this worker put in the spool and has not seen taken yet.
    delivered: HashSet<WalName>,
    failed: HashMap<WalName, Instant>,
    /// Barman's latest "not found" per segment: when that get-wal started,
    /// and what it said.
    missing: HashMap<WalName, (Instant, String)>,
    /// Requests waiting for a segment, by token.
    pending: HashMap<String, WalName>,
    /// Requests answered whose files the caller has not yet withdrawn.
    settled: HashSet<String>,
    /// Requests whose segment was delivered, and when: the caller takes
    /// it and withdraws the request within milliseconds; one still there
    /// later with its segment gone lost a race to another caller.
    delivered_for: HashMap<String, (WalName, Instant)>,
    last_activity: Instant,
    served: u64,
    /// The caller identity this worker serves.
    owner: Owner,
}

/// Runs the worker for the spool of `args` and returns its exit status
/// (nobody waits for it; the log says why it ended).
pub async fn run(args: &RestoreArgs) -> i32 {
    if let Some(dir) = &args.async_data_dir {
        crate::validate::set_data_directory(dir);
    }
    let spool = match Spool::open(&args.spool_dir) {
        Ok(spool) => spool,
        Err(failure) => {
            tracing::error!("{failure}");
            return failure.exit_code();
        }
    };
    let Some(spool_identity) = spool::identity(spool.dir()) else {
        tracing::error!("the spool vanished as the worker started");
        return exit::SUCCESS;
    };
    let Some(_lock) = handoff::lock_as_worker(&spool, LOCK_PATIENCE) else {
        tracing::info!("another worker serves this spool; leaving");
        return exit::SUCCESS;
    };
    // The identity of the call that started it (its arguments, its data
    // directory). Claimed after the lock, so released before it: a caller
    // that sees the lock free finds the spool free too.
    let cluster = args
        .async_data_dir
        .as_deref()
        .and_then(|dir| ClusterIdentity::of_data_dir(dir).ok().flatten());
    let me = Owner::of(args, cluster.as_ref());
    let _claim = match owner::claim(&spool, &me, true) {
        Ok(Claimed::Ours(claim)) => claim,
        Ok(Claimed::Held(other)) => {
            tracing::info!("the spool holds the files of another caller ({other}); leaving");
            return exit::SUCCESS;
        }
        Err(e) => {
            tracing::error!("cannot claim the spool: {e}");
            return exit::SUCCESS;
        }
    };
    tracing::info!(
        "worker {} serves spool {} (-p {}, idle exit after {} s) for {}",
        std::process::id(),
        args.spool_dir.display(),
        args.parallel.max(1),
        args.async_idle,
        me.describe()
    );
    let server = match BarmanServer::new(&args.server_name, args.connection.config.as_deref()) {
        Ok(server) => server,
        Err(failure) => {
            tracing::error!("{failure}");
            return failure.exit_code();
        }
    };
    let target = match SshTarget::resolve(&args.connection.connect_options(&args.barman_host)) {
        Ok(target) => Arc::new(target),
        Err(failure) => {
            tracing::error!("{failure}");
            return failure.exit_code();
        }
    };
    let mut worker = Worker {
        args,
        spool,
        spool_identity,
        window: args.parallel.max(1),
        idle: Duration::from_secs(args.async_idle),
        target,
        server,
        stats: Arc::new(SessionStats::default()),
        fetcher: None,
        next_connect: Instant::now(),
        jobs: JoinSet::new(),
        in_flight: HashSet::new(),
        peeking: false,
        cursor: None,
        listing: Vec::new(),
        peek_from: None,
        at_head: false,
        last_peek: None,
        segment_size: None,
        pace: None,
        cursor_moved: None,
        probe_cost: PROBE_COST_GUESS,
        probes: HashMap::new(),
        reread: None,
        fetch_once: Vec::new(),
        delivered: HashSet::new(),
        failed: HashMap::new(),
        missing: HashMap::new(),
        pending: HashMap::new(),
        settled: HashSet::new(),
        delivered_for: HashMap::new(),
        last_activity: Instant::now(),
        served: 0,
        owner: me,
    };
    // Started by the history lookup at a recovery's start, with the first
    // segment from the backup_label: it is fetched before it is asked for.
    // That one only: the window waits for PostgreSQL's first request, as a
    // full window of get-wal now would slow the history lookup down with
    // it (Barman's Python and the lookup share the Barman host's CPUs).
    if let Some(first) = args
        .async_from
        .as_deref()
        .and_then(|name| WalName::parse(name).ok())
        .filter(WalName::is_segment)
    {
        worker.fetch_once.push(first);
    }
    let why = worker.serve().await;
    if let Some(fetcher) = worker.fetcher.take() {
        fetcher.session().close().await;
    }
    let (connections, channels, refused) = worker.stats.snapshot();
    tracing::info!(
        "worker {} exiting ({why}): {} file(s) fetched, {connections} connection(s), \
         {channels} channel(s), {refused} refused",
        std::process::id(),
        worker.served
    );
    write_stats(&worker.stats);
    exit::SUCCESS
}

impl Worker<'_> {
    async fn serve(&mut self) -> String {
        // Started because a call is about to ask: connect (and learn the
        // layout) before the first request rather than after it.
        self.ensure_session().await;
        loop {
            tokio::select! {
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
            if spool::identity(self.spool.dir()) != Some(self.spool_identity) {
                return "its spool is gone".into();
            }
            self.read_requests();
            self.notice_taken();
            if self.has_work() {
                self.ensure_session().await;
                self.schedule();
            }
            // Idle means no call waiting: the clock starts when the last
            // waiting request is served, not when it arrived, or a worker
            // that took longer than --async-idle to serve a request would
            // leave just as its callers come back for the next segment.
            // (Prefetches and polls at the head do not count: a worker
            // nobody asks must still leave.)
            if !self.pending.is_empty() {
                self.last_activity = Instant::now();
            }
            if self.pending.is_empty()
                && self.jobs.is_empty()
                && self.last_activity.elapsed() >= self.idle
            {
                return format!("no request for {} s", self.idle.as_secs());
            }
            if self.pending.is_empty()
                && self.last_activity.elapsed() >= YIELD_AFTER
                && owner::wanted_by_another(&self.spool, &self.owner)
            {
                return "a caller of another identity wants the spool".into();
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.cursor.is_some() || !self.fetch_once.is_empty()
    }

    /// Picks up new requests; the newest one moves the cursor.
    fn read_requests(&mut self) {
        self.missing
            .retain(|_, (started, _)| started.elapsed() < MISS_REUSE);
        self.probes.retain(|_, (_, at)| at.elapsed() < PROBE_MEMORY);
        let requests = handoff::pending_requests(&self.spool);
        let seen: HashSet<&str> = requests.iter().map(|r| r.token.as_str()).collect();
        self.settled.retain(|t| seen.contains(t.as_str()));
        self.pending.retain(|t, _| seen.contains(t.as_str()));
        self.delivered_for.retain(|t, _| seen.contains(t.as_str()));
        let lost: Vec<String> = self
            .delivered_for
            .iter()
            .filter(|(_, (wal, at))| at.elapsed() > RACE_GRACE && !self.spool.contains(wal))
            .map(|(t, _)| t.clone())
            .collect();
        for token in lost {
            if let Some((wal, _)) = self.delivered_for.remove(&token) {
                self.pending.insert(token, wal);
            }
        }
        for Request { token, wal, pid } in requests {
            if self.settled.contains(&token)
                || self.pending.contains_key(&token)
                || self.delivered_for.contains_key(&token)
            {
                continue;
            }
            if pid > 0 && !spool::process_alive(pid) {
                handoff::drop_request(&self.spool, &token);
                continue;
            }
            self.last_activity = Instant::now();
            tracing::debug!("request {token}: {wal}");
            self.move_cursor(&wal);
            self.failed.remove(&wal);
            if self.spool.contains(&wal) {
                self.delivered_for.insert(token, (wal, Instant::now()));
            } else {
                self.pending.insert(token, wal);
            }
        }
    }

    fn move_cursor(&mut self, wal: &WalName) {
        if self.cursor.as_ref() == Some(wal) {
            return;
        }
        if let Some(old) = &self.cursor {
            if follows(wal, old) {
                let now = Instant::now();
                if let Some(at) = self.cursor_moved {
                    let step = now.duration_since(at);
                    self.pace = Some(match self.pace {
                        Some(pace) => (pace * 7 + step * 3) / 10,
                        None => step,
                    });
                }
                self.cursor_moved = Some(now);
            }
        }
        // The re-read copy stays while PostgreSQL is on the segment after
        // it (asking for the one past the archive's end), no longer.
        let size = self.segment_size;
        let keep = self
            .reread
            .clone()
            .filter(|r| size.and_then(|s| r.next_segment(s)).as_ref() == Some(wal));
        if keep.is_none() {
            self.reread = None;
        }
        self.spool.purge_stale(wal, keep.as_ref());
        self.delivered.retain(|d| self.spool.contains(d));
        self.cursor = Some(wal.clone());
    }

    /// A delivered segment that left the spool was taken by a call:
    /// PostgreSQL has moved on to it.
    fn notice_taken(&mut self) {
        let taken: Vec<WalName> = self
            .delivered
            .iter()
            .filter(|w| !self.spool.contains(w))
            .cloned()
            .collect();
        for wal in taken {
            self.delivered.remove(&wal);
            self.last_activity = Instant::now();
            if self.cursor.as_ref().is_none_or(|c| follows(&wal, c)) {
                self.move_cursor(&wal);
            }
            if self.at_head
                && self.listing.last() == Some(&wal)
                && self.reread.as_ref() != Some(&wal)
                && self.recovery_ends_at_head()
            {
                self.reread = Some(wal.clone());
                self.fetch_once.push(wal);
            }
        }
    }

    /// An archive recovery (not a standby) ends where the archive ends,
    /// and reads the last segment once more as it does.
    fn recovery_ends_at_head(&self) -> bool {
        self.args
            .async_data_dir
            .as_deref()
            .is_some_and(|dir| RecoveryMode::detect(dir) == RecoveryMode::ArchiveRecovery)
    }

    async fn ensure_session(&mut self) {
        if self
            .fetcher
            .as_ref()
            .is_some_and(|f| !f.session().is_closed())
        {
            return;
        }
        if let Some(old) = self.fetcher.take() {
            tracing::warn!("the session broke; reconnecting");
            old.session().close().await;
        }
        if Instant::now() < self.next_connect {
            return;
        }
        let connected = restore::connect(
            self.args,
            &self.target,
            &self.server,
            Some(&self.spool),
            &self.stats,
            restore::CONNECT_ATTEMPTS,
            restore::LayoutSource::CacheOrBarman,
        )
        .await;
        match connected {
            Ok(fetcher) => {
                tracing::debug!("connected");
                self.fetcher = Some(fetcher)
            }
            Err(failure) => {
                tracing::warn!("cannot connect: {failure}");
                self.next_connect = Instant::now() + RECONNECT_PAUSE;
                // The callers fetch on their own rather than wait for us.
                let waiting: Vec<String> = self.pending.keys().cloned().collect();
                for token in waiting {
                    self.settle(&token, Answer::Failed(failure.to_string()));
                }
            }
        }
    }

    /// Starts what is missing: first every requested segment, then the
    /// window after the cursor, then a peek when the listing runs short.
    fn schedule(&mut self) {
        let Some(fetcher) = self.fetcher.clone() else {
            return;
        };
        let requested: Vec<WalName> = self.pending.values().cloned().collect();
        for wal in requested {
            if let Some(message) = self.fresh_miss(&wal) {
                for token in self.waiting_for(&wal) {
                    self.settle(&token, Answer::Missing(message.clone()));
                }
            } else if !self.in_flight.contains(&wal) && !self.spool.contains(&wal) {
                self.start_transfer(&fetcher, wal);
            }
        }
        for wal in std::mem::take(&mut self.fetch_once) {
            if !self.in_flight.contains(&wal) && !self.spool.contains(&wal) {
                self.start_transfer(&fetcher, wal);
            }
        }
        let Some(cursor) = self.cursor.clone() else {
            return;
        };
        let ahead: Vec<WalName> = self
            .listing
            .iter()
            .filter(|n| follows(n, &cursor))
            .take(self.window)
            .cloned()
            .collect();
        // A waiting PostgreSQL comes first: while a call waits, only what it
        // asked for and the segment after it run, not the whole window
        // competing with them for the link and the CPUs.
        let starts = if self.pending.is_empty() {
            self.window
        } else {
            1
        };
        let limit = fetcher.stream_limit();
        for wal in ahead.iter().take(starts) {
            let backing_off = self
                .failed
                .get(wal)
                .is_some_and(|t| t.elapsed() < PREFETCH_BACKOFF);
            let room = self.in_flight.len() < limit;
            if room && !self.in_flight.contains(wal) && !self.spool.contains(wal) && !backing_off {
                self.start_transfer(&fetcher, wal.clone());
            }
        }
        if self.at_head {
            if let Some(left) = self.left_before_head(&cursor) {
                self.probe_past_head(&fetcher, left);
            }
        }
        // A cursor outside the last listing (a jump, a new timeline) needs
        // a new one now; at the archive's head, only every HEAD_POLL.
        let covered = self.listing_covers(&cursor);
        let due = match self.last_peek {
            Some(at) if covered && self.at_head => at.elapsed() >= HEAD_POLL,
            _ => true,
        };
        if ahead.len() < self.window && !self.peeking && due {
            self.peeking = true;
            self.last_peek = Some(Instant::now());
            let count = restore::peek_size(self.window);
            self.jobs.spawn(async move {
                let names = fetcher.peek(&cursor, count).await;
                Done::Peek(cursor, count, names)
            });
        }
    }

    /// How many listed segments PostgreSQL has left after `cursor` before
    /// the archive's end, if the listing covers where it is.
    fn left_before_head(&self, cursor: &WalName) -> Option<usize> {
        self.listing_covers(cursor)
            .then(|| self.listing.iter().filter(|n| follows(n, cursor)).count())
    }

    /// Whether the last listing says where `cursor` is: it lists it, or
    /// was asked from it (an empty answer there is still an answer).
    fn listing_covers(&self, cursor: &WalName) -> bool {
        self.peek_from.as_ref() == Some(cursor) || self.listing.contains(cursor)
    }

    /// PostgreSQL, `left` segments before the archive's end, will ask for
    /// the one past it as soon as it has replayed them. Asking Barman first
    /// has the answer ready: the segment itself if it just arrived, else a
    /// "not found" that the request, coming within [`MISS_REUSE`], reuses.
    /// The probe starts when PostgreSQL's pace says the remaining segments
    /// take less time than a probe, and on the last segment at the latest.
    /// One probe per segment, and a second on the last segment when the
    /// early one's answer went stale on the way.
    fn probe_past_head(&mut self, fetcher: &Arc<Fetcher>, left: usize) {
        let Some(last) = self.listing.last() else {
            return;
        };
        let Some(next) = self.segment_size.and_then(|size| last.next_segment(size)) else {
            return;
        };
        if self.in_flight.contains(&next) || self.spool.contains(&next) {
            return;
        }
        let on_last = left == 0;
        let near = on_last
            || self
                .pace
                .is_some_and(|pace| pace * left as u32 <= self.probe_cost);
        let due = match self.probes.get(&next) {
            None => near,
            Some((early, at)) => *early && on_last && at.elapsed() >= MISS_REUSE,
        };
        if due {
            self.probes.insert(next.clone(), (!on_last, Instant::now()));
            self.start_transfer(fetcher, next);
        }
    }

    fn start_transfer(&mut self, fetcher: &Arc<Fetcher>, wal: WalName) {
        self.in_flight.insert(wal.clone());
        let fetcher = fetcher.clone();
        let dest = self.spool.path_of(&wal);
        self.jobs.spawn(async move {
            let started = Instant::now();
            let result = fetcher.transfer(&wal, &dest).await;
            Done::Transfer(wal, started, result)
        });
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Transfer(wal, started, result) => {
                self.in_flight.remove(&wal);
                self.missing.remove(&wal);
                match result {
                    Ok(delivered) => {
                        self.served += 1;
                        self.segment_size = Some(delivered.bytes_out);
                        tracing::debug!("{wal} ready in {} ms", started.elapsed().as_millis());
                        // Its callers take it from the spool; until they withdraw
                        // their requests, those must not start it again.
                        for token in self.waiting_for(&wal) {
                            self.pending.remove(&token);
                            self.delivered_for
                                .insert(token, (wal.clone(), Instant::now()));
                        }
                        self.delivered.insert(wal);
                    }
                    Err(failure) => {
                        if let Failure::NotFound(message) = &failure {
                            self.missing.insert(wal.clone(), (started, message.clone()));
                            self.probe_cost = started.elapsed();
                        }
                        self.transfer_failed(wal, failure)
                    }
                }
            }
            Done::Peek(from, count, result) => {
                self.peeking = false;
                match result {
                    Ok(names) => {
                        self.at_head = names.len() < count;
                        let mut listing: Vec<WalName> = names
                            .into_iter()
                            .filter(|n| n.is_segment() && follows(n, &from))
                            .collect();
                        listing.sort_by_key(|n| n.position());
                        self.listing = listing;
                        self.peek_from = Some(from);
                    }
                    Err(failure) => {
                        tracing::warn!("peek from {from} failed: {failure}");
                        self.at_head = true;
                        if failure.is_transient() {
                            self.drop_session();
                        }
                    }
                }
            }
        }
    }

    fn transfer_failed(&mut self, wal: WalName, failure: Failure) {
        let waiting = self.waiting_for(&wal);
        // A prefetch nobody waits for is worth a warning unless it is a
        // "not found": past the archive's head, that is the expected answer.
        let unexpected = waiting.is_empty() && !matches!(failure, Failure::NotFound(_));
        if unexpected {
            tracing::warn!("{wal}: {failure}");
        } else {
            tracing::debug!("{wal}: {failure}");
        }
        let answer = match &failure {
            Failure::NotFound(message) => Answer::Missing(message.clone()),
            other => Answer::Failed(other.to_string()),
        };
        for token in waiting {
            self.settle(&token, answer.clone());
        }
        if failure.is_transient() {
            self.drop_session();
        }
        self.failed.insert(wal, Instant::now());
    }

    /// Barman's "not found" for `wal`, if recent enough to answer with.
    fn fresh_miss(&self, wal: &WalName) -> Option<String> {
        self.missing
            .get(wal)
            .filter(|(started, _)| started.elapsed() < MISS_REUSE)
            .map(|(_, message)| message.clone())
    }

    /// The pending requests for `wal`.
    fn waiting_for(&self, wal: &WalName) -> Vec<String> {
        self.pending
            .iter()
            .filter(|(_, w)| *w == wal)
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn drop_session(&mut self) {
        if let Some(fetcher) = self.fetcher.take() {
            tracing::warn!("the session failed; reconnecting on the next need");
            tokio::spawn(async move { fetcher.session().close().await });
        }
    }

    fn settle(&mut self, token: &str, answer: Answer) {
        self.pending.remove(token);
        self.settled.insert(token.to_string());
        if let Err(e) = handoff::answer(&self.spool, token, &answer) {
            tracing::warn!("cannot answer request {token}: {e}");
        }
    }
}

/// For `barman-wal-bench`: `BARMAN_WAL_RESTORE_WORKER_STATS=FILE` gets
/// `connections channels refused peak_rss_kib cpu_seconds` of this worker
/// when it leaves, costs that no call's `wait4` sees.
fn write_stats(stats: &SessionStats) {
    let Some(path) = std::env::var_os("BARMAN_WAL_RESTORE_WORKER_STATS") else {
        return;
    };
    let (connections, channels, refused) = stats.snapshot();
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    let line = format!(
        "{connections} {channels} {refused} {} {cpu:.3}\n",
        restore::peak_rss_kib()
    );
    let _ = std::fs::write(path, line);
}

/// Whether `wal` comes after `cursor` on its timeline: what the window
/// may hold once PostgreSQL is at `cursor`.
fn follows(wal: &WalName, cursor: &WalName) -> bool {
    wal.timeline() == cursor.timeline() && wal.position() > cursor.position()
}
