//! The agent's runtime configuration: the store profile plus environment
//! overrides, validated before anything is opened or bound.
//!
//! Overrides (for containers and tests; the profile stays the source of truth):
//! `STORELINK_HTTP_LISTEN`, `STORELINK_DATA_DIR`, `STORELINK_CLOUD_HOST`,
//! `STORELINK_CLOUD_PORT`, `STORELINK_LOCAL_MQTT_HOST`, `STORELINK_LOCAL_MQTT_PORT`,
//! `STORELINK_RECEIPT_TIMEOUT_SECS`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use firmware_config::StoreProfile;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

fn override_from<T: std::str::FromStr>(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
    target: &mut T,
) -> Result<()>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = env(name) {
        *target = v
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}"))?;
    }
    Ok(())
}

/// Loads the profile and applies environment overrides.
pub fn load(path: &Path) -> Result<StoreProfile> {
    with_overrides(firmware_config::load(path)?, |name| {
        std::env::var(name).ok()
    })
}

/// Applies the overrides `env` names, then validates the result as the
/// profile was: an override is held to the profile's rules (a receipt
/// timeout of 0 would resend every batch twice a second).
pub fn with_overrides(
    mut profile: StoreProfile,
    env: impl Fn(&str) -> Option<String>,
) -> Result<StoreProfile> {
    override_from(
        &env,
        "STORELINK_HTTP_LISTEN",
        &mut profile.agent.http_listen,
    )?;
    override_from(&env, "STORELINK_DATA_DIR", &mut profile.agent.data_dir)?;
    override_from(&env, "STORELINK_CLOUD_HOST", &mut profile.cloud.host)?;
    override_from(&env, "STORELINK_CLOUD_PORT", &mut profile.cloud.port)?;
    override_from(
        &env,
        "STORELINK_RECEIPT_TIMEOUT_SECS",
        &mut profile.cloud.receipt_timeout_secs,
    )?;
    if let Some(local) = profile.local_mqtt.as_mut() {
        override_from(&env, "STORELINK_LOCAL_MQTT_HOST", &mut local.host)?;
        override_from(&env, "STORELINK_LOCAL_MQTT_PORT", &mut local.port)?;
    }
    let errors: Vec<String> = profile
        .validate()
        .into_iter()
        .filter(firmware_config::Problem::is_error)
        .map(|p| p.to_string())
        .collect();
    if !errors.is_empty() {
        anyhow::bail!(
            "the store profile with its environment overrides is invalid:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(profile)
}

/// MQTT options for the cloud link. Values were validated with the profile;
/// rumqttc's setters `assert!` on bad values, so nothing unchecked reaches them.
pub fn cloud_mqtt_options(profile: &StoreProfile) -> Result<MqttOptions> {
    let cloud = &profile.cloud;
    let mut opts = MqttOptions::new(cloud.client_id.clone(), cloud.host.clone(), cloud.port);
    // A persistent session: receipts published while the store was offline
    // wait for it at the broker.
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(cloud.keep_alive_secs.clamp(5, 600)));
    // Any batch the forwarder builds (a lone event over batch_max_bytes
    // included) fits the contract's packet size; a smaller client limit made
    // such a batch fail on every reconnect and stalled the store's link.
    let max_packet = protocol::batch::MAX_PUBLISH_PACKET_BYTES;
    opts.set_max_packet_size(max_packet, max_packet);
    // The forwarder bounds batches in flight itself; rumqttc's own PUBACK window
    // only needs to be at least that large, never smaller.
    opts.set_inflight(u16::try_from(cloud.max_batches_in_flight.clamp(16, 1000)).unwrap_or(100));
    opts.set_request_channel_capacity(cloud.max_batches_in_flight * 2 + 16);
    if let Some(tls) = &cloud.tls {
        let read = |p: &Path| {
            std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()))
        };
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read(&tls.ca_file)?,
            alpn: None,
            client_auth: Some((read(&tls.cert_file)?, read(&tls.key_file)?)),
        }));
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"[store]
id = "store-0042"
region = "eu-west"
timezone = "Europe/Dublin"
currency = "EUR"

[agent]
data_dir = "/var/lib/storelink"

[cloud]
host = "mqtt.example.com"
port = 8883
client_id = "store-0042-agent"

[[terminals]]
id = "pos-01"
"#;

    fn profile() -> StoreProfile {
        firmware_config::parse(PROFILE).expect("a valid profile")
    }

    #[test]
    fn overrides_apply_and_are_held_to_the_profiles_rules() {
        let p = with_overrides(profile(), |name| {
            (name == "STORELINK_RECEIPT_TIMEOUT_SECS").then(|| "45".to_owned())
        })
        .expect("a valid override");
        assert_eq!(p.cloud.receipt_timeout_secs, 45);

        let err = with_overrides(profile(), |name| {
            (name == "STORELINK_RECEIPT_TIMEOUT_SECS").then(|| "0".to_owned())
        })
        .expect_err("0 s would resend every batch on every tick");
        assert!(
            err.to_string().contains("cloud.receipt_timeout_secs"),
            "{err}"
        );

        let err = with_overrides(profile(), |name| {
            (name == "STORELINK_CLOUD_PORT").then(|| "0".to_owned())
        })
        .expect_err("port 0");
        assert!(err.to_string().contains("cloud.port"), "{err}");

        let err = with_overrides(profile(), |name| {
            (name == "STORELINK_CLOUD_PORT").then(|| "http".to_owned())
        })
        .expect_err("not a number");
        assert!(err.to_string().contains("STORELINK_CLOUD_PORT"), "{err}");
    }
}
