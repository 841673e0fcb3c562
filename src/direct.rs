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
use std::time::{Duration, SystemTime};

use crate::remote::{shell_quote, BarmanServer};
use crate::wal::{WalKind, WalName};

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

/// How long a learnt layout is trusted before `show-server` is asked again.
pub const CACHE_LIFETIME: Duration = Duration::from_secs(300);

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

pub fn show_server_command(server: &BarmanServer) -> String {
    match server.config() {
        Some(config) => format!(
            "barman --config {} show-server {}",
            shell_quote(config),
            shell_quote(server.name())
        ),
        None => format!("barman show-server {}", shell_quote(server.name())),
    }
}

pub fn cat_command(path: &str) -> String {
    format!("cat -- {}", shell_quote(path))
}

pub fn list_command(dir: &str) -> String {
    format!("ls -1 -- {}", shell_quote(dir))
}

/// Whether `cat` failed because the file is not there (then try the next
/// place), as opposed to being refused.
pub fn is_missing_file(status: Option<u32>, stderr: &[u8]) -> bool {
    status == Some(1) && String::from_utf8_lossy(stderr).contains("No such file")
}

/// The cache file for one target: host, user, port, config and server.
pub fn cache_path(spool: &Path, key: &str) -> PathBuf {
    // FNV-1a: a stable name for a short key, no cryptography needed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    spool.join(format!("{}{hash:016x}", crate::spool::names::LAYOUT_PREFIX))
}

pub fn load_cache(path: &Path) -> Option<DirectState> {
    let meta = std::fs::metadata(path).ok()?;
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .ok()?;
    if age > CACHE_LIFETIME {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    if text.trim() == "restricted" {
        return Some(DirectState::Restricted);
    }
    ArchiveLayout::parse_show_server(&text).map(DirectState::Available)
}

/// Stores what was learnt; written under a temp name and renamed, so a
/// concurrent reader sees the old entry or the new one.
pub fn store_cache(path: &Path, state: &DirectState) {
    let text = match state {
        DirectState::Restricted => "restricted\n".to_string(),
        DirectState::Available(l) => format!(
            "wals_directory: {}\nincoming_wals_directory: {}\nstreaming_wals_directory: {}\n",
            l.wals, l.incoming, l.streaming
        ),
    };
    let Some(dir) = path.parent() else { return };
    if let Ok((temp, mut file)) = crate::spool::TempFile::create_in(dir, "layout") {
        use std::io::Write;
        if file.write_all(text.as_bytes()).is_ok() {
            let _ = temp.commit(&file, path);
        }
    }
}

/// Names from a listing of an archive directory that come after `wal`, in
/// order, segments only (Barman's peek never lists partials).
pub fn names_after(listing: &[u8], wal: &WalName) -> Vec<WalName> {
    let mut names: Vec<WalName> = String::from_utf8_lossy(listing)
        .lines()
        .filter_map(|l| WalName::parse(l.trim()).ok())
        .filter(|n| {
            n.is_segment() && n.timeline() == wal.timeline() && n.position() > wal.position()
        })
        .collect();
    names.sort_by(|a, b| a.cmp_position(b));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Server angus:\n\tactive: True\n\tbarman_home: /var/lib/barman\n\
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
    fn cache_round_trips_and_expires_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path(), "barman@host:22 angus");
        assert!(load_cache(&path).is_none());
        let layout = ArchiveLayout::parse_show_server(SHOW).unwrap();
        store_cache(&path, &DirectState::Available(layout.clone()));
        assert_eq!(load_cache(&path), Some(DirectState::Available(layout)));
        store_cache(&path, &DirectState::Restricted);
        assert_eq!(load_cache(&path), Some(DirectState::Restricted));
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
