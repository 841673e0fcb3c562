//! How the worker follows the archive's head: which listed segments it
//! fetches ahead of PostgreSQL, when it asks Barman for a new listing
//! (polling at the head), and when it asks for the segment past the head
//! before PostgreSQL does (the probe), from PostgreSQL's pace.
//!
//! Every decision takes the time as an argument: nothing here reads the
//! clock, so the tests drive it with instants of their own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::segments::MISS_REUSE;
use crate::wal::WalName;

/// At the archive's head, how often to ask Barman for new segments (each
/// `get-wal --peek` is a Python start-up on the Barman host).
pub(super) const HEAD_POLL: Duration = Duration::from_secs(2);

/// What a probe past the archive's head is expected to take (a Barman
/// start-up and its "not found") until one has been measured.
pub(super) const PROBE_COST_GUESS: Duration = Duration::from_millis(500);

/// How long a probe past the head is remembered (so not made again); the
/// head polls go on meanwhile.
pub(super) const PROBE_MEMORY: Duration = Duration::from_secs(60);

/// Whether `wal` comes after `cursor` on its timeline: what the window
/// may hold once PostgreSQL is at `cursor`.
pub(super) fn follows(wal: &WalName, cursor: &WalName) -> bool {
    wal.timeline() == cursor.timeline() && wal.position() > cursor.position()
}

/// How many of the window's segments may start now: a waiting PostgreSQL
/// comes first, so while a call waits only what it asked for and the
/// segment after it run, not the whole window competing with them for the
/// link and the CPUs.
pub(super) fn window_starts(window: usize, call_waits: bool) -> usize {
    if call_waits {
        1
    } else {
        window
    }
}

/// How fast PostgreSQL moves from one segment to the next: a moving
/// average of its steps forward.
#[derive(Debug, Default)]
pub(super) struct Pace {
    step: Option<Duration>,
    last_move: Option<Instant>,
}

impl Pace {
    /// PostgreSQL moved forward at `now`. The first move only starts the
    /// clock; each later one weighs 3/10 in the average.
    pub(super) fn moved(&mut self, now: Instant) {
        if let Some(at) = self.last_move {
            let step = now.saturating_duration_since(at);
            self.step = Some(match self.step {
                Some(pace) => (pace * 7 + step * 3) / 10,
                None => step,
            });
        }
        self.last_move = Some(now);
    }

    /// The time per segment, once two moves have been seen.
    pub(super) fn step(&self) -> Option<Duration> {
        self.step
    }
}

/// A probe past the head: whether it began before PostgreSQL reached the
/// archive's last segment, and when.
#[derive(Debug, Clone, Copy)]
struct Probe {
    early: bool,
    at: Instant,
}

/// What the worker knows of the archive's head.
#[derive(Debug)]
pub(super) struct Head {
    /// Segments Barman listed after `listed_from`, in WAL order, and
    /// whether that listing reached the end of the archive.
    listing: Vec<WalName>,
    listed_from: Option<WalName>,
    at_head: bool,
    listing_runs: bool,
    last_listing: Option<Instant>,
    /// How long Barman took to say "not found" last time: what a probe
    /// past the head costs.
    probe_cost: Duration,
    probes: HashMap<WalName, Probe>,
}

impl Default for Head {
    fn default() -> Head {
        Head {
            listing: Vec::new(),
            listed_from: None,
            at_head: false,
            listing_runs: false,
            last_listing: None,
            probe_cost: PROBE_COST_GUESS,
            probes: HashMap::new(),
        }
    }
}

impl Head {
    /// The listed segments after `cursor` the window holds: `window` at
    /// most.
    pub(super) fn ahead(&self, cursor: &WalName, window: usize) -> Vec<WalName> {
        self.listing
            .iter()
            .filter(|n| follows(n, cursor))
            .take(window)
            .cloned()
            .collect()
    }

    /// Whether the last listing says where `cursor` is: it lists it, or
    /// was asked from it (an empty answer there is still an answer).
    pub(super) fn covers(&self, cursor: &WalName) -> bool {
        self.listed_from.as_ref() == Some(cursor) || self.listing.contains(cursor)
    }

    /// How many listed segments PostgreSQL has left after `cursor` before
    /// the archive's end, if the listing reached the end and covers where
    /// PostgreSQL is.
    pub(super) fn left_before_head(&self, cursor: &WalName) -> Option<usize> {
        (self.at_head && self.covers(cursor))
            .then(|| self.listing.iter().filter(|n| follows(n, cursor)).count())
    }

    /// Whether `wal` is the archive's last segment, as far as the last
    /// listing, which reached the end, says.
    pub(super) fn is_last(&self, wal: &WalName) -> bool {
        self.at_head && self.listing.last() == Some(wal)
    }

    /// Whether to ask Barman for a new listing from `cursor` now, with
    /// `ahead` of the window's `window` segments listed: when the listing
    /// runs short and none runs. A cursor outside the last listing (a
    /// jump, a new timeline) needs one at once; at the archive's head,
    /// only every [`HEAD_POLL`]. Records the start when it says yes.
    pub(super) fn start_listing(
        &mut self,
        cursor: &WalName,
        window: usize,
        ahead: usize,
        now: Instant,
    ) -> bool {
        let covered = self.covers(cursor);
        let due = match self.last_listing {
            Some(at) if covered && self.at_head => now.saturating_duration_since(at) >= HEAD_POLL,
            _ => true,
        };
        if ahead < window && !self.listing_runs && due {
            self.listing_runs = true;
            self.last_listing = Some(now);
            true
        } else {
            false
        }
    }

    /// Barman's listing from `from`, asked for `asked` names: fewer means
    /// it reached the archive's end.
    pub(super) fn listed(&mut self, from: WalName, asked: usize, names: Vec<WalName>) {
        self.listing_runs = false;
        self.at_head = names.len() < asked;
        let mut listing: Vec<WalName> = names
            .into_iter()
            .filter(|n| n.is_segment() && follows(n, &from))
            .collect();
        listing.sort_by_key(|n| n.position());
        self.listing = listing;
        self.listed_from = Some(from);
    }

    /// The listing failed: taken as the head (polled, not asked at once).
    pub(super) fn listing_failed(&mut self) {
        self.listing_runs = false;
        self.at_head = true;
    }

    /// Barman's "not found" took `cost`: what the next probe is expected
    /// to take.
    pub(super) fn missed(&mut self, cost: Duration) {
        self.probe_cost = cost;
    }

    /// Forgets the probes older than [`PROBE_MEMORY`].
    pub(super) fn forget_old_probes(&mut self, now: Instant) {
        self.probes
            .retain(|_, probe| now.saturating_duration_since(probe.at) < PROBE_MEMORY);
    }

    /// The segment past the archive's head to ask for now, if any, its
    /// probe recorded. PostgreSQL, on `cursor` some segments before the
    /// archive's end, will ask for the one past it as soon as it has
    /// replayed them. Asking Barman first has the answer ready: the
    /// segment itself if it just arrived, else a "not found" that the
    /// request, coming within [`MISS_REUSE`], reuses. The probe starts when
    /// PostgreSQL's pace says the remaining segments take less time than a
    /// probe, and on the last segment at the latest. One probe per
    /// segment, and a second on the last segment when the early one's
    /// answer went stale on the way. `segment_size` names the segment
    /// after the last; `busy`: it is in flight or in the spool already.
    pub(super) fn probe(
        &mut self,
        cursor: &WalName,
        segment_size: Option<u64>,
        pace: &Pace,
        busy: impl Fn(&WalName) -> bool,
        now: Instant,
    ) -> Option<WalName> {
        let left = self.left_before_head(cursor)?;
        let last = self.listing.last()?;
        let next = last.next_segment(segment_size?)?;
        if busy(&next) {
            return None;
        }
        let on_last = left == 0;
        let near = on_last
            || pace
                .step()
                .is_some_and(|step| step * left as u32 <= self.probe_cost);
        let due = match self.probes.get(&next) {
            None => near,
            Some(probe) => {
                probe.early && on_last && now.saturating_duration_since(probe.at) >= MISS_REUSE
            }
        };
        due.then(|| {
            self.probes.insert(
                next.clone(),
                Probe {
                    early: !on_last,
                    at: now,
                },
            );
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT_SIZE: u64 = 16 << 20;

    fn seg(n: u32) -> WalName {
        WalName::segment(1, 0, n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A head whose listing, asked from segment 1 for 8 names, got 2..=5:
    /// the archive ends at 5, and 6 is the segment past it.
    fn at_head() -> Head {
        let mut head = Head::default();
        head.listed(seg(1), 8, (2..=5).map(seg).collect());
        head
    }

    /// A pace of `step` per segment.
    fn pace(step: Duration, t0: Instant) -> Pace {
        let mut pace = Pace::default();
        pace.moved(t0);
        pace.moved(t0 + step);
        pace
    }

    fn idle(_: &WalName) -> bool {
        false
    }

    #[test]
    fn the_pace_starts_with_the_second_move_then_averages() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        pace.moved(t0);
        assert_eq!(pace.step(), None, "one move is no pace yet");
        pace.moved(t0 + ms(10_000));
        assert_eq!(pace.step(), Some(ms(10_000)));
        // A new step weighs 3/10: 10 s * 0.7 + 20 s * 0.3.
        pace.moved(t0 + ms(30_000));
        assert_eq!(pace.step(), Some(ms(13_000)));
    }

    #[test]
    fn the_window_holds_the_listed_segments_after_the_cursor() {
        let mut head = Head::default();
        let mut names: Vec<WalName> = (2..=9).rev().map(seg).collect();
        names.push(WalName::segment(2, 0, 4));
        names.push(WalName::parse("00000002.history").unwrap());
        head.listed(seg(1), 16, names);
        assert_eq!(head.ahead(&seg(3), 2), vec![seg(4), seg(5)]);
        assert_eq!(head.ahead(&seg(8), 4), vec![seg(9)]);
        assert!(head.is_last(&seg(9)), "10 of 16 names: the archive's end");
        let mut full = Head::default();
        full.listed(seg(1), 2, vec![seg(2), seg(3)]);
        assert!(!full.is_last(&seg(3)), "as many names as asked: maybe more");
    }

    #[test]
    fn a_waiting_call_lets_one_prefetch_start() {
        assert_eq!(window_starts(8, false), 8);
        assert_eq!(window_starts(8, true), 1);
    }

    #[test]
    fn a_listing_is_asked_when_the_window_runs_short_one_at_a_time() {
        let t0 = Instant::now();
        let mut head = Head::default();
        assert!(head.start_listing(&seg(1), 4, 0, t0));
        assert!(!head.start_listing(&seg(1), 4, 0, t0), "one runs already");
        head.listed(seg(1), 16, (2..=17).map(seg).collect());
        assert!(!head.start_listing(&seg(1), 4, 4, t0), "the window is full");
        assert!(head.start_listing(&seg(1), 4, 3, t0), "short, not at head");
    }

    #[test]
    fn at_the_head_the_listing_is_polled_every_head_poll() {
        let t0 = Instant::now();
        let mut head = Head::default();
        assert!(head.start_listing(&seg(1), 4, 0, t0));
        head.listed(seg(1), 16, vec![seg(2)]);
        assert!(!head.start_listing(&seg(2), 4, 0, t0 + HEAD_POLL - ms(1)));
        assert!(head.start_listing(&seg(2), 4, 0, t0 + HEAD_POLL));
    }

    #[test]
    fn a_cursor_outside_the_listing_is_listed_at_once_even_at_the_head() {
        let t0 = Instant::now();
        let mut head = Head::default();
        assert!(head.start_listing(&seg(1), 4, 0, t0));
        head.listed(seg(1), 16, vec![seg(2)]);
        // A jump ahead, and a new timeline: neither is in the listing.
        assert!(head.start_listing(&seg(7), 4, 0, t0 + ms(1)));
        head.listed(seg(7), 16, vec![]);
        let switched = WalName::segment(2, 0, 7);
        assert!(head.start_listing(&switched, 4, 0, t0 + ms(2)));
    }

    #[test]
    fn a_failed_listing_counts_as_the_head() {
        let t0 = Instant::now();
        let mut head = Head::default();
        head.listed(seg(1), 2, vec![seg(2), seg(3)]);
        assert!(head.start_listing(&seg(2), 4, 1, t0));
        head.listing_failed();
        assert!(!head.start_listing(&seg(2), 4, 1, t0 + ms(1)));
        assert!(head.start_listing(&seg(2), 4, 1, t0 + HEAD_POLL));
    }

    #[test]
    fn no_probe_before_the_listing_reaches_the_head() {
        let t0 = Instant::now();
        let mut head = Head::default();
        head.listed(seg(1), 4, (2..=5).map(seg).collect());
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &Pace::default(), idle, t0),
            None
        );
    }

    #[test]
    fn on_the_last_segment_the_segment_past_the_head_is_probed_once() {
        let t0 = Instant::now();
        let mut head = at_head();
        let none = Pace::default();
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &none, idle, t0),
            Some(seg(6))
        );
        let later = t0 + PROBE_MEMORY - ms(1);
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &none, idle, later),
            None,
            "a probe made on the last segment is not made again"
        );
    }

    #[test]
    fn a_probe_is_forgotten_after_probe_memory() {
        let t0 = Instant::now();
        let mut head = at_head();
        let none = Pace::default();
        assert!(head
            .probe(&seg(5), Some(SEGMENT_SIZE), &none, idle, t0)
            .is_some());
        head.forget_old_probes(t0 + PROBE_MEMORY - ms(1));
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &none, idle, t0 + PROBE_MEMORY),
            None
        );
        head.forget_old_probes(t0 + PROBE_MEMORY);
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &none, idle, t0 + PROBE_MEMORY),
            Some(seg(6))
        );
    }

    #[test]
    fn without_a_pace_no_probe_before_the_last_segment() {
        let t0 = Instant::now();
        let mut head = at_head();
        let none = Pace::default();
        assert_eq!(
            head.probe(&seg(4), Some(SEGMENT_SIZE), &none, idle, t0),
            None
        );
    }

    #[test]
    fn the_probe_starts_when_the_segments_left_take_less_than_a_probe() {
        let t0 = Instant::now();
        // 3 segments left after 2; 3 * 166 ms = 498 ms, within the 500 ms guess.
        let mut head = at_head();
        let quick = pace(ms(166), t0);
        assert_eq!(
            head.probe(&seg(2), Some(SEGMENT_SIZE), &quick, idle, t0),
            Some(seg(6))
        );
        // 3 * 167 ms = 501 ms: not yet.
        let mut head = at_head();
        let slower = pace(ms(167), t0);
        assert_eq!(
            head.probe(&seg(2), Some(SEGMENT_SIZE), &slower, idle, t0),
            None
        );
        // Exactly the cost: now.
        let mut head = at_head();
        let even = pace(ms(125), t0);
        assert_eq!(
            head.probe(&seg(1), Some(SEGMENT_SIZE), &even, idle, t0),
            Some(seg(6)),
            "4 segments * 125 ms = the 500 ms a probe costs"
        );
    }

    #[test]
    fn the_probe_cost_is_what_the_last_miss_took() {
        let t0 = Instant::now();
        let mut head = at_head();
        let slow = pace(ms(400), t0);
        assert_eq!(
            head.probe(&seg(2), Some(SEGMENT_SIZE), &slow, idle, t0),
            None,
            "3 * 400 ms is more than the 500 ms guess"
        );
        head.missed(ms(1200));
        assert_eq!(
            head.probe(&seg(2), Some(SEGMENT_SIZE), &slow, idle, t0),
            Some(seg(6))
        );
    }

    #[test]
    fn an_early_probe_is_made_again_on_the_last_segment_once_stale() {
        let t0 = Instant::now();
        let mut head = at_head();
        let quick = pace(ms(100), t0);
        assert!(head
            .probe(&seg(3), Some(SEGMENT_SIZE), &quick, idle, t0)
            .is_some());
        assert_eq!(
            head.probe(&seg(4), Some(SEGMENT_SIZE), &quick, idle, t0 + MISS_REUSE),
            None,
            "still early: not again"
        );
        assert_eq!(
            head.probe(
                &seg(5),
                Some(SEGMENT_SIZE),
                &quick,
                idle,
                t0 + MISS_REUSE - ms(1)
            ),
            None,
            "its answer is still fresh"
        );
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &quick, idle, t0 + MISS_REUSE),
            Some(seg(6))
        );
        assert_eq!(
            head.probe(
                &seg(5),
                Some(SEGMENT_SIZE),
                &quick,
                idle,
                t0 + MISS_REUSE * 3
            ),
            None,
            "two probes at most"
        );
    }

    #[test]
    fn no_probe_for_a_segment_under_way_or_of_unknown_size() {
        let t0 = Instant::now();
        let mut head = at_head();
        let none = Pace::default();
        let busy = |wal: &WalName| *wal == seg(6);
        assert_eq!(
            head.probe(&seg(5), Some(SEGMENT_SIZE), &none, busy, t0),
            None
        );
        assert_eq!(head.probe(&seg(5), None, &none, idle, t0), None);
        assert_eq!(
            head.probe(&seg(9), Some(SEGMENT_SIZE), &none, idle, t0),
            None,
            "a cursor the listing does not cover"
        );
    }
}
