//! Direct archive read (`--direct-read`): fetch the stored files themselves
//! with `cat`, without a `barman get-wal` (a Python start-up on the Barman
//! host's CPU) per file.
//!
//! What it relies on: the ssh account may run `cat` and `ls` (no forced
//! command restricting it to `barman`), and Barman's on-disk layout, learnt
//! once from `barman show-server`: `wals_directory/<TLI+LOG>/<name>`,
//! history files at the top of `wals_directory`, then
//! `incoming_wals_directory` and `streaming_wals_directory`. Anything direct
//! read cannot settle (a file not found, a payload it cannot decode, an
//! account that refuses `cat`) goes to `barman get-wal`: only Barman's own
//! "not found" is a confirmed miss.
//!
//! Why exec `cat` and not SFTP: 8 at a time, as the prefetch runs, both
//! take the same time within noise (docs/benchmarks.md, "Where the
//! constants come from"); one after another, SFTP saves the few ms of a
//! remote `sh -c` per file. Not worth a second
//! protocol and a crate for the same bytes, and a Barman host's sshd may
//! have no SFTP subsystem at all (the real-stack sshd has none), where
//! `cat` runs wherever `barman get-wal` does.
//!
//! Why peek with `ls` of one log's directory and not the server's
//! xlog.db: the directory holds at most 256 names however large the
//! archive; xlog.db has a line for every file ever archived, is slower to
//! read than `ls` long before an archive is old (docs/benchmarks.md), and
//! grows without bound.

use std::path::{Path, PathBuf};

use super::command;
use super::connect::store_cache;
use super::output::{self, Beyond};
use super::window::follows;
use super::{Delivered, Fetcher, StreamEnd};
use crate::error::Error;
use crate::wal::{WalKind, WalName};

/// The most of a directory listing kept: one log's directory holds at
/// most 256 names.
const LISTING_CAP: usize = 16 << 20;

/// Where Barman keeps a server's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLayout {
    pub wals: String,
    pub incoming: String,
    pub streaming: String,
}

/// What a cache entry says about direct reads on this target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectState {
    Available(ArchiveLayout),
    /// Use get-wal: the account refused `cat` (forced command, no shell),
    /// or the archive holds files only Barman can read (encrypted, custom
    /// compression).
    Restricted,
}

impl ArchiveLayout {
    /// Reads the directories out of `barman show-server SERVER`, whose lines
    /// look like `\twals_directory: /var/lib/barman/angus/wals`.
    pub fn parse_show_server(text: &str) -> Option<ArchiveLayout> {
        let mut wals = None;
        let mut incoming = None;
        let mut streaming = None;
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.trim();
            if !value.starts_with('/') {
                continue;
            }
            match key.trim() {
                "wals_directory" => wals = Some(value.to_string()),
                "incoming_wals_directory" => incoming = Some(value.to_string()),
                "streaming_wals_directory" => streaming = Some(value.to_string()),
                _ => {}
            }
        }
        Some(ArchiveLayout {
            wals: wals?,
            incoming: incoming?,
            streaming: streaming?,
        })
    }

    /// The places `barman get-wal` looks, in its order: the archive, then
    /// incoming, then streaming, then the archive once more (the archiver
    /// may have moved the file meanwhile).
    pub fn candidates(&self, wal: &WalName) -> Vec<String> {
        let archived = match wal.hash_dir() {
            Some(hash) if wal.kind() != WalKind::History => {
                format!("{}/{hash}/{}", self.wals, wal.as_str())
            }
            _ => format!("{}/{}", self.wals, wal.as_str()),
        };
        vec![
            archived.clone(),
            format!("{}/{}", self.incoming, wal.as_str()),
            format!("{}/{}", self.streaming, wal.as_str()),
            archived,
        ]
    }

    /// The archive directory holding a segment's log, for a listing.
    pub fn hash_dir(&self, hash: &str) -> String {
        format!("{}/{hash}", self.wals)
    }
}

/// Whether `cat` failed because the file is not there (then try the next
/// place), as opposed to being refused.
pub fn is_missing_file(status: Option<u32>, stderr: &[u8]) -> bool {
    status == Some(1) && String::from_utf8_lossy(stderr).contains("No such file")
}

/// Names from a listing of an archive directory that come after `wal`, in
/// order, segments only (Barman's peek never lists partials).
pub fn names_after(listing: &[u8], wal: &WalName) -> Vec<WalName> {
    let mut names: Vec<WalName> = String::from_utf8_lossy(listing)
        .lines()
        .filter_map(|l| WalName::parse(l.trim()).ok())
        .filter(|n| n.is_segment() && follows(n, wal))
        .collect();
    names.sort_by(|a, b| a.cmp_position(b));
    names
}

impl Fetcher {
    /// The layout, while direct reads are usable on this target.
    pub(super) fn layout(&self) -> Option<ArchiveLayout> {
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
                    store_cache(path, &DirectState::Restricted);
                }
                tracing::debug!("{what}; using barman get-wal instead");
            }
        }
    }

    /// Reads a stored file where get-wal would find it. `Ok(None)`: direct
    /// read cannot settle it, ask get-wal.
    pub(super) async fn transfer_direct(
        &self,
        layout: &ArchiveLayout,
        wal: &WalName,
        dest: &Path,
    ) -> Result<Option<Delivered>, Error> {
        for path in layout.candidates(wal) {
            match self
                .stream(&command::cat(&path), wal, dest, wal.kind())
                .await
            {
                Ok(delivered) => return Ok(Some(delivered)),
                Err(StreamEnd::Remote(exit)) if is_missing_file(exit.status, &exit.stderr) => {}
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
    pub(super) async fn peek_direct(
        &self,
        layout: &ArchiveLayout,
        wal: &WalName,
        count: usize,
    ) -> Option<Vec<WalName>> {
        let (tli, (log, _)) = (wal.timeline(), wal.position());
        let mut names = Vec::new();
        for log in [log, log.checked_add(1)?] {
            let dir = layout.hash_dir(&format!("{tli:08X}{log:08X}"));
            let exec = self.exec(&command::list(&dir)).await.ok();
            let listing = match exec {
                Some(exec) => output::read(exec, LISTING_CAP, Beyond::Drop, None)
                    .await
                    .ok()
                    .map(|answer| (answer.exit.status, answer.stdout)),
                None => None,
            };
            self.channel_done();
            match listing {
                Some((Some(0), bytes)) => names.extend(names_after(&bytes, wal)),
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
}

/// Direct-read state of a fetcher.
pub(super) struct DirectRead {
    pub(super) state: DirectState,
    pub(super) cache: Option<PathBuf>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SHOW: &str = "Server angus:\n\tactive: True\n\tbarman_home: /var/lib/barman\n\
        \tincoming_wals_directory: /var/lib/barman/angus/incoming\n\
        \tstreaming_wals_directory: /var/lib/barman/angus/streaming\n\
        \twals_directory: /var/lib/barman/angus/wals\n";

    #[test]
    fn layout_from_show_server_and_candidates_in_get_wal_order() {
        let layout = ArchiveLayout::parse_show_server(SHOW).unwrap();
        let wal = WalName::parse("000000010000000200000003").unwrap();
        assert_eq!(
            layout.candidates(&wal),
            [
                "/var/lib/barman/angus/wals/0000000100000002/000000010000000200000003",
                "/var/lib/barman/angus/incoming/000000010000000200000003",
                "/var/lib/barman/angus/streaming/000000010000000200000003",
                "/var/lib/barman/angus/wals/0000000100000002/000000010000000200000003",
            ]
        );
        let history = WalName::parse("00000002.history").unwrap();
        assert_eq!(
            layout.candidates(&history)[0],
            "/var/lib/barman/angus/wals/00000002.history"
        );
        assert!(ArchiveLayout::parse_show_server("Server angus:\n\tactive: True\n").is_none());
    }

    #[test]
    fn listings_give_the_following_segments() {
        let wal = WalName::parse("000000010000000000000003").unwrap();
        let listing = b"000000010000000000000004\n000000010000000000000002\n\
            000000010000000000000003.00000028.backup\n000000010000000000000005\n";
        let names: Vec<String> = names_after(listing, &wal)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            ["000000010000000000000004", "000000010000000000000005"]
        );
    }
}
