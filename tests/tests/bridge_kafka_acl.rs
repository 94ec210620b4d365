//! A bridge whose Kafka principal may only write its topics, as in a
//! locked-down cluster where a platform team owns topic settings: Kafka's
//! ACL authorizer is on, and the bridge's certificate subject is granted
//! `Write` and `Describe` on the `retail.` topics and nothing else (no
//! `DescribeConfigs`, no `CreateTopics`, no `AlterConfigs`).
//!
//! The bridge checks its topics at start-up. It must say, once and at error
//! level, that it could not check their settings and why, then carry on:
//! every event is receipted and in Kafka exactly once. rdkafka hands a
//! refused `DescribeConfigs` back as a topic with no settings; before this
//! test, the bridge took that for "none set" and altered the topics (which,
//! had Kafka allowed it, would have reset an operator's settings), and
//! logged "configs set" for the alter Kafka refused.
//!
//! Then, with `DescribeConfigs` granted but not `AlterConfigs`, `topics
//! ensure` must report the refused alter as unfixed drift and exit 1.

mod bridge_support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use bridge_support::*;
use harness::agent::{start_bridge_with, BridgeTls};
use harness::kafka::{describe_topic, BrokerTls, Kafka};
use harness::mosquitto::Mosquitto;
use harness::process::bin_path;
use harness::tls::TestPki;
use protocol::topics::KafkaTopic;

const STORE: &str = "store-kafka-acl";
const BRIDGE: &str = "bridge-kafka-acl";

#[test]
fn a_bridge_that_may_only_write_its_topics_says_so_and_delivers() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("storelink-kafka-acl-")
        .tempdir()?;
    let pki = TestPki::create(dir.path(), "kafka-acl-ca")?;
    let kafka = Kafka::start_with_tls_and_acls(&BrokerTls {
        server: pki.server("kafka-broker")?,
        client_ca: pki.ca.cert.clone(),
    })?;
    let ssl_bootstrap = kafka
        .ssl_bootstrap()
        .context("the broker opened no TLS listener")?
        .to_owned();
    // The platform team made the topics (as the harness bridge config asks:
    // 3 partitions, RF 1), through the super user's listener.
    let topics: Vec<(&str, i32)> = KafkaTopic::ALL.iter().map(|t| (t.name(), 3)).collect();
    kafka.create_topics(&topics)?;
    let principal = format!("User:CN={BRIDGE}");
    let granted = kafka.acl(&[
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "Write",
        "--operation",
        "Describe",
        "--topic",
        "retail.",
        "--resource-pattern-type",
        "prefixed",
    ])?;
    println!("ACLs granted:\n{}", granted.trim());

    let mosquitto = Mosquitto::start()?;
    let own = pki.client(BRIDGE)?;
    let (bridge, _) = start_bridge_with(
        dir.path(),
        BRIDGE,
        mosquitto.port(),
        &ssl_bootstrap,
        BridgeTls {
            mqtt: None,
            kafka: Some((pki.ca.cert.as_path(), &own)),
        },
    )?;

    let published =
        publish_receipted_once_in_kafka(mosquitto.port(), STORE, kafka.bootstrap(), || {
            bridge.log_tail(30)
        })?;

    // One error line per topic, naming the refusal, and no retry loop.
    let log = bridge.log_tail(10_000);
    let unchecked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("settings not checked"))
        .collect();
    for (topic, _) in &topics {
        let lines = unchecked.iter().filter(|l| l.contains(topic)).count();
        assert_eq!(
            lines, 1,
            "{topic}: expected one error line saying its settings were not checked\n{log}"
        );
    }
    assert!(
        unchecked.iter().all(|l| l.contains("DescribeConfigs")),
        "the error lines must name the missing permission:\n{}",
        unchecked.join("\n")
    );
    assert!(
        !log.contains("cannot ensure Kafka topics yet"),
        "a refusal is not retried:\n{log}"
    );
    println!(
        "write-only principal over TLS: {} events receipted, each once in Kafka; the bridge said: {}",
        published,
        unchecked.first().map(|l| l.trim()).unwrap_or_default()
    );

    // With DescribeConfigs but not AlterConfigs, `topics ensure` sees that
    // the topics lack the configured retention and tries to set it. Kafka
    // refuses; the command must say so and exit 1, not print "configs set".
    kafka.acl(&[
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "DescribeConfigs",
        "--topic",
        "retail.",
        "--resource-pattern-type",
        "prefixed",
    ])?;
    let before = describe_topic(kafka.bootstrap(), KafkaTopic::Transactions.name())?.1;
    // The new ACL reaches the broker's authorizer through the metadata log:
    // until then the settings are still "not checked".
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (out, stdout) = loop {
        let out = Command::new(bin_path("cloud-bridge")?)
            .args(["topics", "ensure", "--config"])
            .arg(dir.path().join(format!("{BRIDGE}.toml")))
            .env("RUST_LOG", "warn")
            .output()
            .context("running cloud-bridge topics ensure")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !stdout.contains("settings not checked") || std::time::Instant::now() >= deadline {
            break (out, stdout);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused alter is unfixed drift:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("configs set"),
        "an alter Kafka refused was reported as done:\n{stdout}"
    );
    for (topic, _) in &topics {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("DRIFT {topic}: altering configs was not applied"))),
            "{topic}: the refused alter is not reported:\n{stdout}"
        );
    }
    let after = describe_topic(kafka.bootstrap(), KafkaTopic::Transactions.name())?.1;
    assert_eq!(before, after, "the topic's settings changed");
    println!(
        "`topics ensure` without AlterConfigs: exit 1; {}",
        stdout
            .lines()
            .find(|l| l.contains("not applied"))
            .unwrap_or_default()
    );
    Ok(())
}
