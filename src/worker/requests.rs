//! What callers asked the worker for, and where each request stands.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::wal::WalName;

/// Where one request (by its token) stands: one state at a time, so a
/// request is never both waiting and answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// Waits for its segment.
    Waiting(WalName),
    /// Its segment was in the spool at `since` (delivered, or already there
    /// when the request came): the caller takes it and withdraws the
    /// request within milliseconds.
    Delivered { wal: WalName, since: Instant },
    /// Answered with an answer file; the caller has not withdrawn it yet.
    Answered,
}

/// The requests the worker has seen and not yet seen withdrawn.
#[derive(Debug, Default)]
pub(super) struct Requests {
    by_token: HashMap<String, Request>,
}

impl Requests {
    pub(super) fn knows(&self, token: &str) -> bool {
        self.by_token.contains_key(token)
    }

    /// Forgets the requests whose callers withdrew them: those not among
    /// `present`, the tokens in the spool now.
    pub(super) fn keep_present(&mut self, present: &HashSet<&str>) {
        self.by_token
            .retain(|token, _| present.contains(token.as_str()));
    }

    /// A request still there `grace` after its segment was delivered, with
    /// the segment gone from the spool, lost a race to another caller: it
    /// waits again. Returns the segments waited for again.
    pub(super) fn reclaim_lost(
        &mut self,
        now: Instant,
        grace: Duration,
        in_spool: impl Fn(&WalName) -> bool,
    ) -> Vec<WalName> {
        let mut again = Vec::new();
        for request in self.by_token.values_mut() {
            if let Request::Delivered { wal, since } = request {
                if now.saturating_duration_since(*since) > grace && !in_spool(wal) {
                    again.push(wal.clone());
                    *request = Request::Waiting(wal.clone());
                }
            }
        }
        again
    }

    /// A new request whose segment is not in the spool.
    pub(super) fn wait(&mut self, token: String, wal: WalName) {
        self.by_token.insert(token, Request::Waiting(wal));
    }

    /// A new request whose segment is already in the spool.
    pub(super) fn found(&mut self, token: String, wal: WalName, now: Instant) {
        self.by_token
            .insert(token, Request::Delivered { wal, since: now });
    }

    /// The requests waiting for `wal` now have it in the spool.
    pub(super) fn delivered(&mut self, wal: &WalName, now: Instant) {
        for request in self.by_token.values_mut() {
            if matches!(request, Request::Waiting(w) if w == wal) {
                *request = Request::Delivered {
                    wal: wal.clone(),
                    since: now,
                };
            }
        }
    }

    /// A waiting request got an answer file. Only a waiting request can:
    /// the others have their segment or their answer already.
    pub(super) fn answered(&mut self, token: &str) {
        if let Some(request) = self.by_token.get_mut(token) {
            if matches!(request, Request::Waiting(_)) {
                *request = Request::Answered;
            }
        }
    }

    pub(super) fn any_waiting(&self) -> bool {
        self.by_token
            .values()
            .any(|r| matches!(r, Request::Waiting(_)))
    }

    pub(super) fn waits_for(&self, wal: &WalName) -> bool {
        self.by_token
            .values()
            .any(|r| matches!(r, Request::Waiting(w) if w == wal))
    }

    /// The tokens of the requests waiting for `wal`.
    pub(super) fn waiting_for(&self, wal: &WalName) -> Vec<String> {
        self.tokens_where(|w| w == wal)
    }

    /// The tokens of every waiting request.
    pub(super) fn waiting(&self) -> Vec<String> {
        self.tokens_where(|_| true)
    }

    /// The segments waited for, each once, in WAL order.
    pub(super) fn waited(&self) -> Vec<WalName> {
        let mut segments: Vec<WalName> = self
            .by_token
            .values()
            .filter_map(|r| match r {
                Request::Waiting(wal) => Some(wal.clone()),
                _ => None,
            })
            .collect();
        segments.sort_by(|a, b| a.cmp_position(b));
        segments.dedup();
        segments
    }

    fn tokens_where(&self, wanted: impl Fn(&WalName) -> bool) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .by_token
            .iter()
            .filter(|(_, r)| matches!(r, Request::Waiting(w) if wanted(w)))
            .map(|(token, _)| token.clone())
            .collect();
        tokens.sort();
        tokens
    }

    #[cfg(test)]
    pub(super) fn state(&self, token: &str) -> Option<&Request> {
        self.by_token.get(token)
    }
}
