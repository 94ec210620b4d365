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
//! Entries are keyed by store *and* event id. Ids are chosen by agents, so a
//! window keyed by id alone would let one store (hostile, or with a broken
//! id generator) publish another store's id first: the real event would then
//! be receipted `Duplicate`, deleted from that store's outbox and never reach
//! Kafka. Store ids are interned to 4 bytes once per message; the broker's
//! ACL (one topic per store login) bounds how many there are.
//!
//! The window is per replica: a resend that the shared subscription hands to
//! another replica is published again. Kafka consumers must therefore still
//! treat the store and event id (headers `storelink.store_id` and
//! `storelink.event_id`) as the idempotency key.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol::EventId;

/// A store's id, interned by [`DedupeWindow::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKey(u32);

/// What the window remembers: an event id within its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub store: StoreKey,
    pub id: EventId,
}

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

/// Whole seconds since the window was created (so an id leaves between
/// `max_age` and `max_age` + 2 s after publication, never before), with the
/// entry's state in the top bit: 4 bytes where an `Instant` and a state took
/// 24, so a table bucket is 24 bytes instead of 44 and an eviction slot 24
/// instead of 36. The default million-entry window reserves about 103 MB
/// instead of 170 MB (2^21 buckets plus 2^21 slots), and a restarted bridge working
/// through a backlog faults in that many fewer fresh pages. 2^31 seconds is
/// 68 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(u32);

impl Stamp {
    const PUBLISHED: u32 = 1 << 31;

    fn new(secs: u32, state: State) -> Stamp {
        let secs = secs & !Self::PUBLISHED;
        Stamp(match state {
            State::Reserved => secs,
            State::Published => secs | Self::PUBLISHED,
        })
    }

    fn secs(self) -> u32 {
        self.0 & !Self::PUBLISHED
    }

    fn state(self) -> State {
        if self.0 & Self::PUBLISHED == 0 {
            State::Reserved
        } else {
            State::Published
        }
    }
}

#[derive(Debug)]
pub struct DedupeWindow {
    max_entries: usize,
    max_age_s: u64,
    epoch: Instant,
    /// foldhash, randomly seeded per process: several times cheaper than
    /// SipHash on 16-byte ids, and a store choosing its own ids still
    /// cannot predict collisions.
    entries: HashMap<Key, Stamp, foldhash::fast::RandomState>,
    /// Insertion order for eviction, with the second each slot was pushed;
    /// may hold ids already removed or re-stamped since.
    order: VecDeque<(Key, u32)>,
    /// Interned store ids; never shrinks (one entry per store in the fleet).
    stores: HashMap<Box<str>, StoreKey, foldhash::fast::RandomState>,
}

impl DedupeWindow {
    pub fn new(max_entries: usize, max_age: Duration) -> DedupeWindow {
        let slots = max_entries.min(PREALLOCATED_ENTRIES);
        let mut w = DedupeWindow {
            max_entries,
            max_age_s: max_age.as_secs(),
            epoch: Instant::now(),
            entries: HashMap::with_capacity_and_hasher(slots, Default::default()),
            order: VecDeque::with_capacity(2 * slots),
            stores: HashMap::default(),
        };
        w.touch_reserved_memory(slots);
        w
    }

    /// Writes every page the window reserved once, then empties it again
    /// (`clear` keeps the memory), like the JVM's `AlwaysPreTouch`. Without
    /// this, the pages are faulted in and zeroed by the kernel one by one
    /// while the first million events go through: exactly when a restarted
    /// bridge works through the backlog stores queued meanwhile (`perf` put
    /// those faults at 6 % of a draining bridge's CPU). Start-up pays it
    /// instead, about 60 ms for the default window, and the resident memory
    /// is what it will be under load from the first minute, so a pod's
    /// memory limit that is too small fails at start, not mid-backlog.
    fn touch_reserved_memory(&mut self, slots: usize) {
        for n in 0..slots {
            self.entries.insert(filler_key(n), Stamp(0));
        }
        self.entries.clear();
        let order_slots = self.order.capacity();
        self.order
            .extend((0..order_slots).map(|n| (filler_key(n), 1)));
        self.order.clear();
    }

    /// The interned key of `store_id`; look it up once per message.
    pub fn store(&mut self, store_id: &str) -> StoreKey {
        if let Some(&k) = self.stores.get(store_id) {
            return k;
        }
        // More than 2^32 distinct stores cannot pass the broker's ACL; if it
        // ever happened, the last key is shared, which only costs
        // de-duplication precision between those stores, never an event.
        let k = StoreKey(u32::try_from(self.stores.len()).unwrap_or(u32::MAX));
        self.stores.insert(store_id.into(), k);
        k
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seconds since the window's epoch (ages are kept to the second).
    fn secs(&self, now: Instant) -> u32 {
        let s = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(s).unwrap_or(u32::MAX) & !Stamp::PUBLISHED
    }

    /// Looks `id` up; if new, reserves it.
    pub fn check_and_reserve(&mut self, id: Key, now: Instant) -> Seen {
        let secs = self.secs(now);
        self.evict(secs);
        if self.max_entries == 0 {
            return Seen::New;
        }
        match self.entries.entry(id) {
            Entry::Occupied(e) => match e.get().state() {
                State::Reserved => Seen::InFlight,
                State::Published => Seen::Published,
            },
            Entry::Vacant(e) => {
                e.insert(Stamp::new(secs, State::Reserved));
                self.order.push_back((id, secs));
                self.evict(secs);
                Seen::New
            }
        }
    }

    /// What the window knows of `id` without reserving it.
    pub fn peek(&self, id: &Key) -> Option<Seen> {
        self.entries.get(id).map(|s| match s.state() {
            State::Reserved => Seen::InFlight,
            State::Published => Seen::Published,
        })
    }

    /// Kafka confirmed `id`; the age counts from now.
    pub fn mark_published(&mut self, id: Key, now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let secs = self.secs(now);
        self.entries.insert(id, Stamp::new(secs, State::Published));
        self.order.push_back((id, secs));
        self.evict(secs);
    }

    /// The reservation of `id` was abandoned; a later copy may publish it.
    pub fn release(&mut self, id: &Key) {
        if let Some(s) = self.entries.get(id) {
            if s.state() == State::Reserved {
                self.entries.remove(id);
            }
        }
    }

    /// Drops the oldest slots while the window is over its entry budget or
    /// they are older than `max_age`. Each id has at most two slots (reserved,
    /// published), so `order` stays within twice the entry budget.
    fn evict(&mut self, now_s: u32) {
        while let Some(&(id, at)) = self.order.front() {
            let too_many = self.entries.len() > self.max_entries;
            let too_old = u64::from(now_s.saturating_sub(at)) > self.max_age_s;
            if !too_many && !too_old {
                break;
            }
            self.order.pop_front();
            let Some(&stamp) = self.entries.get(&id) else {
                continue;
            };
            // A slot older than the entry's latest stamp is stale.
            if stamp.secs() != at {
                continue;
            }
            // A reservation is never aged out: its first copy is still in
            // flight and settles the outcome. Over budget, memory wins.
            if too_many || stamp.state() == State::Published {
                self.entries.remove(&id);
            }
        }
    }
}

fn filler_key(n: usize) -> Key {
    Key {
        store: StoreKey(0),
        id: EventId(uuid::Uuid::from_u128(n as u128)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Key {
        Key {
            store: StoreKey(0),
            id: EventId(uuid::Uuid::from_u128(n)),
        }
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
        // Ages are kept to the second: an id leaves between max_age and
        // max_age + 2 s after it was published, never before.
        assert_eq!(
            w.check_and_reserve(id(1), t0 + Duration::from_secs(62)),
            Seen::New
        );
    }

    #[test]
    fn entries_and_slots_are_24_bytes() {
        assert_eq!(std::mem::size_of::<(Key, Stamp)>(), 24);
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 24);
    }

    #[test]
    fn the_same_id_from_another_store_is_not_a_duplicate() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(10, Duration::from_secs(60));
        let (a, b) = (w.store("store-a"), w.store("store-b"));
        assert_ne!(a, b);
        assert_eq!(w.store("store-a"), a);
        let event = EventId(uuid::Uuid::from_u128(42));
        let from_a = Key {
            store: a,
            id: event,
        };
        let from_b = Key {
            store: b,
            id: event,
        };
        assert_eq!(w.check_and_reserve(from_a, t0), Seen::New);
        w.mark_published(from_a, t0);
        assert_eq!(w.check_and_reserve(from_b, t0), Seen::New);
        assert_eq!(w.check_and_reserve(from_a, t0), Seen::Published);
    }

    #[test]
    fn stamps_keep_state_and_seconds_apart() {
        for secs in [0, 1, 59, (1 << 31) - 1] {
            for state in [State::Reserved, State::Published] {
                let s = Stamp::new(secs, state);
                assert_eq!((s.secs(), s.state()), (secs, state));
            }
        }
    }

    #[test]
    fn a_reserved_then_published_id_ages_from_its_publication() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(10, Duration::from_secs(60));
        w.check_and_reserve(id(1), t0);
        w.mark_published(id(1), t0 + Duration::from_secs(30));
        // 80 s after the reservation but 50 s after publication: still known.
        assert_eq!(
            w.check_and_reserve(id(1), t0 + Duration::from_secs(80)),
            Seen::Published
        );
        assert_eq!(
            w.check_and_reserve(id(1), t0 + Duration::from_secs(93)),
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
    fn touching_the_reserved_memory_leaves_the_window_empty() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(1000, Duration::from_secs(60));
        assert!(w.is_empty());
        assert!(w.order.is_empty());
        assert!(w.entries.capacity() >= 1000 && w.order.capacity() >= 2000);
        // The ids used to touch the pages are not remembered.
        assert_eq!(w.check_and_reserve(id(0), t0), Seen::New);
        assert_eq!(w.peek(&id(1)), None);
    }

    #[test]
    fn a_zero_sized_window_disables_deduplication() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(0, Duration::from_secs(60));
        w.mark_published(id(1), t0);
        assert_eq!(w.check_and_reserve(id(1), t0), Seen::New);
    }
}
