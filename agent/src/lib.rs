//! The StoreLink edge agent.
//!
//! Sources (POS HTTP, serial scanners, shelf sensors on the in-store MQTT
//! broker) hand validated events to [`ingest::Ingest`], which commits them to
//! the SQLite [`outbox`] before anyone is told "accepted". The [`forwarder`]
//! sends the outbox to the cloud broker and deletes events only when the
//! bridge's delivery receipt says Kafka has them. See ARCHITECTURE.md.

pub mod config;
pub mod config_check;
pub mod devices;
pub mod forwarder;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod reconnect;
pub mod shutdown;
