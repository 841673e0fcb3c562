//! Connecting: one session with bounded retries, and a fetcher on it that
//! has learnt the archive layout when `--direct-read` asks for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::direct::{ArchiveLayout, DirectRead, DirectState};
use super::output::{self, Beyond};
use super::Fetcher;
use crate::config::Config;
use crate::error::Error;
use crate::spool::names::{DECODER_MEMORY_PREFIX, KEEP_REFUSED_PREFIX, LAYOUT_PREFIX};
use crate::spool::Spool;
use crate::ssh::{Session, SessionStats, SshTarget};

/// How many times a call tries to connect before it reports a connection
/// failure (a reconnect after a session broke mid-transfer tries once).
pub const CONNECT_ATTEMPTS: u32 = 3;
/// The most of a `show-server` answer kept: a few dozen lines.
const SHOW_SERVER_CAP: usize = 16 << 20;

/// How long what was learnt of a Barman is trusted before it is asked
/// again: the layout (`show-server`), and that it refuses
/// `--keep-compression`.
pub const CACHE_LIFETIME: Duration = Duration::from_secs(300);

/// Where a connection may learn the archive layout for `--direct-read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutSource {
    /// The spool's cache, else `barman show-server`.
    CacheOrBarman,
    /// The spool's cache only: for one small file, a `show-server` costs
    /// the same Barman start-up as the `get-wal` it would save.
    CacheOnly,
}

/// One session and a fetcher on it, with the archive layout learnt when
/// `--direct-read` asks for it (the spool caches that answer).
pub async fn connect(
    config: &Config,
    target: &Arc<SshTarget>,
    spool: Option<&Spool>,
    stats: &Arc<SessionStats>,
    attempts: u32,
    layout: LayoutSource,
) -> Result<Arc<Fetcher>, Error> {
    let session = Arc::new(connect_with_retries(target.clone(), stats.clone(), attempts).await?);
    let server = &config.server;
    let fetcher = Arc::new(Fetcher::new(
        session,
        server.clone(),
        config.transfer.clone(),
    ));
    let key = format!(
        "{}|{:?}|{}",
        target.display(),
        server.config(),
        server.name()
    );
    if let Some(spool) = spool {
        fetcher.remember_keep_refusal_in(cache_path(spool.dir(), KEEP_REFUSED_PREFIX, &key));
        fetcher.remember_decoder_memory_in(cache_path(spool.dir(), DECODER_MEMORY_PREFIX, &key));
    }
    if config.transfer.direct_read {
        let cache = spool.map(|s| cache_path(s.dir(), LAYOUT_PREFIX, &key));
        fetcher
            .learn_layout(cache, layout == LayoutSource::CacheOrBarman)
            .await;
    }
    Ok(fetcher)
}

/// Connects with bounded retries: a transient failure (refused, reset,
/// timed out) is tried again after a growing pause; a host key or
/// authentication refusal is not, since it cannot change by waiting.
pub async fn connect_with_retries(
    target: Arc<SshTarget>,
    stats: Arc<SessionStats>,
    attempts: u32,
) -> Result<Session, Error> {
    let mut pause = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match Session::connect(target.clone(), stats.clone()).await {
            Ok(session) => return Ok(session),
            Err(e) if attempt >= attempts || !e.kind().is_retryable() => return Err(e),
            Err(e) => {
                tracing::debug!("attempt {attempt}/{attempts}: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
                attempt += 1;
            }
        }
    }
}

/// The cache file of one kind (`prefix`) for one target: host, user, port,
/// config and server.
pub fn cache_path(spool: &Path, prefix: &str, key: &str) -> PathBuf {
    // FNV-1a: a stable name for a short key, no cryptography needed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    spool.join(format!("{prefix}{hash:016x}"))
}

/// Whether a cache file was written within [`CACHE_LIFETIME`].
pub fn is_fresh(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|written| SystemTime::now().duration_since(written).ok())
        .is_some_and(|age| age <= CACHE_LIFETIME)
}

/// The text of a cache file written within [`CACHE_LIFETIME`].
pub fn read_fresh(path: &Path) -> Option<String> {
    if !is_fresh(path) {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Writes a cache file under a temp name and renames it, so a concurrent
/// reader sees the old entry or the new one; its time of writing is what
/// [`is_fresh`] reads. A cache that cannot be written is only a lost
/// saving.
pub fn write_cache(path: &Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if let Ok((temp, mut file)) = crate::spool::TempFile::create_in(dir, "cache") {
        use std::io::Write;
        if file.write_all(text.as_bytes()).is_ok() {
            let _ = temp.commit(&file, path);
        }
    }
}

pub fn load_cache(path: &Path) -> Option<DirectState> {
    let text = read_fresh(path)?;
    if text.trim() == "restricted" {
        return Some(DirectState::Restricted);
    }
    ArchiveLayout::parse_show_server(&text).map(DirectState::Available)
}

/// Stores the layout learnt (or that the account may not read it).
pub fn store_cache(path: &Path, state: &DirectState) {
    let text = match state {
        DirectState::Restricted => "restricted\n".to_string(),
        DirectState::Available(l) => format!(
            "wals_directory: {}\nincoming_wals_directory: {}\nstreaming_wals_directory: {}\n",
            l.wals, l.incoming, l.streaming
        ),
    };
    write_cache(path, &text);
}

impl Fetcher {
    /// Learns the archive layout for `--direct-read`: from the cache when
    /// fresh, else (when `ask_barman`) from `barman show-server`. Without a
    /// layout, every file goes through get-wal.
    pub async fn learn_layout(&self, cache: Option<PathBuf>, ask_barman: bool) {
        let cached = cache.as_deref().and_then(load_cache);
        let state = match cached {
            Some(state) => state,
            None if !ask_barman => return,
            None => {
                let command = self.server.show_server();
                let answer = match self.exec(&command).await {
                    Ok(exec) => output::read(exec, SHOW_SERVER_CAP, Beyond::Drop, None)
                        .await
                        .ok()
                        .filter(|answer| answer.exit.status == Some(0))
                        .map(|answer| String::from_utf8_lossy(&answer.stdout).into_owned()),
                    Err(_) => None,
                };
                self.channel_done();
                match answer.and_then(|text| ArchiveLayout::parse_show_server(&text)) {
                    Some(layout) => {
                        let state = DirectState::Available(layout);
                        if let Some(path) = &cache {
                            store_cache(path, &state);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::direct::tests::SHOW;

    #[test]
    fn cache_round_trips_and_expires_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path(), LAYOUT_PREFIX, "barman@host:22 angus");
        assert!(load_cache(&path).is_none());
        let layout = ArchiveLayout::parse_show_server(SHOW).unwrap();
        store_cache(&path, &DirectState::Available(layout.clone()));
        assert_eq!(load_cache(&path), Some(DirectState::Available(layout)));
        store_cache(&path, &DirectState::Restricted);
        assert_eq!(load_cache(&path), Some(DirectState::Restricted));
    }
}
