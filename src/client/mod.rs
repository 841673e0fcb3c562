//! The client of the Barman host: everything said to it over one session.
//!
//! - [`connect`]: the session, with bounded retries, and the archive layout
//!   learnt from `barman show-server` for `--direct-read`.
//! - [`getwal`]: files and listings through `barman get-wal`.
//! - [`direct`]: `--direct-read`, the stored files read with `cat`.
//! - [`window`]: the prefetch window, for a call and for the worker.
//! - [`command`]: every remote command line, and what its answers mean.
//! - [`output`]: the bounded reader of a command's whole answer.
//! - [`spare`]: channels opened ahead of the commands that will use them.
//! - [`budget`]: how many streams decode at once, from what their decoders
//!   hold.
//!
//! This module holds the [`Fetcher`], which a call and the `--async` worker
//! share: [`Fetcher::transfer`] moves one file (one channel, decoded as it
//! arrives, validated, then renamed into place); [`Fetcher::prefetch`]
//! keeps up to N of those in flight for a list of names, a sliding window
//! rather than batches, treating a refused channel (OpenSSH's `MaxSessions`)
//! as back-pressure. With `--direct-read` both read the stored files first
//! and ask `barman get-wal` for whatever that cannot settle.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::config::{Server, Transfer};
use crate::decode::{DecodeError, DecodeSink, Format};
use crate::error::{Error, ErrorKind};
use crate::spool::{self, Spool, TempFile};
use crate::ssh::{ExecChannel, OpenError, RemoteExit, Session};
use crate::validate;
use crate::wal::{WalKind, WalName};

pub mod budget;
pub mod command;
pub mod connect;
pub mod direct;
pub mod getwal;
pub mod output;
pub mod spare;
pub mod window;

use budget::StreamBudget;
pub use connect::{connect, connect_with_retries, LayoutSource, CONNECT_ATTEMPTS};
use direct::DirectRead;
use spare::SpareChannels;
pub use window::Window;

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
    server: Server,
    /// How files are asked for and checked.
    transfer: Transfer,
    /// Signalled whenever one of our channels ends: a refused open waits
    /// for it before trying again.
    slot_freed: Notify,
    /// Set once the server rejected `--keep-compression` (or an earlier
    /// call remembered that it does).
    keep_rejected: AtomicBool,
    /// Where a rejection is remembered for later calls (in the spool).
    keep_memory: Mutex<Option<PathBuf>>,
    /// The system identifier of the first segment delivered: every later
    /// segment of this fetcher must share it.
    system_identifier: Mutex<Option<u64>>,
    /// Set by [`Fetcher::learn_layout`] for `--direct-read`.
    direct: Mutex<Option<DirectRead>>,
    /// Channels opened before their commands are known.
    spare: SpareChannels,
    /// How many streams decode at once, from what their decoders hold.
    budget: Arc<StreamBudget>,
    /// Where the largest decoder seen is remembered for later calls.
    decoder_memory: Mutex<Option<PathBuf>>,
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
    pub fn new(session: Arc<Session>, server: Server, transfer: Transfer) -> Fetcher {
        Fetcher {
            session,
            server,
            transfer,
            slot_freed: Notify::new(),
            keep_rejected: AtomicBool::new(false),
            keep_memory: Mutex::new(None),
            system_identifier: Mutex::new(None),
            direct: Mutex::new(None),
            spare: SpareChannels::default(),
            budget: Arc::default(),
            decoder_memory: Mutex::new(None),
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

    /// Opens an exec channel, waiting while the server refuses new channels,
    /// for at most the io timeout. A channel opened ahead
    /// ([`Fetcher::expect_commands`]) is used first.
    async fn exec(&self, command: &str) -> Result<ExecChannel, Error> {
        if let Some(channel) = self.spare.take(&self.session).await {
            return channel?.exec(command).await;
        }
        let deadline = Instant::now() + self.session.target().io_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.session.exec(command).await {
                Ok(channel) => return Ok(channel),
                Err(OpenError::Failed(failure)) => return Err(failure),
                Err(OpenError::Refused) if Instant::now() >= deadline => {
                    return Err(Error::connection(format!(
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

    /// Where the largest decoder memory seen on this Barman server is
    /// remembered (in the spool): read now, so that a call need not wait
    /// for its first stream's header to know how many streams decode at
    /// once ([`budget`]); written when a stream's header shows more.
    pub fn remember_decoder_memory_in(&self, path: PathBuf) {
        if let Some(bytes) = budget::recall(&path) {
            self.budget.observe(bytes);
        }
        *self
            .decoder_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Expects `count` commands soon, not yet known: channels for up to
    /// [`spare::MAX_SPARE`] of them are opened now, so that starting each
    /// costs one round trip instead of two ([`spare`]).
    pub fn expect_commands(&self, count: usize) {
        self.spare.expect(&self.session, count);
    }

    fn channel_done(&self) {
        self.slot_freed.notify_one();
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
        let local = |e: std::io::Error| StreamEnd::Failed(spool::dest_failure(dest, e));
        let dir = spool::parent_dir(dest);
        let (temp, file) = TempFile::create_in(dir, wal.as_str()).map_err(local)?;
        let output = file.try_clone().map_err(local)?;
        let _slot = self.budget.slot(self.stream_limit()).await;
        let mut exec = self.exec(command).await.map_err(StreamEnd::Failed)?;
        let budget = Arc::clone(&self.budget);
        let memory = self
            .decoder_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut sink = DecodeSink::start(output, rules, move |bytes| {
            if budget.observe(bytes) {
                if let Some(path) = memory {
                    budget::remember(&path, bytes);
                }
            }
        });
        let bound = self.session.target().io_timeout * TRANSFER_IO_TIMEOUTS;
        let streamed = tokio::time::timeout(bound, async {
            while let Some(chunk) = exec.next_stdout().await? {
                if !sink.feed(chunk).await {
                    return Ok(false);
                }
            }
            Ok::<bool, Error>(true)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::TooSlow,
                format!(
                    "{wal}: the transfer did not end within {} s ({TRANSFER_IO_TIMEOUTS} x \
                     --io-timeout) although bytes kept coming: the Barman host sends too slowly",
                    bound.as_secs()
                ),
            ))
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
                return Err(StreamEnd::Failed(Error::bad_payload(format!("{wal}: {e}"))));
            }
        };
        if self.transfer.verify {
            self.check(wal, decoded.bytes_out, &decoded.head)
                .map_err(|why| StreamEnd::Failed(Error::bad_payload(why)))?;
            if let Some(Err(why)) = &decoded.records {
                return Err(StreamEnd::Failed(Error::bad_payload(format!(
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
    ) -> Vec<Result<Delivered, (WalName, Error)>> {
        let permits = Arc::new(Semaphore::new(window.max(1)));
        self.expect_commands(names.len());
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
        self.expect_commands(0);
        results
    }
}

/// How streaming a command's output ended, when it did not deliver.
enum StreamEnd {
    /// The command exited non-zero: the caller knows what that means.
    Remote(RemoteExit),
    /// The bytes are in no format we decode.
    Undecodable(String),
    Failed(Error),
}
