//! What the worker knows of each segment it deals with: one state per
//! segment, in one table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wal::WalName;

/// A prefetch that failed is not tried again for this long, unless a call
/// asks for that very segment.
pub(super) const PREFETCH_BACKOFF: Duration = Duration::from_secs(5);

/// How long Barman's "not found" for a segment answers a new request for
/// it without asking again, counted from when that get-wal started.
/// PostgreSQL asks for the segment after the archive's end twice in a row
/// when a recovery ends; a second Barman start-up would tell it nothing
/// new. A standby polling the head asks every few seconds, and each of
/// those gets a fresh answer.
pub(super) const MISS_REUSE: Duration = Duration::from_secs(1);

/// Barman's "not found" for a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Miss {
    /// When the get-wal that got it started.
    pub(super) started: Instant,
    pub(super) message: String,
}

/// Where one segment stands. A segment the table does not hold is one the
/// worker has nothing to do with now (or fetches only through the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// To start at the next schedule: a call waits for it, or (`once`) it
    /// is fetched once outside the window (a recovery's first segment, the
    /// archive's last again for the end of recovery).
    Wanted { once: bool },
    /// Its get-wal runs.
    InFlight,
    /// This worker put it in the spool and has not seen it taken yet.
    Spooled,
    /// Its last get-wal failed. As a prefetch it is not tried again for
    /// [`PREFETCH_BACKOFF`] after `since` (`None` once a call asked for
    /// it); Barman's "not found", while fresh, answers requests for it.
    Failed {
        since: Option<Instant>,
        miss: Option<Miss>,
    },
}

/// The segment table. Its methods are the only transitions between
/// states; a segment is in at most one.
#[derive(Debug, Default)]
pub(super) struct Segments {
    by_name: HashMap<WalName, Segment>,
}

impl Segments {
    pub(super) fn get(&self, wal: &WalName) -> Option<&Segment> {
        self.by_name.get(wal)
    }

    pub(super) fn in_flight(&self, wal: &WalName) -> bool {
        self.get(wal) == Some(&Segment::InFlight)
    }

    pub(super) fn in_flight_count(&self) -> usize {
        self.by_name
            .values()
            .filter(|s| **s == Segment::InFlight)
            .count()
    }

    /// Whether a segment is to be fetched once and is not started yet.
    pub(super) fn any_once(&self) -> bool {
        self.by_name
            .values()
            .any(|s| *s == Segment::Wanted { once: true })
    }

    /// Starts the get-wal of `wal`. Refused (false) while it runs or
    /// while the worker's copy waits in the spool.
    pub(super) fn start(&mut self, wal: &WalName) -> bool {
        match self.get(wal) {
            Some(Segment::InFlight | Segment::Spooled) => false,
            None | Some(Segment::Wanted { .. } | Segment::Failed { .. }) => {
                self.by_name.insert(wal.clone(), Segment::InFlight);
                true
            }
        }
    }

    /// Its get-wal put it in the spool.
    pub(super) fn delivered(&mut self, wal: &WalName) {
        self.by_name.insert(wal.clone(), Segment::Spooled);
    }

    /// Its get-wal failed at `now`; `miss` if Barman said "not found".
    pub(super) fn failed(&mut self, wal: &WalName, now: Instant, miss: Option<Miss>) {
        self.by_name.insert(
            wal.clone(),
            Segment::Failed {
                since: Some(now),
                miss,
            },
        );
    }

    /// A call asked for `wal` (`waited`: and waits for it, the file not
    /// being in the spool): a failed prefetch's pause ends, and a segment
    /// the table did not hold is wanted.
    pub(super) fn asked(&mut self, wal: &WalName, waited: bool) {
        match self.by_name.get_mut(wal) {
            None if waited => {
                self.by_name
                    .insert(wal.clone(), Segment::Wanted { once: false });
            }
            Some(Segment::Failed { since, miss }) => {
                *since = None;
                if miss.is_none() {
                    self.release(wal, waited);
                }
            }
            _ => {}
        }
    }

    /// Fetches `wal` once, outside the window, unless it runs or waits in
    /// the spool already.
    pub(super) fn want_once(&mut self, wal: &WalName) {
        match self.get(wal) {
            Some(Segment::InFlight | Segment::Spooled) => {}
            None | Some(Segment::Wanted { .. } | Segment::Failed { .. }) => {
                self.by_name
                    .insert(wal.clone(), Segment::Wanted { once: true });
            }
        }
    }

    /// The worker is done with `wal` (taken, purged, its failure
    /// forgotten): out of the table, or wanted if a call still waits.
    pub(super) fn release(&mut self, wal: &WalName, waited: bool) {
        if waited {
            self.by_name
                .insert(wal.clone(), Segment::Wanted { once: false });
        } else {
            self.by_name.remove(wal);
        }
    }

    /// Barman's "not found" for `wal`, if recent enough to answer with.
    pub(super) fn fresh_miss(&self, wal: &WalName, now: Instant) -> Option<&str> {
        match self.get(wal) {
            Some(Segment::Failed {
                miss: Some(miss), ..
            }) if now.saturating_duration_since(miss.started) < MISS_REUSE => Some(&miss.message),
            _ => None,
        }
    }

    /// Whether `wal` failed as a prefetch too recently to try again.
    pub(super) fn backing_off(&self, wal: &WalName, now: Instant) -> bool {
        matches!(
            self.get(wal),
            Some(Segment::Failed { since: Some(at), .. })
                if now.saturating_duration_since(*at) < PREFETCH_BACKOFF
        )
    }

    /// The segments the worker spooled that are no longer in the spool.
    pub(super) fn spooled_gone(&self, in_spool: impl Fn(&WalName) -> bool) -> Vec<WalName> {
        let mut gone: Vec<WalName> = self
            .by_name
            .iter()
            .filter(|(wal, s)| **s == Segment::Spooled && !in_spool(wal))
            .map(|(wal, _)| wal.clone())
            .collect();
        gone.sort_by(|a, b| a.cmp_position(b));
        gone
    }

    /// Wanted segments to start now, in WAL order, and those to give up:
    /// a `once` whose file is in the spool already is dropped (or stays
    /// wanted for a waiting call only).
    pub(super) fn due(
        &mut self,
        waited: impl Fn(&WalName) -> bool,
        in_spool: impl Fn(&WalName) -> bool,
    ) -> Vec<WalName> {
        let mut due = Vec::new();
        let mut settled = Vec::new();
        for (wal, state) in &self.by_name {
            let startable = match state {
                Segment::Wanted { .. } => true,
                // A failed segment starts again only for a waiting call.
                Segment::Failed { .. } => waited(wal),
                Segment::InFlight | Segment::Spooled => false,
            };
            if !startable {
                continue;
            }
            if !in_spool(wal) {
                due.push(wal.clone());
            } else if *state == (Segment::Wanted { once: true }) {
                settled.push(wal.clone());
            }
        }
        for wal in settled {
            let waited = waited(&wal);
            self.release(&wal, waited);
        }
        due.sort_by(|a, b| a.cmp_position(b));
        due
    }

    /// Drops what time made moot: stale misses, ended pauses, and wanted
    /// segments nobody waits for any more.
    pub(super) fn expire(&mut self, now: Instant, waited: impl Fn(&WalName) -> bool) {
        let mut done = Vec::new();
        for (wal, state) in self.by_name.iter_mut() {
            if let Segment::Failed { since, miss } = state {
                if miss
                    .as_ref()
                    .is_some_and(|m| now.saturating_duration_since(m.started) >= MISS_REUSE)
                {
                    *miss = None;
                }
                if since.is_some_and(|at| now.saturating_duration_since(at) >= PREFETCH_BACKOFF) {
                    *since = None;
                }
                if since.is_none() && miss.is_none() {
                    done.push(wal.clone());
                }
            }
        }
        for wal in done {
            let waited = waited(&wal);
            self.release(&wal, waited);
        }
        self.expire_wanted(waited);
    }

    /// Drops the segments wanted for calls that no longer wait for them.
    pub(super) fn expire_wanted(&mut self, waited: impl Fn(&WalName) -> bool) {
        self.by_name
            .retain(|wal, state| *state != (Segment::Wanted { once: false }) || waited(wal));
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&WalName, &Segment)> {
        self.by_name.iter()
    }
}
