//! The worker's book: the requests and the segment table, kept in
//! agreement. Every change that touches both goes through here, so a
//! waiting request always points at a segment the table holds (wanted, in
//! flight, failed, or spooled until the worker sees it taken), and a
//! delivery or a failure reaches every request waiting for it at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::requests::Requests;
use super::segments::{Miss, Segments};
use crate::wal::WalName;

/// How long a caller may take to pick up a delivered segment and withdraw
/// its request before the worker concludes another caller took it.
pub(super) const RACE_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct Book {
    requests: Requests,
    segments: Segments,
}

/// What to do now for the requests and the wanted segments.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    /// Requests to answer with Barman's recent "not found": token, message.
    pub(super) missing: Vec<(String, String)>,
    /// Segments to start, in WAL order.
    pub(super) starts: Vec<WalName>,
}

impl Book {
    /// Brings the book up to date with the tokens in the spool now
    /// (`present`): withdrawn requests are forgotten, lost races wait
    /// again, and what time made moot is dropped.
    pub(super) fn tidy(
        &mut self,
        present: &HashSet<&str>,
        now: Instant,
        in_spool: impl Fn(&WalName) -> bool,
    ) {
        self.requests.keep_present(present);
        for wal in self.requests.reclaim_lost(now, RACE_GRACE, in_spool) {
            self.segments.asked(&wal, true);
        }
        let requests = &self.requests;
        self.segments.expire(now, |wal| requests.waits_for(wal));
    }

    /// Whether the request `token` is already in the book.
    pub(super) fn knows(&self, token: &str) -> bool {
        self.requests.knows(token)
    }

    /// A new request for `wal`; `in_spool`: the file is there already.
    pub(super) fn ask(&mut self, token: String, wal: WalName, in_spool: bool, now: Instant) {
        if in_spool {
            self.requests.found(token, wal.clone(), now);
        } else {
            self.requests.wait(token, wal.clone());
        }
        let waited = self.requests.waits_for(&wal);
        self.segments.asked(&wal, waited);
    }

    /// Fetches `wal` once, outside the window.
    pub(super) fn want_once(&mut self, wal: &WalName) {
        self.segments.want_once(wal);
    }

    /// The requests Barman's fresh "not found" answers, and the wanted
    /// segments to start (those already in the spool are not).
    pub(super) fn due(&mut self, now: Instant, in_spool: impl Fn(&WalName) -> bool) -> Due {
        let mut missing = Vec::new();
        for wal in self.requests.waited() {
            if let Some(message) = self.segments.fresh_miss(&wal, now) {
                let message = message.to_string();
                for token in self.requests.waiting_for(&wal) {
                    self.requests.answered(&token);
                    missing.push((token, message.clone()));
                }
            }
        }
        let requests = &self.requests;
        let starts = self.segments.due(|wal| requests.waits_for(wal), in_spool);
        Due { missing, starts }
    }

    /// Records the start of `wal`'s get-wal; false if it runs already or
    /// the worker's copy waits in the spool.
    pub(super) fn start(&mut self, wal: &WalName) -> bool {
        self.segments.start(wal)
    }

    /// `wal` is in the spool: its requests have it.
    pub(super) fn delivered(&mut self, wal: &WalName, now: Instant) {
        self.segments.delivered(wal);
        self.requests.delivered(wal, now);
    }

    /// `wal`'s get-wal failed (`miss`: Barman's "not found"): returns the
    /// requests to answer, now answered.
    pub(super) fn failed(
        &mut self,
        wal: &WalName,
        now: Instant,
        miss: Option<Miss>,
    ) -> Vec<String> {
        let tokens = self.requests.waiting_for(wal);
        for token in &tokens {
            self.requests.answered(token);
        }
        self.segments.failed(wal, now, miss);
        tokens
    }

    /// Nothing can be fetched for now: every waiting request is answered
    /// (returned) so its caller fetches on its own.
    pub(super) fn fail_waiting(&mut self) -> Vec<String> {
        let tokens = self.requests.waiting();
        for token in &tokens {
            self.requests.answered(token);
        }
        let requests = &self.requests;
        self.segments.expire_wanted(|wal| requests.waits_for(wal));
        tokens
    }

    /// The spooled segments that left the spool (taken by a call, or
    /// purged), now out of the table unless a call waits for them again.
    pub(super) fn gone(&mut self, in_spool: impl Fn(&WalName) -> bool) -> Vec<WalName> {
        let gone = self.segments.spooled_gone(in_spool);
        for wal in &gone {
            let waited = self.requests.waits_for(wal);
            self.segments.release(wal, waited);
        }
        gone
    }

    pub(super) fn any_waiting(&self) -> bool {
        self.requests.any_waiting()
    }

    pub(super) fn any_once(&self) -> bool {
        self.segments.any_once()
    }

    pub(super) fn is_waited(&self, wal: &WalName) -> bool {
        self.requests.waits_for(wal)
    }

    pub(super) fn in_flight(&self, wal: &WalName) -> bool {
        self.segments.in_flight(wal)
    }

    pub(super) fn in_flight_count(&self) -> usize {
        self.segments.in_flight_count()
    }

    pub(super) fn backing_off(&self, wal: &WalName, now: Instant) -> bool {
        self.segments.backing_off(wal, now)
    }

    /// The book's invariants, for the tests: every waiting request points
    /// at a segment the table holds, and a segment wanted for calls only
    /// has a call waiting for it.
    #[cfg(test)]
    pub(super) fn check(&self) {
        for wal in self.requests.waited() {
            assert!(
                self.segments.get(&wal).is_some(),
                "a request waits for {wal}, unknown to the table"
            );
        }
        for (wal, state) in self.segments.iter() {
            if *state == (super::segments::Segment::Wanted { once: false }) {
                assert!(self.requests.waits_for(wal), "{wal} wanted by nobody");
            }
        }
    }

    #[cfg(test)]
    pub(super) fn segment(&self, wal: &WalName) -> Option<&super::segments::Segment> {
        self.segments.get(wal)
    }

    #[cfg(test)]
    pub(super) fn request(&self, token: &str) -> Option<&super::requests::Request> {
        self.requests.state(token)
    }
}

#[cfg(test)]
mod tests {
    use super::super::requests::Request;
    use super::super::segments::{Segment, MISS_REUSE, PREFETCH_BACKOFF};
    use super::*;

    fn seg(n: u32) -> WalName {
        WalName::segment(1, 0, n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn nowhere(_: &WalName) -> bool {
        false
    }

    fn miss(started: Instant) -> Option<Miss> {
        Some(Miss {
            started,
            message: "not found".into(),
        })
    }

    fn present<'a>(tokens: &[&'a str]) -> HashSet<&'a str> {
        tokens.iter().copied().collect()
    }

    #[test]
    fn a_request_waits_for_a_segment_the_table_holds_until_delivered() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.ask("a".into(), seg(3), false, t0);
        book.check();
        assert_eq!(book.request("a"), Some(&Request::Waiting(seg(3))));
        assert_eq!(
            book.segment(&seg(3)),
            Some(&Segment::Wanted { once: false })
        );
        assert_eq!(book.due(t0, nowhere).starts, vec![seg(3)]);
        assert!(book.start(&seg(3)));
        assert!(!book.start(&seg(3)), "one get-wal per segment");
        assert!(book.due(t0, nowhere).starts.is_empty());
        book.ask("b".into(), seg(3), false, t0);
        book.delivered(&seg(3), t0 + ms(7));
        book.check();
        for token in ["a", "b"] {
            assert_eq!(
                book.request(token),
                Some(&Request::Delivered {
                    wal: seg(3),
                    since: t0 + ms(7)
                })
            );
        }
        assert_eq!(book.segment(&seg(3)), Some(&Segment::Spooled));
        assert!(!book.start(&seg(3)), "not again while spooled");
        assert!(!book.any_waiting());
    }

    #[test]
    fn a_request_for_a_file_in_the_spool_waits_for_nothing() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.ask("a".into(), seg(3), true, t0);
        book.check();
        assert!(!book.any_waiting());
        assert_eq!(book.segment(&seg(3)), None);
        assert_eq!(book.due(t0, nowhere), Due::default());
    }

    #[test]
    fn a_failure_answers_every_request_waiting_for_it_once() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.ask("a".into(), seg(3), false, t0);
        book.ask("b".into(), seg(3), false, t0);
        book.ask("c".into(), seg(4), false, t0);
        assert!(book.start(&seg(3)));
        assert_eq!(book.failed(&seg(3), t0, None), vec!["a", "b"]);
        book.check();
        assert_eq!(book.request("a"), Some(&Request::Answered));
        assert_eq!(book.fail_waiting(), vec!["c"], "a and b have their answer");
        book.check();
        assert!(!book.any_waiting());
        assert_eq!(book.segment(&seg(4)), None, "nobody waits for it now");
    }

    #[test]
    fn a_fresh_miss_answers_a_new_request_without_asking_barman() {
        let t0 = Instant::now();
        let mut book = Book::default();
        assert!(book.start(&seg(6)));
        book.failed(&seg(6), t0 + ms(300), miss(t0));
        book.ask("a".into(), seg(6), false, t0 + ms(400));
        book.check();
        assert!(
            !book.backing_off(&seg(6), t0 + ms(400)),
            "a call asking ends the pause"
        );
        let due = book.due(t0 + MISS_REUSE - ms(1), nowhere);
        assert_eq!(due.missing, vec![("a".into(), "not found".into())]);
        assert!(due.starts.is_empty());
        assert_eq!(book.request("a"), Some(&Request::Answered));
        // A request once the miss is stale asks Barman again.
        book.ask("b".into(), seg(6), false, t0 + MISS_REUSE);
        let due = book.due(t0 + MISS_REUSE, nowhere);
        assert!(due.missing.is_empty());
        assert_eq!(due.starts, vec![seg(6)]);
    }

    #[test]
    fn a_failed_prefetch_backs_off_unless_a_call_asks_for_it() {
        let t0 = Instant::now();
        let mut book = Book::default();
        assert!(book.start(&seg(5)));
        book.failed(&seg(5), t0, None);
        assert!(book.backing_off(&seg(5), t0 + PREFETCH_BACKOFF - ms(1)));
        assert!(!book.backing_off(&seg(5), t0 + PREFETCH_BACKOFF));
        book.ask("a".into(), seg(5), false, t0 + ms(1));
        book.check();
        assert!(!book.backing_off(&seg(5), t0 + ms(1)));
        assert_eq!(book.due(t0 + ms(1), nowhere).starts, vec![seg(5)]);
    }

    #[test]
    fn a_failure_is_forgotten_once_moot() {
        let t0 = Instant::now();
        let mut book = Book::default();
        assert!(book.start(&seg(5)));
        book.failed(&seg(5), t0, miss(t0));
        book.tidy(&present(&[]), t0 + PREFETCH_BACKOFF - ms(1), nowhere);
        assert!(book.segment(&seg(5)).is_some());
        book.tidy(&present(&[]), t0 + PREFETCH_BACKOFF, nowhere);
        assert_eq!(book.segment(&seg(5)), None);
    }

    #[test]
    fn a_delivered_request_still_there_after_the_grace_lost_a_race() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.ask("a".into(), seg(3), true, t0);
        let here = present(&["a"]);
        book.tidy(&here, t0 + RACE_GRACE, nowhere);
        assert!(!book.any_waiting(), "within the grace");
        book.tidy(&here, t0 + RACE_GRACE + ms(1), |_| true);
        assert!(!book.any_waiting(), "its file is still there");
        book.tidy(&here, t0 + RACE_GRACE + ms(1), nowhere);
        book.check();
        assert_eq!(book.request("a"), Some(&Request::Waiting(seg(3))));
        assert_eq!(book.due(t0, nowhere).starts, vec![seg(3)]);
    }

    #[test]
    fn a_withdrawn_request_leaves_nothing_wanted() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.ask("a".into(), seg(3), false, t0);
        book.tidy(&present(&[]), t0, nowhere);
        book.check();
        assert!(!book.knows("a"));
        assert_eq!(book.segment(&seg(3)), None);
        assert!(book.due(t0, nowhere).starts.is_empty());
    }

    #[test]
    fn a_segment_wanted_once_is_dropped_when_the_spool_has_it() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.want_once(&seg(2));
        assert!(book.any_once());
        assert!(book.due(t0, |_| true).starts.is_empty());
        assert_eq!(book.segment(&seg(2)), None);
        book.want_once(&seg(2));
        assert_eq!(book.due(t0, nowhere).starts, vec![seg(2)]);
        assert!(book.start(&seg(2)));
        book.want_once(&seg(2));
        assert_eq!(book.segment(&seg(2)), Some(&Segment::InFlight));
    }

    #[test]
    fn a_spooled_segment_gone_from_the_spool_leaves_the_table() {
        let t0 = Instant::now();
        let mut book = Book::default();
        for n in [4, 3] {
            assert!(book.start(&seg(n)));
            book.delivered(&seg(n), t0);
        }
        assert!(book.gone(|_| true).is_empty());
        assert_eq!(book.gone(nowhere), vec![seg(3), seg(4)]);
        assert_eq!(book.segment(&seg(3)), None);
        assert!(book.gone(nowhere).is_empty(), "seen taken once");
        // Taken while a call that lost the race waits for it: wanted again.
        assert!(book.start(&seg(5)));
        book.delivered(&seg(5), t0);
        book.ask("a".into(), seg(5), false, t0);
        assert_eq!(book.gone(nowhere), vec![seg(5)]);
        book.check();
        assert_eq!(
            book.segment(&seg(5)),
            Some(&Segment::Wanted { once: false })
        );
    }
}
