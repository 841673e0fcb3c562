//! The get-wal path: files and listings asked of `barman get-wal`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::command::parse_peek;
use super::output::{self, Beyond};
use super::{Delivered, Fetcher, StreamEnd, MAX_PEEK_ANSWER};
use crate::config::Compression;
use crate::error::{Error, ErrorKind};
use crate::wal::{WalKind, WalName};

impl Fetcher {
    /// `get-wal --peek N`: the names Barman has from `wal` on.
    pub async fn peek(&self, wal: &WalName, count: usize) -> Result<Vec<WalName>, Error> {
        if let Some(layout) = self.layout() {
            if let Some(names) = self.peek_direct(&layout, wal, count).await {
                return Ok(names);
            }
        }
        let command = self.server.peek(wal, count);
        let exec = self.exec(&command).await?;
        // A listing is a few KiB: one that keeps coming (a trickle resets
        // the idle timer) is cut, not waited for.
        let what = "barman get-wal --peek";
        let bound = self.session.target().io_timeout;
        let answer = output::read(
            exec,
            MAX_PEEK_ANSWER,
            Beyond::Refuse(what),
            Some((bound, what)),
        )
        .await;
        self.channel_done();
        let answer = answer?;
        if answer.exit.status != Some(0) {
            return Err(answer.exit.into_failure(what));
        }
        parse_peek(&answer.stdout)
            .map_err(|e| Error::bad_payload(format!("barman get-wal --peek answered oddly: {e}")))
    }

    /// Where a refusal of `--keep-compression` by this Barman is
    /// remembered. A refusal remembered there within
    /// [`super::connect::CACHE_LIFETIME`] is taken as this call's own: a
    /// Barman without the option (Debian 12's 3.4) then costs a refused
    /// get-wal every few minutes, not in every call that misses (each is a
    /// Python start-up on the Barman host).
    /// Only when we chose `--keep-compression`: asked for by the user, a
    /// refusal fails as with the Python original.
    pub fn remember_keep_refusal_in(&self, path: PathBuf) {
        if self.transfer.auto_keep && super::connect::is_fresh(&path) {
            tracing::debug!(
                "this Barman refused --keep-compression a moment ago ({}); asking it to decompress",
                path.display()
            );
            self.keep_rejected.store(true, Ordering::Relaxed);
        }
        *self.keep_memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    fn remember_keep_refusal(&self) {
        let memory = self.keep_memory.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = memory.as_ref() {
            super::connect::write_cache(path, "--keep-compression refused\n");
        }
    }

    fn transfer_for(&self, wal: &WalName) -> Compression {
        match self.transfer.compression {
            Compression::KeepCompression if self.keep_rejected.load(Ordering::Relaxed) => {
                Compression::Decompressed
            }
            // Barman always sends .partial files raw.
            Compression::KeepCompression if wal.kind() == WalKind::Partial => {
                Compression::Decompressed
            }
            other => other,
        }
    }

    /// Fetches `wal` to `dest`: written under a temp name beside `dest`,
    /// decoded while it arrives, validated, synced, renamed. A segment is
    /// asked for as itself and held to a complete segment's rules, even
    /// with `-P`: only [`Fetcher::transfer_requested`] takes a `.partial`
    /// in its place, so nothing stores a `.partial`'s bytes in the spool
    /// under a full segment's name.
    pub async fn transfer(&self, wal: &WalName, dest: &Path) -> Result<Delivered, Error> {
        self.transfer_as(wal, dest, Lookup::AsNamed).await
    }

    /// Fetches the file PostgreSQL asked for to `%p`. With `-P`, a segment
    /// Barman does not have is asked for again with `--partial`, and
    /// Barman's answer (its `.partial` of that segment) is judged as the
    /// `.partial` it is: the WAL may end before the segment does. Asked in
    /// two steps because Barman's answer does not say which file it sent:
    /// in one step a complete segment whose end was lost would pass as a
    /// `.partial`.
    pub async fn transfer_requested(&self, wal: &WalName, dest: &Path) -> Result<Delivered, Error> {
        let result = self.transfer(wal, dest).await;
        match result {
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && self.transfer.partial
                    && wal.kind() == WalKind::Segment =>
            {
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
    ) -> Result<Delivered, Error> {
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
                Err(Attempt::RetryDecompressed(why)) if transfer != Compression::Decompressed => {
                    tracing::debug!("{wal}: {why}; asking Barman to decompress it instead");
                    transfer = Compression::Decompressed;
                }
                Err(Attempt::RetryDecompressed(why)) => return Err(Error::bad_payload(why)),
                Err(Attempt::Failed(failure)) => return Err(failure),
                Ok(delivered) => return Ok(delivered),
            }
        }
    }

    async fn transfer_once(
        &self,
        wal: &WalName,
        dest: &Path,
        transfer: Compression,
        lookup: Lookup,
    ) -> Result<Delivered, Attempt> {
        // A `.partial` name is found only with `--partial`, as Barman's own
        // client does it; a segment only when asked for its `.partial`.
        let (partial_flag, rules) = match (wal.kind(), lookup) {
            (WalKind::Partial, _) => (self.transfer.partial, WalKind::Partial),
            (kind, Lookup::AsNamed) => (false, kind),
            (_, Lookup::PartialOfSegment) => (true, WalKind::Partial),
        };
        let command = self.server.get_wal(wal, transfer, partial_flag);
        match self.stream(&command, wal, dest, rules).await {
            Ok(delivered) => Ok(delivered),
            Err(StreamEnd::Remote(exit)) => {
                if self.transfer.auto_keep
                    && transfer == Compression::KeepCompression
                    && exit.is_usage_error()
                {
                    self.keep_rejected.store(true, Ordering::Relaxed);
                    self.remember_keep_refusal();
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
    Failed(Error),
}
