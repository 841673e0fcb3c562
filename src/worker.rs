//! The `--async` background worker: one per spool, one SSH session across
//! many restore_command calls, keeping the next `-p N` segments ready or in
//! flight while PostgreSQL replays.
//!
//! It learns where PostgreSQL is from the spool alone (see
//! [`crate::handoff`]): a request names the segment a call missed, and a
//! segment it delivered that disappears was taken by a call (a spool hit).
//! The window is the N segments Barman listed after that position
//! ([`client::Window::for_worker`]); what it
//! fetches goes through [`Fetcher::transfer`], the same temp name,
//! validation, fsync and rename as a direct fetch. It answers a request it
//! cannot fulfil (Barman's "not found", or any failure) so the call can act
//! at once, reconnects after a broken session, and exits after
//! `--async-idle` seconds without a request or a hit, when its spool
//! disappears, or soon after a caller of another identity asked for the
//! spool (see [`crate::owner`]): it serves one caller identity only.
//!
//! Its settings are those of the call that started it, resolved by that
//! call and handed over on stdin ([`crate::handoff::Assignment`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::window::follows;
use crate::client::{self, Delivered, Fetcher, LayoutSource, Window, CONNECT_ATTEMPTS};
use crate::exit::{self, Failure, RecoveryMode};
use crate::handoff::{self, Answer, Assignment, Request};
use crate::owner::{self, Claimed, Owner};
use crate::pg_control::ClusterIdentity;
use crate::spool::{self, Spool};
use crate::ssh::{SessionStats, SshTarget};
use crate::stats;
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

/// What a background job reports.
enum Done {
    /// A transfer and when it started.
    Transfer(WalName, Instant, Result<Delivered, Failure>),
    Peek(WalName, usize, Result<Vec<WalName>, Failure>),
}

struct Worker<'a> {
    /// Its settings and the starting call's data directory.
    assignment: &'a Assignment,
    spool: Spool,
    /// The spool directory's device and inode: a directory made again at
    /// the same path (a new recovery) is not this worker's spool.
    spool_identity: (u64, u64),
    window: Window,
    idle: Duration,
    target: Arc<SshTarget>,
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

/// Runs the worker its starting call assigned, and returns its exit
/// status (nobody waits for it; the log says why it ended).
pub async fn run(assignment: &Assignment) -> i32 {
    let config = &assignment.config;
    if let Some(dir) = &assignment.data_dir {
        crate::validate::set_data_directory(dir);
    }
    let spool = match Spool::open(&config.spool.dir) {
        Ok(spool) => spool,
        Err(failure) => {
            log(&format!("ERROR: {failure}"));
            return failure.exit_code();
        }
    };
    let Some(spool_identity) = spool::identity(spool.dir()) else {
        log("ERROR: the spool vanished as the worker started");
        return exit::SUCCESS;
    };
    let Some(_lock) = handoff::lock_as_worker(&spool, LOCK_PATIENCE) else {
        log("another worker serves this spool; leaving");
        return exit::SUCCESS;
    };
    // The identity of the call that started it (its settings, its data
    // directory). Claimed after the lock, so released before it: a caller
    // that sees the lock free finds the spool free too.
    let cluster = assignment
        .data_dir
        .as_deref()
        .and_then(|dir| ClusterIdentity::of_data_dir(dir).ok().flatten());
    let me = Owner::of(config, cluster.as_ref());
    let _claim = match owner::claim(&spool, &me, true) {
        Ok(Claimed::Ours(claim)) => claim,
        Ok(Claimed::Held(other)) => {
            log(&format!(
                "the spool holds the files of another caller ({other}); leaving"
            ));
            return exit::SUCCESS;
        }
        Err(e) => {
            log(&format!("ERROR: cannot claim the spool: {e}"));
            return exit::SUCCESS;
        }
    };
    let window = Window::for_worker(config.transfer.parallel);
    log(&format!(
        "worker {} serves spool {} (-p {}, idle exit after {} s) for {}",
        std::process::id(),
        config.spool.dir.display(),
        window.size(),
        config.background.idle.as_secs(),
        me.describe()
    ));
    let target = match SshTarget::resolve(&config.connect_options()) {
        Ok(target) => Arc::new(target),
        Err(failure) => {
            log(&format!("ERROR: {failure}"));
            return failure.exit_code();
        }
    };
    let mut worker = Worker {
        assignment,
        spool,
        spool_identity,
        window,
        idle: config.background.idle,
        target,
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
    if let Some(first) = assignment
        .first
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
    log(&format!(
        "worker {} exiting ({why}): {} file(s) fetched, {connections} connection(s), \
         {channels} channel(s), {refused} refused",
        std::process::id(),
        worker.served
    ));
    stats::write_worker_stats(&worker.stats);
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
            if self.assignment.config.verbose {
                log(&format!("request {token}: {wal}"));
            }
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
        self.assignment
            .data_dir
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
            log("the session broke; reconnecting");
            old.session().close().await;
        }
        if Instant::now() < self.next_connect {
            return;
        }
        let connected = client::connect(
            &self.assignment.config,
            &self.target,
            Some(&self.spool),
            &self.stats,
            CONNECT_ATTEMPTS,
            LayoutSource::CacheOrBarman,
        )
        .await;
        match connected {
            Ok(fetcher) => {
                if self.assignment.config.verbose {
                    log("connected");
                }
                self.fetcher = Some(fetcher)
            }
            Err(failure) => {
                log(&format!("cannot connect: {failure}"));
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
        let spool = &self.spool;
        let ahead = self
            .window
            .ahead(&self.listing, &cursor, |n| spool.contains(n));
        // A waiting PostgreSQL comes first: while a call waits, only what it
        // asked for and the segment after it run, not the whole window
        // competing with them for the link and the CPUs.
        let starts = if self.pending.is_empty() {
            self.window.size()
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
        if ahead.len() < self.window.size() && !self.peeking && due {
            self.peeking = true;
            self.last_peek = Some(Instant::now());
            let count = self.window.peek_size();
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
                        if self.assignment.config.verbose {
                            log(&format!(
                                "{wal} ready in {} ms",
                                started.elapsed().as_millis()
                            ));
                        }
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
                        self.listing = self.window.listing(&from, names);
                        self.peek_from = Some(from);
                    }
                    Err(failure) => {
                        log(&format!("peek from {from} failed: {failure}"));
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
        // A prefetch nobody waits for is worth a line unless it is a "not
        // found": past the archive's head, that is the expected answer.
        let unexpected = waiting.is_empty() && !matches!(failure, Failure::NotFound(_));
        if unexpected || self.assignment.config.verbose {
            log(&format!("{wal}: {failure}"));
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
            log("the session failed; reconnecting on the next need");
            tokio::spawn(async move { fetcher.session().close().await });
        }
    }

    fn settle(&mut self, token: &str, answer: Answer) {
        self.pending.remove(token);
        self.settled.insert(token.to_string());
        if let Err(e) = handoff::answer(&self.spool, token, &answer) {
            log(&format!("cannot answer request {token}: {e}"));
        }
    }
}

/// One line on the worker's log (its stderr), with the local time: the
/// log is read by a DBA next to PostgreSQL's own.
fn log(message: &str) {
    eprintln!("{} {message}", local_time());
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in local time. By hand through libc rather than a
/// date crate: one format, one call site.
fn local_time() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = since_epoch.as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return now.to_string();
    }
    // Milliseconds: a request is answered in a few of them.
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since_epoch.subsec_millis()
    )
}
