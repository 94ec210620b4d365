//! The de-duplication window: event ids this replica has published recently.
//!
//! An agent resends after a crash or a reconnect when it did not get the
//! receipt; the window turns such resends into `Duplicate` receipts instead of
//! second copies in Kafka. It is memory-bounded by entry count *and* age, and
//! it is pure: time is passed in, so tests need no clock.
//!
//! An id is first *reserved* (its first copy is being produced), then
//! *published* (Kafka confirmed it). A second copy arriving while the first is
//! reserved waits for the outcome rather than receipting `Duplicate` for an
//! event Kafka does not have yet. A reservation whose produce is abandoned
//! (shutdown) is released so a redelivery publishes it.
//!
//! The window is per replica: a resend that the shared subscription hands to
//! another replica is published again. Kafka consumers must therefore still
//! treat the event id (header `storelink.event_id`) as the idempotency key.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol::EventId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the window: the caller now holds a reservation.
    New,
    /// A first copy is being produced right now.
    InFlight,
    /// Published within the window.
    Published,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reserved,
    Published,
}

/// Slots allocated up front, so the window never rehashes under load (a
/// rehash of a million entries stalls every message behind it).
const PREALLOCATED_ENTRIES: usize = 1 << 20;

#[derive(Debug)]
pub struct DedupeWindow {
    max_entries: usize,
    max_age: Duration,
    /// foldhash, randomly seeded per process: several times cheaper than
    /// SipHash on 16-byte ids, and a store choosing its own ids still
    /// cannot predict collisions.
    entries: HashMap<EventId, (State, Instant), foldhash::fast::RandomState>,
    /// Insertion order for eviction; may hold ids already removed.
    order: VecDeque<(EventId, Instant)>,
}

impl DedupeWindow {
    pub fn new(max_entries: usize, max_age: Duration) -> DedupeWindow {
        let slots = max_entries.min(PREALLOCATED_ENTRIES);
        DedupeWindow {
            max_entries,
            max_age,
            entries: HashMap::with_capacity_and_hasher(slots, Default::default()),
            order: VecDeque::with_capacity(2 * slots),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `id` up; if new, reserves it.
    pub fn check_and_reserve(&mut self, id: EventId, now: Instant) -> Seen {
        self.evict(now);
        if self.max_entries == 0 {
            return Seen::New;
        }
        match self.entries.get(&id) {
            Some((State::Reserved, _)) => Seen::InFlight,
            Some((State::Published, _)) => Seen::Published,
            None => {
                self.entries.insert(id, (State::Reserved, now));
                self.order.push_back((id, now));
                self.evict(now);
                Seen::New
            }
        }
    }

    /// What the window knows of `id` without reserving it.
    pub fn peek(&self, id: &EventId) -> Option<Seen> {
        self.entries.get(id).map(|(s, _)| match s {
            State::Reserved => Seen::InFlight,
            State::Published => Seen::Published,
        })
    }

    /// Kafka confirmed `id`; the age counts from now.
    pub fn mark_published(&mut self, id: EventId, now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        self.entries.insert(id, (State::Published, now));
        self.order.push_back((id, now));
        self.evict(now);
    }

    /// The reservation of `id` was abandoned; a later copy may publish it.
    pub fn release(&mut self, id: &EventId) {
        if let Some((State::Reserved, _)) = self.entries.get(id) {
            self.entries.remove(id);
        }
    }

    /// Drops the oldest slots while the window is over its entry budget or
    /// they are older than `max_age`. Each id has at most two slots (reserved,
    /// published), so `order` stays within twice the entry budget.
    fn evict(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.order.front() {
            let too_many = self.entries.len() > self.max_entries;
            let too_old = now.saturating_duration_since(at) > self.max_age;
            if !too_many && !too_old {
                break;
            }
            self.order.pop_front();
            let Some(&(state, stamped)) = self.entries.get(&id) else {
                continue;
            };
            // A slot older than the entry's latest stamp is stale.
            if stamped != at {
                continue;
            }
            // A reservation is never aged out: its first copy is still in
            // flight and settles the outcome. Over budget, memory wins.
            if too_many || state == State::Published {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> EventId {
        EventId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_published_id_is_a_duplicate_within_the_window() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(10, Duration::from_secs(60));
        assert_eq!(w.check_and_reserve(id(1), t0), Seen::New);
        assert_eq!(w.check_and_reserve(id(1), t0), Seen::InFlight);
        w.mark_published(id(1), t0);
        assert_eq!(
            w.check_and_reserve(id(1), t0 + Duration::from_secs(59)),
            Seen::Published
        );
    }

    #[test]
    fn ids_expire_after_max_age() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(10, Duration::from_secs(60));
        w.check_and_reserve(id(1), t0);
        w.mark_published(id(1), t0);
        assert_eq!(
            w.check_and_reserve(id(1), t0 + Duration::from_secs(61)),
            Seen::New
        );
    }

    #[test]
    fn the_window_never_holds_more_than_max_entries() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(100, Duration::from_secs(3600));
        for n in 0..10_000 {
            w.check_and_reserve(id(n), t0);
            w.mark_published(id(n), t0);
            assert!(w.len() <= 100);
        }
        // The newest are remembered, the oldest forgotten.
        assert_eq!(w.peek(&id(9_999)), Some(Seen::Published));
        assert_eq!(w.peek(&id(0)), None);
    }

    #[test]
    fn a_released_reservation_can_be_taken_again() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(10, Duration::from_secs(60));
        assert_eq!(w.check_and_reserve(id(7), t0), Seen::New);
        w.release(&id(7));
        assert_eq!(w.check_and_reserve(id(7), t0), Seen::New);
    }

    #[test]
    fn a_zero_sized_window_disables_deduplication() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(0, Duration::from_secs(60));
        w.mark_published(id(1), t0);
        assert_eq!(w.check_and_reserve(id(1), t0), Seen::New);
    }
}
