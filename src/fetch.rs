//! Fetch orchestration: files from Barman to their final names, over the
//! exec channels of one session.
//!
//! [`Fetcher::transfer`] moves one file (one `barman get-wal` channel, decoded
//! as it arrives, validated, then renamed into place). [`Fetcher::prefetch`]
//! keeps up to N of those in flight for a list of names, a sliding window
//! rather than batches, treating a refused channel (OpenSSH's `MaxSessions`)
//! as back-pressure. A one-shot restore_command call and a long-lived
//! background prefetcher use the same two operations. With `--direct-read`
//! both read the stored files first ([`crate::direct`]) and ask `barman
//! get-wal` for whatever that cannot settle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::decode::{DecodeError, DecodeSink, Format};
use crate::direct::{self, ArchiveLayout, DirectState};
use crate::exit::Failure;
use crate::remote::{parse_peek, BarmanServer, RemoteExit, Transfer};
use crate::spool::{self, Spool, TempFile};
use crate::ssh::{ExecChannel, OpenError, Session};
use crate::validate;
use crate::wal::{WalKind, WalName};

/// How files are asked for and checked.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// What the user asked the server to send. [`Transfer::KeepCompression`]
    /// is also what we choose by default (see [`FetchOptions::auto_keep`]).
    pub transfer: Transfer,
    /// We chose `--keep-compression` ourselves: fall back to a plain
    /// `get-wal` when the server rejects the flag (Barman before 3.12).
    pub auto_keep: bool,
    /// Ask for `.partial` files too (`-P`).
    pub partial: bool,
    /// Check WAL headers before delivering (`--no-verify` turns it off).
    pub verify: bool,
}

/// What one transfer delivered.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub wal: WalName,
    pub path: PathBuf,
    pub format: Format,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub elapsed: Duration,
}

/// Fetches files over one session. Cheap to share behind an `Arc`.
pub struct Fetcher {
    session: Arc<Session>,
    server: BarmanServer,
    options: FetchOptions,
    /// Signalled whenever one of our channels ends: a refused open waits
    /// for it before trying again.
    slot_freed: Notify,
    /// Set once the server rejected `--keep-compression`.
    keep_rejected: AtomicBool,
    /// The system identifier of the first segment delivered: every later
    /// segment of this fetcher must share it.
    system_identifier: Mutex<Option<u64>>,
    /// Set by [`Fetcher::learn_layout`] for `--direct-read`.
    direct: Mutex<Option<DirectRead>>,
}

/// The most transfers one session streams at once, whatever `-p` says:
/// `-p` is how many segments to prefetch, this is how many decode at the
/// same time. Each zstd stream's decoder holds its window (about 2.5 MiB
/// for Barman's level-3 16 MiB segments), so 16 at once cost over 40 MiB;
/// and more channels than this hardly move more bytes through one session,
/// nor start Barman's Python faster on a Barman host with few cores. 5
/// rather than 6: less memory and no slower, measured side by side
/// (docs/benchmarks.md, "Where the constants come from").
pub const MAX_STREAMS: usize = 5;

/// The same limit for direct reads: nothing remote to wait for, each
/// stream is decoded as fast as it arrives, so more than a few only hold
/// more buffered bytes: 6 streams held more memory and were no faster
/// (docs/benchmarks.md, "Where the constants come from").
pub const DIRECT_STREAMS: usize = 4;

/// The longest `get-wal --peek` answer read: 256 names (the most we ask
/// for) take under 7 KiB.
const MAX_PEEK_ANSWER: usize = 1 << 20;

/// How long one transfer may stream, in `--io-timeout`s: the idle timer
/// alone lets a trickle (a byte now and then) hold a call forever. Five
/// idle periods (5 minutes by default) move a 16 MiB segment at 56 KiB/s.
pub const TRANSFER_IO_TIMEOUTS: u32 = 5;

/// The longest pause between two tries of a refused channel open; a freed
/// slot normally wakes the waiter well before.
const REFUSED_RETRY_MAX: Duration = Duration::from_millis(200);

impl Fetcher {
    pub fn new(session: Arc<Session>, server: BarmanServer, options: FetchOptions) -> Fetcher {
        Fetcher {
            session,
            server,
            options,
            slot_freed: Notify::new(),
            keep_rejected: AtomicBool::new(false),
            system_identifier: Mutex::new(None),
            direct: Mutex::new(None),
        }
    }

    /// How many transfers this fetcher streams at once.
    pub fn stream_limit(&self) -> usize {
        if self.layout().is_some() {
            DIRECT_STREAMS
        } else {
            MAX_STREAMS
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn server(&self) -> &BarmanServer {
        &self.server
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// Opens an exec channel, waiting while the server refuses new channels,
    /// for at most the io timeout.
    async fn exec(&self, command: &str) -> Result<ExecChannel, Failure> {
        let deadline = Instant::now() + self.session.target().io_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.session.exec(command).await {
                Ok(channel) => return Ok(channel),
                Err(OpenError::Failed(failure)) => return Err(failure),
                Err(OpenError::Refused) if Instant::now() >= deadline => {
                    return Err(Failure::Connection(format!(
                        "{} kept refusing new channels for {} s (MaxSessions?)",
                        self.session.target().display(),
                        self.session.target().io_timeout.as_secs()
                    )));
                }
                Err(OpenError::Refused) => {
                    let _ = tokio::time::timeout(pause, self.slot_freed.notified()).await;
                    pause = (pause * 2).min(REFUSED_RETRY_MAX);
                }
            }
        }
    }

    fn channel_done(&self) {
        self.slot_freed.notify_one();
    }

    /// `get-wal --peek N`: the names Barman has from `wal` on.
    pub async fn peek(&self, wal: &WalName, count: usize) -> Result<Vec<WalName>, Failure> {
        if let Some(layout) = self.layout() {
            if let Some(names) = self.peek_direct(&layout, wal, count).await {
                return Ok(names);
            }
        }
        let command = self.server.peek(wal, count);
        let mut exec = self.exec(&command).await?;
        let mut stdout = Vec::new();
        // A listing is a few KiB: one that keeps coming (a trickle resets
        // the idle timer) is cut, not waited for.
        let bound = self.session.target().io_timeout;
        let read = tokio::time::timeout(bound, async {
            while let Some(chunk) = exec.next_stdout().await? {
                stdout.extend_from_slice(&chunk);
                if stdout.len() > MAX_PEEK_ANSWER {
                    return Err(Failure::Remote {
                        status: 1,
                        message: format!(
                            "barman get-wal --peek answered more than {MAX_PEEK_ANSWER} bytes"
                        ),
                    });
                }
            }
            Ok::<(), Failure>(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Connection(format!(
                "barman get-wal --peek did not end within {} s (--io-timeout)",
                bound.as_secs()
            )))
        });
        let exit = match read {
            Ok(()) => Some(exec.finish().await),
            Err(_) => {
                exec.abandon().await;
                None
            }
        };
        self.channel_done();
        read?;
        let exit = exit.expect("a finished read has an exit");
        if exit.status != Some(0) {
            return Err(exit.into_failure("barman get-wal --peek"));
        }
        parse_peek(&stdout).map_err(|e| Failure::Remote {
            status: 1,
            message: format!("barman get-wal --peek answered oddly: {e}"),
        })
    }

    fn transfer_for(&self, wal: &WalName) -> Transfer {
        match self.options.transfer {
            Transfer::KeepCompression if self.keep_rejected.load(Ordering::Relaxed) => {
                Transfer::Decompressed
            }
            // Barman always sends .partial files raw.
            Transfer::KeepCompression if wal.kind() == WalKind::Partial => Transfer::Decompressed,
            other => other,
        }
    }

    /// Fetches `wal` to `dest`: written under a temp name beside `dest`,
    /// decoded while it arrives, validated, synced, renamed. A segment is
    /// asked for as itself and held to a complete segment's rules, even
    /// with `-P`: only [`Fetcher::transfer_requested`] takes a `.partial`
    /// in its place, so nothing stores a `.partial`'s bytes in the spool
    /// under a full segment's name.
    pub async fn transfer(&self, wal: &WalName, dest: &Path) -> Result<Delivered, Failure> {
        self.transfer_as(wal, dest, Lookup::AsNamed).await
    }

    /// Fetches the file PostgreSQL asked for to `%p`. With `-P`, a segment
    /// Barman does not have is asked for again with `--partial`, and
    /// Barman's answer (its `.partial` of that segment) is judged as the
    /// `.partial` it is: the WAL may end before the segment does. Asked in
    /// two steps because Barman's answer does not say which file it sent:
    /// in one step a complete segment whose end was lost would pass as a
    /// `.partial`.
    pub async fn transfer_requested(
        &self,
        wal: &WalName,
        dest: &Path,
    ) -> Result<Delivered, Failure> {
        let result = self.transfer(wal, dest).await;
        match result {
            Err(Failure::NotFound(_)) if self.options.partial && wal.kind() == WalKind::Segment => {
                tracing::debug!("Barman has no {wal}; asking for its .partial (-P)");
                self.transfer_as(wal, dest, Lookup::PartialOfSegment).await
            }
            other => other,
        }
    }

    async fn transfer_as(
        &self,
        wal: &WalName,
        dest: &Path,
        lookup: Lookup,
    ) -> Result<Delivered, Failure> {
        if wal.kind() != WalKind::Partial && lookup == Lookup::AsNamed {
            if let Some(layout) = self.layout() {
                if let Some(delivered) = self.transfer_direct(&layout, wal, dest).await? {
                    return Ok(delivered);
                }
            }
        }
        let mut transfer = self.transfer_for(wal);
        loop {
            match self.transfer_once(wal, dest, transfer, lookup).await {
                Err(Attempt::RetryDecompressed(why)) if transfer != Transfer::Decompressed => {
                    tracing::debug!("{wal}: {why}; asking Barman to decompress it instead");
                    transfer = Transfer::Decompressed;
                }
                Err(Attempt::RetryDecompressed(why)) => return Err(Failure::BadPayload(why)),
                Err(Attempt::Failed(failure)) => return Err(failure),
                Ok(delivered) => return Ok(delivered),
            }
        }
    }

    async fn transfer_once(
        &self,
        wal: &WalName,
        dest: &Path,
        transfer: Transfer,
        lookup: Lookup,
    ) -> Result<Delivered, Attempt> {
        // A `.partial` name is found only with `--partial`, as Barman's own
        // client does it; a segment only when asked for its `.partial`.
        let (partial_flag, rules) = match (wal.kind(), lookup) {
            (WalKind::Partial, _) => (self.options.partial, WalKind::Partial),
            (kind, Lookup::AsNamed) => (false, kind),
            (_, Lookup::PartialOfSegment) => (true, WalKind::Partial),
        };
        let command = self.server.get_wal(wal, transfer, partial_flag);
        match self.stream(&command, wal, dest, rules).await {
            Ok(delivered) => Ok(delivered),
            Err(StreamEnd::Remote(exit)) => {
                if self.options.auto_keep
                    && transfer == Transfer::KeepCompression
                    && exit.is_usage_error()
                {
                    self.keep_rejected.store(true, Ordering::Relaxed);
                    return Err(Attempt::RetryDecompressed(
                        "this Barman does not know --keep-compression".into(),
                    ));
                }
                Err(Attempt::Failed(exit.into_failure(&format!(
                    "barman get-wal {wal}' on '{}",
                    self.session.target().display()
                ))))
            }
            Err(StreamEnd::Undecodable(why)) => Err(Attempt::RetryDecompressed(why)),
            Err(StreamEnd::Failed(failure)) => Err(Attempt::Failed(failure)),
        }
    }

    /// Runs `command` and delivers its stdout to `dest`: a temp name beside
    /// it, decoded while it arrives, validated, synced, renamed.
    /// `rules`: the kind of file the bytes are checked as.
    async fn stream(
        &self,
        command: &str,
        wal: &WalName,
        dest: &Path,
        rules: WalKind,
    ) -> Result<Delivered, StreamEnd> {
        let started = Instant::now();
        let local = |e: std::io::Error| StreamEnd::Failed(spool::dest_failure(dest, &e));
        let dir = spool::parent_dir(dest);
        let (temp, file) = TempFile::create_in(dir, wal.as_str()).map_err(local)?;
        let output = file.try_clone().map_err(local)?;
        let mut exec = self.exec(command).await.map_err(StreamEnd::Failed)?;
        let mut sink = DecodeSink::start(output, rules);
        let bound = self.session.target().io_timeout * TRANSFER_IO_TIMEOUTS;
        let streamed = tokio::time::timeout(bound, async {
            while let Some(chunk) = exec.next_stdout().await? {
                if !sink.feed(chunk).await {
                    return Ok(false);
                }
            }
            Ok::<bool, Failure>(true)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Remote {
                status: 1,
                message: format!(
                    "{wal}: the transfer did not end within {} s ({TRANSFER_IO_TIMEOUTS} x \
                     --io-timeout) although bytes kept coming: the Barman host sends too slowly",
                    bound.as_secs()
                ),
            })
        });
        let (exit, transport) = match streamed {
            Ok(true) => (Some(exec.finish().await), None),
            Ok(false) => {
                exec.abandon().await;
                (None, None)
            }
            Err(failure) => {
                exec.abandon().await;
                (None, Some(failure))
            }
        };
        self.channel_done();
        let decoded = sink.finish().await;
        // What went wrong first decides the answer: the transport, then the
        // remote command's own status, then what we made of the bytes.
        if let Some(failure) = transport {
            return Err(StreamEnd::Failed(failure));
        }
        if let Some(exit) = exit {
            if exit.status != Some(0) {
                return Err(StreamEnd::Remote(exit));
            }
        }
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(e @ DecodeError::UnknownFormat(_)) => {
                return Err(StreamEnd::Undecodable(format!("{wal}: {e}")));
            }
            Err(DecodeError::Write(e)) => return Err(local(e)),
            Err(e @ DecodeError::Corrupt { .. }) => {
                return Err(StreamEnd::Failed(Failure::BadPayload(format!(
                    "{wal}: {e}"
                ))));
            }
        };
        if self.options.verify {
            self.check(wal, decoded.bytes_out, &decoded.head)
                .map_err(|why| StreamEnd::Failed(Failure::BadPayload(why)))?;
            if let Some(Err(why)) = &decoded.records {
                return Err(StreamEnd::Failed(Failure::BadPayload(format!(
                    "{wal}: {why}"
                ))));
            }
        }
        // fsync of a 16 MiB segment takes tens of ms: on a runtime thread it
        // would stall the session's other channels.
        let (file, final_path) = (decoded.file, dest.to_path_buf());
        tokio::task::spawn_blocking(move || temp.commit(&file, &final_path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("commit task failed: {e}"))))
            .map_err(local)?;
        Ok(Delivered {
            wal: wal.clone(),
            path: dest.to_path_buf(),
            format: decoded.format,
            bytes_in: decoded.bytes_in,
            bytes_out: decoded.bytes_out,
            elapsed: started.elapsed(),
        })
    }

    /// Learns the archive layout for `--direct-read`: from the cache when
    /// fresh, else (when `ask_barman`) from `barman show-server`. Without a
    /// layout, every file goes through get-wal.
    pub async fn learn_layout(&self, cache: Option<PathBuf>, ask_barman: bool) {
        let cached = cache.as_deref().and_then(direct::load_cache);
        let state = match cached {
            Some(state) => state,
            None if !ask_barman => return,
            None => {
                let command = direct::show_server_command(&self.server);
                let answer = match self.exec(&command).await {
                    Ok(exec) => read_small(exec).await,
                    Err(_) => None,
                };
                self.channel_done();
                match answer.and_then(|text| direct::ArchiveLayout::parse_show_server(&text)) {
                    Some(layout) => {
                        let state = DirectState::Available(layout);
                        if let Some(path) = &cache {
                            direct::store_cache(path, &state);
                        }
                        state
                    }
                    None => {
                        tracing::debug!("barman show-server gave no archive layout; using get-wal");
                        return;
                    }
                }
            }
        };
        *self.direct.lock().unwrap() = Some(DirectRead { state, cache });
    }

    /// The layout, while direct reads are usable on this target.
    fn layout(&self) -> Option<ArchiveLayout> {
        match self.direct.lock().unwrap().as_ref().map(|d| &d.state) {
            Some(DirectState::Available(layout)) => Some(layout.clone()),
            _ => None,
        }
    }

    /// The account refused `cat` or `ls`: say so once, remember it, and use
    /// get-wal from now on.
    fn direct_refused(&self, why: &str) {
        self.stop_direct_reads(&format!("direct read refused ({why})"));
    }

    /// Direct reads cost a transfer and then a get-wal anyway: say so once
    /// and use get-wal alone, remembered in the cache for its lifetime.
    fn stop_direct_reads(&self, what: &str) {
        let mut direct = self.direct.lock().unwrap();
        if let Some(d) = direct.as_mut() {
            if d.state != DirectState::Restricted {
                d.state = DirectState::Restricted;
                if let Some(path) = &d.cache {
                    direct::store_cache(path, &DirectState::Restricted);
                }
                tracing::debug!("{what}; using barman get-wal instead");
            }
        }
    }

    /// Reads a stored file where get-wal would find it. `Ok(None)`: direct
    /// read cannot settle it, ask get-wal.
    async fn transfer_direct(
        &self,
        layout: &ArchiveLayout,
        wal: &WalName,
        dest: &Path,
    ) -> Result<Option<Delivered>, Failure> {
        for path in layout.candidates(wal) {
            match self
                .stream(&direct::cat_command(&path), wal, dest, wal.kind())
                .await
            {
                Ok(delivered) => return Ok(Some(delivered)),
                Err(StreamEnd::Remote(exit))
                    if direct::is_missing_file(exit.status, &exit.stderr) => {}
                Err(StreamEnd::Remote(exit)) => {
                    let said = exit.stderr_lines().join(" / ");
                    self.direct_refused(&format!("cat exited with {:?}: {said}", exit.status));
                    return Ok(None);
                }
                Err(StreamEnd::Undecodable(why)) => {
                    // Encryption and custom compression are server-wide
                    // settings: the next files will be the same.
                    self.stop_direct_reads(&format!(
                        "{why}: only Barman can read this archive's files"
                    ));
                    return Ok(None);
                }
                Err(StreamEnd::Failed(failure)) => return Err(failure),
            }
        }
        Ok(None)
    }

    /// Lists what follows `wal` in the archive without Barman: its log's
    /// directory, and the next log's when that one runs out.
    async fn peek_direct(
        &self,
        layout: &ArchiveLayout,
        wal: &WalName,
        count: usize,
    ) -> Option<Vec<WalName>> {
        let (tli, (log, _)) = (wal.timeline(), wal.position());
        let mut names = Vec::new();
        for log in [log, log.checked_add(1)?] {
            let dir = layout.hash_dir(&format!("{tli:08X}{log:08X}"));
            let exec = self.exec(&direct::list_command(&dir)).await.ok();
            let listing = match exec {
                Some(exec) => read_small_bytes(exec).await,
                None => None,
            };
            self.channel_done();
            match listing {
                Some((Some(0), bytes)) => names.extend(direct::names_after(&bytes, wal)),
                Some((Some(2), _)) => {} // no such directory: the archive ends there
                _ => {
                    self.direct_refused("ls was refused");
                    return None;
                }
            }
            if names.len() + 1 >= count {
                break;
            }
        }
        names.truncate(count.saturating_sub(1));
        Some(names)
    }

    fn check(&self, wal: &WalName, size: u64, head: &[u8]) -> Result<(), String> {
        let Some(sysid) = validate::check(wal, size, head)? else {
            return Ok(());
        };
        let mut expected = self.system_identifier.lock().unwrap();
        match *expected {
            None => {
                *expected = Some(sysid);
                Ok(())
            }
            Some(first) if first == sysid => Ok(()),
            Some(first) => Err(format!(
                "{wal} comes from database system {sysid}, the other segments from {first}: \
                 the archive mixes clusters"
            )),
        }
    }

    /// Fetches `names` into the spool, at most `window` at once; each slot
    /// is refilled as soon as a transfer ends. Failures are reported, not
    /// fatal: a prefetch only saves a later call some time.
    pub async fn prefetch(
        self: &Arc<Self>,
        names: Vec<WalName>,
        spool: &Spool,
        window: usize,
    ) -> Vec<Result<Delivered, (WalName, Failure)>> {
        let permits = Arc::new(Semaphore::new(window.max(1)));
        let mut tasks = Vec::with_capacity(names.len());
        for wal in names {
            let fetcher = Arc::clone(self);
            let permits = Arc::clone(&permits);
            let dest = spool.path_of(&wal);
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                fetcher.transfer(&wal, &dest).await.map_err(|e| (wal, e))
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            if let Ok(result) = task.await {
                results.push(result);
            }
        }
        results
    }
}

/// How streaming a command's output ended, when it did not deliver.
enum StreamEnd {
    /// The command exited non-zero: the caller knows what that means.
    Remote(RemoteExit),
    /// The bytes are in no format we decode.
    Undecodable(String),
    Failed(Failure),
}

/// Direct-read state of a fetcher.
struct DirectRead {
    state: DirectState,
    cache: Option<PathBuf>,
}

/// Reads a small answer (show-server, a listing) to its end.
async fn read_small_bytes(mut exec: ExecChannel) -> Option<(Option<u32>, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match exec.next_stdout().await {
            Ok(Some(chunk)) => {
                if out.len() < (16 << 20) {
                    out.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(_) => {
                exec.abandon().await;
                return None;
            }
        }
    }
    let exit = exec.finish().await;
    Some((exit.status, out))
}

async fn read_small(exec: ExecChannel) -> Option<String> {
    match read_small_bytes(exec).await? {
        (Some(0), bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    }
}

/// Which file Barman is asked for under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The file of that name, judged by its kind's rules.
    AsNamed,
    /// With `-P`, for a segment Barman does not have: its `.partial`.
    PartialOfSegment,
}

/// How one attempt at a transfer ended, when it did not deliver.
enum Attempt {
    /// The stored bytes are not something we decode (or the server does not
    /// know `--keep-compression`): ask Barman to decompress instead.
    RetryDecompressed(String),
    Failed(Failure),
}
