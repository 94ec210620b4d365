//! Test harness for StoreLink's end-to-end tests: real Mosquitto, real Kafka and the workspace binaries as separate processes.
pub mod agent;
pub mod bench;
pub mod kafka;
pub mod mosquitto;
pub mod process;
pub mod sqlite_file;
pub mod throttle;
pub mod tls;
