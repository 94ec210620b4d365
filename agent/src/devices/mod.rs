//! Device sources (scanners, shelf sensors). Placeholder until the devices work lands.

use firmware_config::StoreProfile;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;

pub fn spawn(
    _profile: &StoreProfile,
    _ingest: Ingest,
    _registry: &mut Registry,
    _shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    Vec::new()
}
