//! Delivery receipts back to the store, built once every event of a batch
//! is settled (see [`protocol::receipt`]).

use protocol::receipt::{DeliveryOutcome, DeliveryReceipt, EventReceipt};
use protocol::EventId;

/// How one event of a batch was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Delivered(EventId),
    Duplicate(EventId),
    /// Dead-lettered; the id is absent when the bytes had none readable.
    DeadLettered(Option<EventId>, &'static str),
}

/// The receipt for a batch, or `None` if no event in it can be named.
pub fn build(
    store_id: &str,
    batch_id: uuid::Uuid,
    settled: &[Settled],
    bridge_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> DeliveryReceipt {
    let events = settled
        .iter()
        .filter_map(|s| match s {
            Settled::Delivered(id) => Some(EventReceipt {
                id: *id,
                outcome: DeliveryOutcome::Delivered,
                reason: None,
            }),
            Settled::Duplicate(id) => Some(EventReceipt {
                id: *id,
                outcome: DeliveryOutcome::Duplicate,
                reason: None,
            }),
            Settled::DeadLettered(id, reason) => id.map(|id| EventReceipt {
                id,
                outcome: DeliveryOutcome::DeadLettered,
                reason: Some((*reason).to_owned()),
            }),
        })
        .collect();
    DeliveryReceipt {
        store_id: store_id.to_owned(),
        batch_id,
        events,
        bridge_id: bridge_id.to_owned(),
        receipted_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_name_every_identifiable_event_with_its_outcome() {
        let a = EventId::new_v7();
        let b = EventId::new_v7();
        let c = EventId::new_v7();
        let r = build(
            "s1",
            uuid::Uuid::now_v7(),
            &[
                Settled::Delivered(a),
                Settled::Duplicate(b),
                Settled::DeadLettered(Some(c), "store_mismatch"),
                Settled::DeadLettered(None, "undecodable"),
            ],
            "bridge-0",
            chrono::Utc::now(),
        );
        let outcomes: Vec<_> = r.events.iter().map(|e| (e.id, e.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                (a, DeliveryOutcome::Delivered),
                (b, DeliveryOutcome::Duplicate),
                (c, DeliveryOutcome::DeadLettered)
            ]
        );
        assert_eq!(r.events[2].reason.as_deref(), Some("store_mismatch"));
    }
}
