//! The one door into the outbox: every source (HTTP, scanners, sensors)
//! turns what it received into an [`Envelope`] here and waits until the
//! outbox has committed it durably.

use chrono::{DateTime, FixedOffset};
use protocol::{Envelope, EventBody, EventId, Source};
use tracing::Instrument;

use crate::outbox::{AppendOutcome, OutboxError, OutboxHandle};

/// The store this agent serves; stamped on every envelope.
#[derive(Debug, Clone)]
pub struct StoreIdentity {
    pub store_id: String,
    pub region: String,
}

#[derive(Clone)]
pub struct Ingest {
    outbox: OutboxHandle,
    store: StoreIdentity,
}

/// What happened to a submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Durably committed under this new id.
    Stored(EventId),
    /// The same transaction (terminal, business day, sequence number) was
    /// accepted before; this is its original id and nothing new was stored.
    Duplicate(EventId),
    /// Telemetry that was shed because the outbox is full (counted and reported).
    Shed,
}

impl Ingest {
    pub fn new(outbox: OutboxHandle, store: StoreIdentity) -> Self {
        Ingest { outbox, store }
    }

    pub fn store(&self) -> &StoreIdentity {
        &self.store
    }

    /// Wraps `body` in an envelope and waits until it is durable.
    ///
    /// `idempotency_key` is set for transactions: the same key submitted again
    /// returns the first event's id. A key submitted again with a different
    /// body is refused with [`OutboxError::IdempotencyConflict`].
    pub async fn submit(
        &self,
        source: Source,
        occurred_at: DateTime<FixedOffset>,
        body: EventBody,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, OutboxError> {
        let envelope = Envelope::new(
            self.store.store_id.clone(),
            self.store.region.clone(),
            source,
            occurred_at,
            body,
        );
        let id = envelope.id;
        let span = tracing::debug_span!("ingest", store = %self.store.store_id, device = %envelope.source.device_id, event = %id, kind = %envelope.schema);
        match self
            .outbox
            .append(envelope, idempotency_key)
            .instrument(span)
            .await?
        {
            AppendOutcome::Stored => Ok(Submitted::Stored(id)),
            AppendOutcome::Duplicate(original) => Ok(Submitted::Duplicate(original)),
            AppendOutcome::Shed => Ok(Submitted::Shed),
        }
    }
}
