//! StoreLink's shared contract between the store agent and the cloud bridge.
//!
//! * [`envelope`] — the envelope every event travels in, typed and raw views.
//! * [`transaction`], [`device`] — the domain bodies (POSLog-modelled sales,
//!   returns, voids; scans, shelf readings, alerts, device status).
//! * [`money`] — integer minor units and ISO 4217 exponents. No floats.
//! * [`receipt`] — the bridge's delivery receipt back to a store.
//! * [`batch`] — several events in one MQTT message.
//! * [`topics`] — MQTT topics, Kafka topics and partition keys.
//! * [`samples`] — one valid example of every event type; the golden files
//!   under `samples/v1/` were written from them and must parse forever.
//!
//! This crate depends on nothing of ours. Evolution rules: `VERSIONING.md`.

pub mod batch;
pub mod checked_envelope;
pub mod device;
pub mod envelope;
pub mod gtin;
pub mod money;
pub mod receipt;
mod rfc3339;
pub mod samples;
pub mod topics;
pub mod transaction;
pub mod validation;

pub use envelope::{
    Envelope, EnvelopeError, EventBody, EventId, EventKind, RawEnvelope, Source, SourceKind,
};
pub use gtin::Gtin;
pub use money::{Currency, MinorUnits, Money};
pub use validation::{FieldError, Problems};

/// Store ids appear in MQTT topics and Kafka keys, so they are restricted to
/// lowercase letters, digits and `-` (no `/`, `+`, `#`), 2 to 63 characters.
pub fn validate_store_id(id: &str) -> Result<(), FieldError> {
    let ok = (2..=63).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "store_id",
            "invalid_id",
            "must be 2-63 characters of a-z 0-9 and -, starting with a letter or digit",
        ))
    }
}

/// Device ids (terminals, scanners, sensors) appear in topics and keys too.
pub fn validate_device_id(field: &str, id: &str) -> Result<(), FieldError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "invalid_id",
            "must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}
