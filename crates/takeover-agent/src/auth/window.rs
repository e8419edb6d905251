//! The replay window of one heartbeat stream (one peer's run, one link): which counters
//! were already accepted, as the highest one and a bitmap of the 63 before it.
//!
//! Datagrams may arrive out of order (two links, a relay); a counter is accepted once,
//! if it is within [`WINDOW`] of the highest seen. Older ones are refused as too old:
//! after 64 newer heartbeats on the same link, an old one carries no news anyway.

/// How many counters, up to and including the highest, the window remembers.
pub const WINDOW: u64 = 64;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Already accepted.
    Duplicate,
    /// Older than the window (or 0, which no sender uses).
    TooOld,
}

/// The counters accepted so far; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest counter accepted; 0 before the first.
    highest: u64,
    /// Bit k set: counter `highest - k` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `counter` may be accepted. Changes nothing: call [`ReplayWindow::accept`]
    /// once the datagram is known authentic.
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if counter == 0 {
            return Err(Replay::TooOld);
        }
        if counter > self.highest {
            return Ok(());
        }
        let age = self.highest - counter;
        if age >= WINDOW {
            Err(Replay::TooOld)
        } else if self.seen & (1 << age) != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as accepted (it passed [`ReplayWindow::check`]).
    pub fn accept(&mut self, counter: u64) {
        debug_assert!(self.check(counter).is_ok());
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
        } else {
            self.seen |= 1 << (self.highest - counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn take(window: &mut ReplayWindow, counter: u64) -> Result<(), Replay> {
        window.check(counter)?;
        window.accept(counter);
        Ok(())
    }

    #[test]
    fn in_order_counters_are_accepted_once() {
        let mut w = ReplayWindow::default();
        for n in 1..=200 {
            assert_eq!(take(&mut w, n), Ok(()), "counter {n}");
            assert_eq!(w.check(n), Err(Replay::Duplicate), "counter {n} again");
        }
    }

    #[test]
    fn out_of_order_within_the_window_is_accepted_once() {
        let mut w = ReplayWindow::default();
        assert_eq!(take(&mut w, 10), Ok(()));
        for n in [7, 9, 8, 3, 1] {
            assert_eq!(take(&mut w, n), Ok(()), "late counter {n}");
        }
        for n in [10, 7, 9, 8, 3, 1] {
            assert_eq!(w.check(n), Err(Replay::Duplicate), "counter {n} again");
        }
        assert_eq!(take(&mut w, 2), Ok(()), "never seen, still in the window");
        assert_eq!(take(&mut w, 73), Ok(()));
        assert_eq!(take(&mut w, 10), Err(Replay::Duplicate), "63 behind and seen");
        assert_eq!(take(&mut w, 11), Ok(()), "62 behind, never seen");
        assert_eq!(take(&mut w, 9), Err(Replay::TooOld), "64 behind");
    }

    #[test]
    fn too_old_and_zero_are_refused() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(0), Err(Replay::TooOld));
        assert_eq!(take(&mut w, 1000), Ok(()));
        assert_eq!(w.check(1000 - WINDOW), Err(Replay::TooOld));
        assert_eq!(w.check(1), Err(Replay::TooOld));
        assert_eq!(take(&mut w, 1000 - WINDOW + 1), Ok(()), "the oldest counter the window holds");
    }

    #[test]
    fn a_jump_beyond_the_window_forgets_everything_before() {
        let mut w = ReplayWindow::default();
        for n in 1..=64 {
            take(&mut w, n).unwrap();
        }
        assert_eq!(take(&mut w, 1000), Ok(()));
        assert_eq!(w.check(999), Ok(()));
        assert_eq!(w.check(64), Err(Replay::TooOld));
    }

    proptest! {
        /// Against a set of every counter accepted: a counter is accepted at most once, and
        /// always when it is new and within the window.
        #[test]
        fn behaves_like_a_set_bounded_by_the_window(counters in proptest::collection::vec(1u64..300, 0..400)) {
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::BTreeSet::new();
            let mut highest = 0;
            for n in counters {
                let expect_ok = !accepted.contains(&n) && (n > highest || highest - n < WINDOW);
                let got = take(&mut w, n);
                prop_assert_eq!(got.is_ok(), expect_ok, "counter {} (highest {})", n, highest);
                if got.is_ok() {
                    accepted.insert(n);
                    highest = highest.max(n);
                }
            }
        }
    }
}
