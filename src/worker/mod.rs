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
//!
//! This module does the I/O (the spool, the session, the jobs); what the
//! worker knows lives in types that take the time as an argument: `book`
//! keeps the requests (`requests`) and the segment table (`segments`) in
//! agreement, `head` follows the archive's head and PostgreSQL's pace.

mod book;
mod head;
mod requests;
mod segments;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::{self, Delivered, Fetcher, LayoutSource, Window, CONNECT_ATTEMPTS};
use crate::error::{Error, ErrorKind};
use crate::exit::{self, RecoveryMode};
use crate::handoff::{self, Answer, Assignment, Request};
use crate::owner::{self, Claimed, Owner};
use crate::pg_control::ClusterIdentity;
use crate::spool::{self, Spool};
use crate::ssh::{SessionStats, SshTarget};
use crate::stats;
use crate::wal::WalName;

use book::Book;
use head::{follows, window_starts, Head, Pace};
use segments::Miss;

/// How often the worker looks at the spool for requests and hits. A
/// request waits at most this long before the worker sees it.
const TICK: Duration = Duration::from_millis(5);

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
    Transfer(WalName, Instant, Result<Delivered, Error>),
    Peek(WalName, usize, Result<Vec<WalName>, Error>),
}

struct Worker<'a> {
    /// Its settings and the starting call's data directory.
    assignment: &'a Assignment,
    spool: Spool,
    /// The spool directory's device and inode: a directory made again at
    /// the same path (a new recovery) is not this worker's spool.
    spool_identity: (u64, u64),
    window: usize,
    idle: Duration,
    target: Arc<SshTarget>,
    stats: Arc<SessionStats>,
    fetcher: Option<Arc<Fetcher>>,
    next_connect: Instant,
    jobs: JoinSet<Done>,
    /// Where PostgreSQL is: the segment most recently asked for or taken.
    cursor: Option<WalName>,
    /// The archive's head as Barman last listed it, and the probes past it.
    head: Head,
    /// The size of the segments delivered so far (PostgreSQL's
    /// `wal_segment_size`), to name the one after the archive's last.
    segment_size: Option<u64>,
    pace: Pace,
    /// The archive's last segment, fetched again after PostgreSQL took it:
    /// an archive recovery that ends there reads it once more (to start its
    /// new timeline), and finds it in the spool instead of waiting for
    /// Barman. A standby never ends that way: it would be a second fetch
    /// of every segment at the head.
    reread: Option<WalName>,
    /// The requests and the segments the worker deals with.
    book: Book,
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
            tracing::info!("the spool holds the files of another caller ({other}); leaving");
            return exit::SUCCESS;
        }
        Err(e) => {
            tracing::error!("cannot claim the spool: {e}");
            return exit::SUCCESS;
        }
    };
    let window = Window::for_worker(config.transfer.parallel);
    tracing::info!(
        "worker {} serves spool {} (-p {}, idle exit after {} s) for {}",
        std::process::id(),
        config.spool.dir.display(),
        window.size(),
        config.background.idle.as_secs(),
        me.describe()
    );
    let target = match SshTarget::resolve(&config.connect_options()) {
        Ok(target) => Arc::new(target),
        Err(failure) => {
            tracing::error!("{failure}");
            return failure.exit_code();
        }
    };
    let mut worker = Worker {
        assignment,
        spool,
        spool_identity,
        window: window.size(),
        idle: config.background.idle,
        target,
        stats: Arc::new(SessionStats::default()),
        fetcher: None,
        next_connect: Instant::now(),
        jobs: JoinSet::new(),
        cursor: None,
        head: Head::default(),
        segment_size: None,
        pace: Pace::default(),
        reread: None,
        book: Book::default(),
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
        worker.book.want_once(&first);
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
            let waiting = self.book.any_waiting();
            if waiting {
                self.last_activity = Instant::now();
            }
            if !waiting && self.jobs.is_empty() && self.last_activity.elapsed() >= self.idle {
                return format!("no request for {} s", self.idle.as_secs());
            }
            if !waiting
                && self.last_activity.elapsed() >= YIELD_AFTER
                && owner::wanted_by_another(&self.spool, &self.owner)
            {
                return "a caller of another identity wants the spool".into();
            }
        }
    }

    fn has_work(&self) -> bool {
        self.book.any_waiting() || self.cursor.is_some() || self.book.any_once()
    }

    /// Picks up new requests; the newest one moves the cursor.
    fn read_requests(&mut self) {
        let now = Instant::now();
        self.head.forget_old_probes(now);
        let requests = handoff::pending_requests(&self.spool);
        let present: HashSet<&str> = requests.iter().map(|r| r.token.as_str()).collect();
        let spool = &self.spool;
        self.book.tidy(&present, now, |wal| spool.contains(wal));
        for Request { token, wal, pid } in requests {
            if self.book.knows(&token) {
                continue;
            }
            if pid > 0 && !spool::process_alive(pid) {
                handoff::drop_request(&self.spool, &token);
                continue;
            }
            self.last_activity = Instant::now();
            tracing::debug!("request {token}: {wal}");
            self.move_cursor(&wal);
            let in_spool = self.spool.contains(&wal);
            self.book.ask(token, wal, in_spool, Instant::now());
        }
    }

    fn move_cursor(&mut self, wal: &WalName) {
        if self.cursor.as_ref() == Some(wal) {
            return;
        }
        if self.cursor.as_ref().is_some_and(|old| follows(wal, old)) {
            self.pace.moved(Instant::now());
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
        let spool = &self.spool;
        self.book.gone(|d| spool.contains(d));
        self.cursor = Some(wal.clone());
    }

    /// A delivered segment that left the spool was taken by a call:
    /// PostgreSQL has moved on to it.
    fn notice_taken(&mut self) {
        let spool = &self.spool;
        let taken = self.book.gone(|w| spool.contains(w));
        for wal in taken {
            self.last_activity = Instant::now();
            if self.cursor.as_ref().is_none_or(|c| follows(&wal, c)) {
                self.move_cursor(&wal);
            }
            if self.head.is_last(&wal)
                && self.reread.as_ref() != Some(&wal)
                && self.recovery_ends_at_head()
            {
                self.reread = Some(wal.clone());
                self.book.want_once(&wal);
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
            tracing::warn!("the session broke; reconnecting");
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
                tracing::debug!("connected");
                self.fetcher = Some(fetcher)
            }
            Err(failure) => {
                tracing::warn!("cannot connect: {failure}");
                self.next_connect = Instant::now() + RECONNECT_PAUSE;
                // The callers fetch on their own rather than wait for us.
                for token in self.book.fail_waiting() {
                    self.answer(&token, Answer::Failed(failure.to_string()));
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
        let now = Instant::now();
        let spool = &self.spool;
        let due = self.book.due(now, |wal| spool.contains(wal));
        for (token, message) in due.missing {
            self.answer(&token, Answer::Missing(message));
        }
        for wal in due.starts {
            self.start_transfer(&fetcher, wal);
        }
        let Some(cursor) = self.cursor.clone() else {
            return;
        };
        let ahead = self.head.ahead(&cursor, self.window);
        let starts = window_starts(self.window, self.book.any_waiting());
        let limit = fetcher.stream_limit();
        let mut waiting_for_room = 0;
        for wal in ahead.iter().take(starts) {
            if self.book.in_flight(wal)
                || self.spool.contains(wal)
                || self.book.backing_off(wal, now)
            {
                continue;
            }
            if self.book.in_flight_count() < limit {
                self.start_transfer(&fetcher, wal.clone());
            } else {
                waiting_for_room += 1;
            }
        }
        // Their channels open now: each starts in one round trip when a
        // stream ends.
        fetcher.expect_commands(waiting_for_room);
        let (book, spool) = (&self.book, &self.spool);
        let busy = |wal: &WalName| book.in_flight(wal) || spool.contains(wal);
        if let Some(next) = self
            .head
            .probe(&cursor, self.segment_size, &self.pace, busy, now)
        {
            self.start_transfer(&fetcher, next);
        }
        if self
            .head
            .start_listing(&cursor, self.window, ahead.len(), now)
        {
            let count = Window::for_worker(self.window).peek_size();
            self.jobs.spawn(async move {
                let names = fetcher.peek(&cursor, count).await;
                Done::Peek(cursor, count, names)
            });
        }
    }

    fn start_transfer(&mut self, fetcher: &Arc<Fetcher>, wal: WalName) {
        if !self.book.start(&wal) {
            return;
        }
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
            Done::Transfer(wal, started, result) => match result {
                Ok(delivered) => {
                    self.served += 1;
                    self.segment_size = Some(delivered.bytes_out);
                    tracing::debug!("{wal} ready in {} ms", started.elapsed().as_millis());
                    // Its callers take it from the spool; until they withdraw
                    // their requests, those must not start it again.
                    self.book.delivered(&wal, Instant::now());
                }
                Err(failure) => {
                    let miss = match failure.kind() {
                        ErrorKind::NotFound => {
                            self.head.missed(started.elapsed());
                            Some(Miss {
                                started,
                                message: failure.message().to_string(),
                            })
                        }
                        _ => None,
                    };
                    self.transfer_failed(wal, failure, miss)
                }
            },
            Done::Peek(from, count, result) => match result {
                Ok(names) => self.head.listed(from, count, names),
                Err(failure) => {
                    tracing::warn!("peek from {from} failed: {failure}");
                    self.head.listing_failed();
                    if failure.is_transient() {
                        self.drop_session();
                    }
                }
            },
        }
    }

    fn transfer_failed(&mut self, wal: WalName, failure: Error, miss: Option<Miss>) {
        // A prefetch nobody waits for is worth a warning unless it is a
        // "not found": past the archive's head, that is the expected answer.
        let unexpected = !self.book.is_waited(&wal) && failure.kind() != ErrorKind::NotFound;
        if unexpected {
            tracing::warn!("{wal}: {failure}");
        } else {
            tracing::debug!("{wal}: {failure}");
        }
        let answer = match failure.kind() {
            ErrorKind::NotFound => Answer::Missing(failure.message().to_string()),
            _ => Answer::Failed(failure.to_string()),
        };
        for token in self.book.failed(&wal, Instant::now(), miss) {
            self.answer(&token, answer.clone());
        }
        if failure.is_transient() {
            self.drop_session();
        }
    }

    fn drop_session(&mut self) {
        if let Some(fetcher) = self.fetcher.take() {
            tracing::warn!("the session failed; reconnecting on the next need");
            tokio::spawn(async move { fetcher.session().close().await });
        }
    }

    /// Writes the answer file of a request the book has marked answered.
    fn answer(&self, token: &str, answer: Answer) {
        if let Err(e) = handoff::answer(&self.spool, token, &answer) {
            tracing::warn!("cannot answer request {token}: {e}");
        }
    }
}
