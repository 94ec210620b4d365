//! `cloud-bridge topics ensure` against a real broker, and configuration
//! errors reported all at once before anything connects.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use harness::process::bin_path;

fn bridge(args: &[&str], config: &Path) -> Result<Output> {
    Command::new(bin_path("cloud-bridge")?)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .context("running cloud-bridge")
}

fn config(
    dir: &Path,
    bootstrap: &str,
    partitions: i32,
    rf: i32,
    retention_ms: i64,
) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("bridge-{partitions}-{rf}-{retention_ms}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbootstrap = \"{bootstrap}\"\n[topics]\npartitions = {partitions}\n\
             replication_factor = {rf}\nmin_insync_replicas = 1\nretention_ms = {retention_ms}\n"
        ),
    )?;
    Ok(path)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn topics_ensure_creates_then_checks_then_fixes_partitions_and_reports_replication_drift(
) -> Result<()> {
    let kafka = harness::kafka::shared();
    let dir = tempfile::tempdir()?;
    let day = 86_400_000;

    let created = bridge(
        &["topics", "ensure"],
        &config(dir.path(), kafka.bootstrap(), 2, 1, day)?,
    )?;
    assert!(created.status.success(), "{}", text(&created));
    let out = String::from_utf8_lossy(&created.stdout);
    for t in protocol::topics::KafkaTopic::ALL {
        assert!(
            out.contains(&format!("{}: created", t.name())),
            "{}",
            text(&created)
        );
    }

    let again = bridge(
        &["topics", "ensure"],
        &config(dir.path(), kafka.bootstrap(), 2, 1, day)?,
    )?;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout)
            .matches(": ok")
            .count(),
        protocol::topics::KafkaTopic::ALL.len(),
        "{}",
        text(&again)
    );

    // More partitions move keys: drift, until an operator asks for it.
    let grown_config = config(dir.path(), kafka.bootstrap(), 4, 1, 2 * day)?;
    let refused = bridge(&["topics", "ensure"], &grown_config)?;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(
        out.contains("DRIFT retail.transactions.v1: has 2 partitions, configured 4"),
        "{}",
        text(&refused)
    );
    assert!(!out.contains("partitions increased"), "{}", text(&refused));
    assert!(out.contains("configs set"), "{}", text(&refused));
    let grown = bridge(&["topics", "ensure", "--add-partitions"], &grown_config)?;
    assert!(grown.status.success(), "{}", text(&grown));
    let out = String::from_utf8_lossy(&grown.stdout);
    assert!(
        out.contains("partitions increased to 4"),
        "{}",
        text(&grown)
    );
    // What the broker has, not what the command said it did.
    for t in protocol::topics::KafkaTopic::ALL {
        let (partitions, configs) = harness::kafka::describe_topic(kafka.bootstrap(), t.name())?;
        assert_eq!(partitions, 4, "{}", t.name());
        if t != protocol::topics::KafkaTopic::DeadLetters {
            assert_eq!(
                configs.get("retention.ms").map(String::as_str),
                Some((2 * day).to_string().as_str()),
                "{}: {configs:?}",
                t.name()
            );
        }
        assert_eq!(
            configs.get("min.insync.replicas").map(String::as_str),
            Some("1"),
            "{}: {configs:?}",
            t.name()
        );
    }
    let settled = bridge(&["topics", "ensure", "--check"], &grown_config)?;
    assert!(settled.status.success(), "{}", text(&settled));
    assert_eq!(
        String::from_utf8_lossy(&settled.stdout)
            .matches(": ok")
            .count(),
        protocol::topics::KafkaTopic::ALL.len(),
        "{}",
        text(&settled)
    );

    // An operator set a topic's segment size with a tool that replaces its
    // settings (ours went back to the broker defaults). Fixing ours keeps
    // theirs: rdkafka's AlterConfigs would otherwise reset it in turn.
    let topic = protocol::topics::KafkaTopic::Transactions.name();
    harness::kafka::replace_topic_configs(kafka.bootstrap(), topic, &[("segment.ms", "3600000")])?;
    let fixed = bridge(&["topics", "ensure"], &grown_config)?;
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(
        String::from_utf8_lossy(&fixed.stdout).contains("other settings kept: [\"segment.ms\"]"),
        "{}",
        text(&fixed)
    );
    let (_, configs) = harness::kafka::describe_topic(kafka.bootstrap(), topic)?;
    assert_eq!(
        configs.get("segment.ms").map(String::as_str),
        Some("3600000"),
        "{configs:?}"
    );
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some((2 * day).to_string().as_str()),
        "{configs:?}"
    );

    let drift = bridge(
        &["topics", "ensure"],
        &config(dir.path(), kafka.bootstrap(), 4, 2, 2 * day)?,
    )?;
    assert_eq!(drift.status.code(), Some(1), "{}", text(&drift));
    assert!(
        String::from_utf8_lossy(&drift.stdout)
            .contains("DRIFT retail.transactions.v1: replication factor is 1, configured 2"),
        "{}",
        text(&drift)
    );
    Ok(())
}

#[test]
fn an_invalid_config_is_refused_with_every_error_before_connecting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "bridge_id = \"has space\"\n[mqtt]\nport = 0\nkeep_alive_s = 0\n[limits]\nmax_events_in_flight = 0\n",
    )?;
    let o = bridge(&["run"], &path)?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "mqtt.port",
        "mqtt.keep_alive_s",
        "bridge_id",
        "kafka.bootstrap",
        "limits.max_events_in_flight",
    ] {
        assert!(err.contains(needle), "{needle} not reported:\n{}", text(&o));
    }
    Ok(())
}
