//! How many streams decode at once, from what their decoders hold.
//!
//! A decoder holds the window its stream declares: 2 MiB for Barman's zstd,
//! 4 MiB for its default xz, 8 MiB at "high", up to a whole segment at
//! xz level 9. Five streams of the last two would take a call far past its
//! memory target (measured: 54 MiB peak at `-p 8` with 8 MiB dictionaries,
//! docs/benchmarks.md). So a stream waits for a slot before its command
//! starts (never after: a started command nobody reads stalls the session,
//! see [`super::spare`]), and the slots are as many as
//! [`DECODER_MEMORY`] allows for the largest decoder seen, within the
//! fetcher's stream limit.
//!
//! Until one stream's header has been read, one stream runs: the first
//! bytes decide how many follow. The spool remembers the answer for the
//! next calls ([`super::connect::CACHE_LIFETIME`]), so only a call without
//! it waits for the first bytes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The decoder memory one session's streams may hold together: with the
/// ~14 MiB the process needs besides, within the 32 MiB target.
pub const DECODER_MEMORY: u64 = 16 << 20;

/// Slots for streams; shared by every transfer of one fetcher.
#[derive(Default)]
pub struct StreamBudget {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    running: usize,
    /// The largest decoder memory seen (or remembered), once known.
    per_stream: Option<u64>,
}

/// How many streams of `per_stream` bytes fit in [`DECODER_MEMORY`], at
/// least one and at most `limit`.
pub fn streams_for(per_stream: u64, limit: usize) -> usize {
    let fit = DECODER_MEMORY / per_stream.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, limit.max(1))
}

/// A stream's slot, given back when dropped.
pub struct Slot {
    budget: Arc<StreamBudget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.lock().running -= 1;
        self.budget.changed.notify_waiters();
    }
}

impl StreamBudget {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot among at most `limit` streams.
    pub async fn slot(self: &Arc<Self>, limit: usize) -> Slot {
        loop {
            // Registered before the check, so a change between the check and
            // the wait is not missed.
            let changed = self.changed.notified();
            {
                let mut state = self.lock();
                let allowed = state.per_stream.map_or(1, |m| streams_for(m, limit));
                if state.running < allowed {
                    state.running += 1;
                    return Slot {
                        budget: Arc::clone(self),
                    };
                }
            }
            changed.await;
        }
    }

    /// A stream's header declared `memory`: the largest seen so far sets
    /// the number of slots. Returns whether it changed.
    pub fn observe(&self, memory: u64) -> bool {
        let grew = {
            let mut state = self.lock();
            let grew = state.per_stream.is_none_or(|seen| memory > seen);
            if grew {
                state.per_stream = Some(memory);
            }
            grew
        };
        if grew {
            self.changed.notify_waiters();
        }
        grew
    }

    /// What the largest decoder seen holds, once known.
    pub fn per_stream(&self) -> Option<u64> {
        self.lock().per_stream
    }
}

/// The decoder memory remembered at `path`, when written within
/// [`super::connect::CACHE_LIFETIME`].
pub fn recall(path: &Path) -> Option<u64> {
    super::connect::read_fresh(path)?.trim().parse().ok()
}

/// Remembers `bytes` at `path` for [`recall`].
pub fn remember(path: &Path, bytes: u64) {
    super::connect::write_cache(path, &format!("{bytes}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_decide_how_many_streams_decode_at_once() {
        let mib = 1 << 20;
        assert_eq!(
            streams_for(2 * mib, 5),
            5,
            "Barman's zstd: the stream limit"
        );
        assert_eq!(streams_for(4 * mib, 5), 4, "Barman's default xz");
        assert_eq!(streams_for(8 * mib, 5), 2, "xz at Barman's \"high\"");
        assert_eq!(streams_for(64 * mib, 5), 1, "xz level 9: one at a time");
        assert_eq!(streams_for(0, 5), 5, "plain: the stream limit");
        assert_eq!(
            streams_for(64 << 10, 4),
            4,
            "gzip under --direct-read's limit"
        );
    }

    #[tokio::test]
    async fn one_stream_runs_until_a_header_is_read_then_the_window_decides() {
        let budget = Arc::new(StreamBudget::default());
        let first = budget.slot(5).await;
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { (budget.slot(5).await, budget.slot(5).await) }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a second stream waits for the first header"
        );
        budget.observe(8 << 20);
        let (second, third) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            // Two 8 MiB streams fit: the second starts, the third waits.
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished());
            drop(first);
            waiting.await.unwrap()
        })
        .await
        .expect("the slots were given");
        assert_eq!(budget.lock().running, 2);
        drop((second, third));
        assert_eq!(budget.lock().running, 0);
        assert!(!budget.observe(2 << 20), "a smaller window changes nothing");
        assert_eq!(budget.per_stream(), Some(8 << 20));
    }
}
