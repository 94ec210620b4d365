//! The bridge's bound on MQTT payload bytes it holds: received and not yet
//! acked (or given up). The message bounds (Receive Maximum, the received
//! queue, `limits.max_messages_in_flight`) count messages, and a message may
//! be anything up to `protocol::batch::MAX_PUBLISH_PACKET_BYTES`: a hundred
//! 4 MiB batches, plus the Kafka client's copy of each record, would be far
//! more than a replica's memory. The event loop takes bytes from the budget
//! before it hands a message on and defers the message (as when the queue
//! is full) if they are not there; the bytes come back when the message's
//! [`HeldPayload`] is dropped, on every path: acked, aborted, or shut down.

use prometheus_client::metrics::gauge::Gauge;

/// Shared by the event loop (which takes) and every message (which gives
/// back when dropped). The gauge is the count itself, so `/metrics` shows
/// it, with its highest value since start beside it (what a memory limit
/// must be sized for).
#[derive(Clone, Debug)]
pub struct PayloadBudget {
    held: Gauge,
    peak: Gauge,
    limit: i64,
}

impl PayloadBudget {
    pub fn new(limit: usize, held: Gauge, peak: Gauge) -> PayloadBudget {
        PayloadBudget {
            held,
            peak,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        }
    }

    /// Takes `bytes` if they fit. A message larger than the whole budget
    /// passes when nothing else is held, so no message can wait forever.
    /// Only the event loop takes, so the check and the add cannot race
    /// another taker; returns only ever lower the count meanwhile.
    pub fn try_take(&self, bytes: usize) -> Option<HeldPayload> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let held = self.held.get();
        if held > 0 && held.saturating_add(bytes) > self.limit {
            return None;
        }
        let now = self.held.inc_by(bytes).saturating_add(bytes);
        if now > self.peak.get() {
            self.peak.set(now);
        }
        Some(HeldPayload {
            held: self.held.clone(),
            bytes,
        })
    }

    /// Whether enough has come back to take messages again: half the budget,
    /// so a deferring loop does not reconnect for one message's worth.
    pub fn has_room(&self) -> bool {
        self.held.get() <= self.limit / 2
    }

    pub fn held(&self) -> i64 {
        self.held.get()
    }

    pub fn peak(&self) -> i64 {
        self.peak.get()
    }
}

/// One message's bytes, given back to the budget when dropped.
#[derive(Debug)]
pub struct HeldPayload {
    held: Gauge,
    bytes: i64,
}

impl Drop for HeldPayload {
    fn drop(&mut self) {
        self.held.dec_by(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_taken_up_to_the_limit_and_come_back_when_dropped() {
        let budget = PayloadBudget::new(1000, Gauge::default(), Gauge::default());
        let a = budget.try_take(600).expect("fits");
        assert!(budget.try_take(500).is_none(), "over the limit");
        let b = budget.try_take(400).expect("exactly at the limit");
        assert_eq!(budget.held(), 1000);
        assert!(!budget.has_room());
        drop(a);
        assert_eq!(budget.held(), 400);
        assert!(budget.has_room());
        drop(b);
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.peak(), 1000);
    }

    #[test]
    fn a_message_larger_than_the_budget_passes_alone() {
        let budget = PayloadBudget::new(1000, Gauge::default(), Gauge::default());
        let big = budget.try_take(5000).expect("nothing else is held");
        assert!(budget.try_take(1).is_none());
        drop(big);
        assert!(budget.try_take(1).is_some());
    }
}
