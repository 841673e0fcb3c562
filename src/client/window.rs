//! The prefetch window: which segments to have in the spool ahead of
//! where PostgreSQL is, from what Barman listed (`get-wal --peek`, or a
//! directory listing with `--direct-read`).
//!
//! One algorithm, two users that differ in what they count:
//!
//! - a call with `-p N` ([`Window::for_call`]) fetches the requested
//!   segment and the N-1 after it once, beside the requested transfer.
//!   Segments the spool already holds were fetched by an earlier call: they
//!   do not count, the window reaches past them ([`Reach::PastSpooled`]).
//!   Its listing keeps Barman's order and every segment, as the spool's
//!   peek cache stores it for later calls at other positions.
//! - the `--async` worker ([`Window::for_worker`]) keeps the N segments
//!   after its cursor ready or in flight, re-planned on every tick: the
//!   window is those N positions whatever the spool holds
//!   ([`Reach::Positions`]), or it would run ever further ahead of a
//!   PostgreSQL that has not taken them yet. Its listing is the cursor's
//!   timeline in WAL order, which it walks as the cursor moves.
//!
//! Both ask a peek for the same number of names ([`Window::peek_size`]).

use crate::wal::WalName;

/// What counts toward a window's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The positions after the cursor, whatever the spool holds.
    Positions,
    /// Segments to fetch: what the spool holds is passed over.
    PastSpooled,
}

impl Reach {
    /// What a peek from `from` gives a window to read: for a call's
    /// ([`Reach::PastSpooled`]), `from` and then the segments Barman
    /// listed, in its order (what the spool's peek cache keeps); for the
    /// worker's ([`Reach::Positions`]), the segments that follow `from` on
    /// its timeline, in WAL order.
    pub fn listing(self, from: &WalName, answer: Vec<WalName>) -> Vec<WalName> {
        match self {
            Reach::PastSpooled => std::iter::once(from.clone())
                .chain(answer.into_iter().filter(|n| n.is_segment() && n != from))
                .collect(),
            Reach::Positions => {
                let mut listing: Vec<WalName> = answer
                    .into_iter()
                    .filter(|n| n.is_segment() && follows(n, from))
                    .collect();
                listing.sort_by_key(|n| n.position());
                listing
            }
        }
    }
}

/// A prefetch window: how far it reaches and how it reads a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    parallel: usize,
    size: usize,
    reach: Reach,
}

impl Window {
    /// A call's window for `-p parallel`: the N-1 segments after the
    /// requested one.
    pub fn for_call(parallel: usize) -> Window {
        Window {
            parallel,
            size: parallel.saturating_sub(1),
            reach: Reach::PastSpooled,
        }
    }

    /// The worker's window for `-p parallel`: the N segments after the
    /// cursor (at least one).
    pub fn for_worker(parallel: usize) -> Window {
        let parallel = parallel.max(1);
        Window {
            parallel,
            size: parallel,
            reach: Reach::Positions,
        }
    }

    /// How many segments the window holds after the cursor.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many names to ask `get-wal --peek` for: a few windows' worth,
    /// so the next misses find their names in the listing (the call's in
    /// the spool's peek cache) and prefetch without a peek of their own.
    /// Never fewer than `-p`: above 256 a window's worth, no more.
    pub fn peek_size(&self) -> usize {
        self.parallel.saturating_mul(4).min(256).max(self.parallel)
    }

    /// What a peek from `from` gives this window to read: see
    /// [`Reach::listing`].
    pub fn listing(&self, from: &WalName, answer: Vec<WalName>) -> Vec<WalName> {
        self.reach.listing(from, answer)
    }

    /// The segments the window holds after `cursor`, in order: those after
    /// the cursor's place in `listing` when it lists the cursor, else those
    /// of `listing` that follow the cursor on its timeline; the first
    /// [`Window::size`] of them, passing over what `spooled` says the spool
    /// holds when the window reaches past it.
    pub fn ahead(
        &self,
        listing: &[WalName],
        cursor: &WalName,
        spooled: impl Fn(&WalName) -> bool,
    ) -> Vec<WalName> {
        let after: Box<dyn Iterator<Item = &WalName>> =
            match listing.iter().position(|n| n == cursor) {
                Some(at) => Box::new(listing[at + 1..].iter()),
                None => Box::new(listing.iter().filter(|n| follows(n, cursor))),
            };
        after
            .filter(|n| self.reach == Reach::Positions || !spooled(n))
            .take(self.size)
            .cloned()
            .collect()
    }
}

/// Whether `wal` comes after `cursor` on its timeline.
pub fn follows(wal: &WalName, cursor: &WalName) -> bool {
    wal.timeline() == cursor.timeline() && wal.position() > cursor.position()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(tli: u32, n: u32) -> WalName {
        WalName::parse(&format!("{tli:08X}00000000{n:08X}")).unwrap()
    }

    /// `-p` above 256 used to panic here (a clamp whose minimum passed its
    /// maximum): exit 101 on every call that peeked.
    #[test]
    fn the_peek_asks_for_a_few_windows_up_to_256_and_never_less_than_one() {
        let sizes: Vec<usize> = [1, 8, 64, 100, 256, 300, 10_000]
            .map(|p| Window::for_call(p).peek_size())
            .to_vec();
        assert_eq!(sizes, [4, 32, 256, 256, 256, 300, 10_000]);
        assert_eq!(Window::for_worker(0).peek_size(), 4);
    }

    fn names(from: u32, to: u32) -> Vec<WalName> {
        (from..=to).map(|n| seg(1, n)).collect()
    }

    #[test]
    fn a_call_fetches_the_next_n_minus_1_past_what_the_spool_holds() {
        let window = Window::for_call(4);
        let listing = window.listing(&seg(1, 3), names(3, 12));
        assert_eq!(listing, names(3, 12));
        assert_eq!(window.ahead(&listing, &seg(1, 3), |_| false), names(4, 6));
        let spooled = [seg(1, 4), seg(1, 6)];
        assert_eq!(
            window.ahead(&listing, &seg(1, 3), |n| spooled.contains(n)),
            [seg(1, 5), seg(1, 7), seg(1, 8)]
        );
        // -p 1 and -p 0 prefetch nothing.
        assert!(Window::for_call(1)
            .ahead(&listing, &seg(1, 3), |_| false)
            .is_empty());
        assert!(Window::for_call(0)
            .ahead(&listing, &seg(1, 3), |_| false)
            .is_empty());
    }

    #[test]
    fn a_calls_listing_keeps_barmans_order_and_other_timelines() {
        let window = Window::for_call(3);
        let answer = vec![
            seg(1, 3),
            WalName::parse("00000002.history").unwrap(),
            seg(1, 4),
            seg(2, 2),
        ];
        let listing = window.listing(&seg(1, 3), answer);
        assert_eq!(listing, [seg(1, 3), seg(1, 4), seg(2, 2)]);
        assert_eq!(
            window.ahead(&listing, &seg(1, 3), |_| false),
            [seg(1, 4), seg(2, 2)]
        );
    }

    #[test]
    fn the_worker_keeps_the_n_positions_after_its_cursor() {
        let window = Window::for_worker(3);
        let answer = vec![seg(1, 7), seg(1, 5), seg(2, 6), seg(1, 6), seg(1, 4)];
        let listing = window.listing(&seg(1, 4), answer);
        assert_eq!(listing, names(5, 7));
        // What the spool holds still counts: the worker does not run ahead.
        assert_eq!(window.ahead(&listing, &seg(1, 4), |_| true), names(5, 7));
        // The cursor moves along the listing, or past it.
        assert_eq!(window.ahead(&listing, &seg(1, 5), |_| false), names(6, 7));
        assert!(window.ahead(&listing, &seg(1, 9), |_| false).is_empty());
        // A cursor the listing does not name: what follows it on its
        // timeline.
        assert_eq!(window.ahead(&listing, &seg(1, 2), |_| false), names(5, 7));
        assert!(window.ahead(&listing, &seg(2, 2), |_| false).is_empty());
        assert_eq!(Window::for_worker(0).size(), 1);
    }

    #[test]
    fn both_peek_a_few_windows_ahead() {
        assert_eq!(Window::for_call(4).peek_size(), 16);
        assert_eq!(Window::for_worker(4).peek_size(), 16);
        assert_eq!(Window::for_worker(0).peek_size(), 4);
        assert_eq!(Window::for_call(100).peek_size(), 256);
    }
}
