//! A bridge replica lost for good (its node failed, nothing restarts it)
//! strands no share of the stores' traffic once its MQTT session expires.
//!
//! Mosquitto keeps routing a round-robin share of a shared subscription's
//! messages to a member's offline session. With MQTT 3.1.1 that session
//! never ended, so every other batch of every store went to a replica that
//! would never read it, and each such batch reached Kafka only after the
//! agent's receipt timeout sent it again (and then only if the resend did
//! not go the same way). The bridge's sessions are MQTT 5 with a session
//! expiry (`mqtt.session_expiry_s`, 3 s here): once it passes, Mosquitto
//! drops the dead replica's session and what it held, the agent resends
//! that, and the surviving replica takes everything.
//!
//! Real agent, two real bridge replicas, real Mosquitto and Kafka.

mod bridge_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bridge_support::{Bridge, BridgeOptions};
use harness::agent::{post_sale, sales_in_posting_order, StackOptions, StoreStack, TERMINALS};

const SESSION_EXPIRY_S: u64 = 3;
/// Long enough that a slow moment of Kafka's on a busy machine is not
/// taken for a batch stranded in the dead replica's session.
const RECEIPT_TIMEOUT_S: u64 = 5;
/// How long the test watches for resends once the session has expired.
const WINDOW: Duration = Duration::from_secs(10);

/// Posts sales from `terminal` until `stop`, each until it is answered 2xx
/// (a terminal keeps its journal), collecting the acknowledged event ids.
fn run_terminal(
    base: String,
    terminal: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let answer = post_sale(&client, &base, terminal, seq)
            .with_context(|| format!("{terminal} sale {seq}"))?;
        ensure!(
            answer.status().is_success(),
            "{terminal} sale {seq} refused: {}",
            answer.status()
        );
        let v: serde_json::Value = answer.json()?;
        let id = v["event_id"].as_str().context("event_id")?.to_owned();
        acked
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(id);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The agent's resend count; an error if the agent does not answer or no
/// longer exposes it (a missing metric must not read as an unchanged 0).
fn resends(stack: &StoreStack) -> Result<f64> {
    stack.agent_metric("storelink_agent_resends_total")
}

#[test]
fn a_replica_lost_for_good_strands_nothing_once_its_session_expires() -> Result<()> {
    let stack = StoreStack::start_with(StackOptions {
        with_bridge: false,
        receipt_timeout_secs: RECEIPT_TIMEOUT_S,
        ..StackOptions::default()
    })?;
    let kafka = harness::kafka::shared();
    let replica = |name: &str| BridgeOptions {
        session_expiry_s: SESSION_EXPIRY_S,
        ..BridgeOptions::replica(name)
    };
    let a = Bridge::start(
        stack.cloud_mqtt.port(),
        kafka.bootstrap(),
        replica("lost-a"),
    )?;
    let mut b = Bridge::start(
        stack.cloud_mqtt.port(),
        kafka.bootstrap(),
        replica("lost-b"),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let terminals: Vec<_> = TERMINALS[..4]
        .iter()
        .map(|t| {
            let (base, stop, acked) = (stack.http_base.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || run_terminal(base, t, stop, acked))
        })
        .collect();

    std::thread::sleep(Duration::from_secs(3));
    // b must hold a share of the traffic when it dies, or the test proves nothing.
    let b_receipts = b.metric("storelink_bridge_receipts_published_total")?;
    ensure!(
        b_receipts > 0.0,
        "replica b took no share of the store's batches before the kill; the test would prove nothing"
    );
    b.process.kill9()?;
    let killed = Instant::now();
    // The session expires SESSION_EXPIRY_S after the kill (Mosquitto checks
    // about once a second); batches that were waiting in it are resent at
    // most RECEIPT_TIMEOUT_S after that. Then nothing should need a resend.
    let settled = Duration::from_secs(SESSION_EXPIRY_S + 2 * RECEIPT_TIMEOUT_S + 2);
    std::thread::sleep(settled.saturating_sub(killed.elapsed()));
    let expired = stack.cloud_mqtt.log_tail(400);
    let resends_before = resends(&stack)?;
    let a_before = a.metric("storelink_bridge_receipts_published_total")?;
    std::thread::sleep(WINDOW);
    let resends_after = resends(&stack)?;
    let a_after = a.metric("storelink_bridge_receipts_published_total")?;
    stop.store(true, Ordering::Relaxed);
    for t in terminals {
        t.join()
            .map_err(|_| anyhow::anyhow!("terminal thread panicked"))??;
    }

    let want = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let (missing, duplicates) = stack.transactions_in_kafka(&want, Duration::from_secs(90));
    let missing = missing.len();
    println!(
        "replica lost for good: {} sales acknowledged, {missing} missing from Kafka, \
         {duplicates} duplicate records; \
         agent resends {resends_before} by {:.0} s after the kill, {resends_after} {} s later; \
         the surviving replica receipted {} batches in those seconds",
        want.len(),
        settled.as_secs_f64(),
        WINDOW.as_secs(),
        a_after - a_before,
    );
    assert!(
        expired.contains("Expiring client storelink-test-lost-b"),
        "Mosquitto never expired the dead replica's session; its log:\n{expired}"
    );
    assert_eq!(missing, 0, "acknowledged sales missing from Kafka");
    assert!(
        a_after > a_before,
        "the surviving replica receipted nothing after the session expired"
    );
    // The dead replica's session held batches until it expired, so some
    // were resent: without that, the check below would be vacuous.
    assert!(
        resends_before > 0.0,
        "no batch was resent after replica b was killed: nothing was stranded in its \
         session, so this test proves nothing about its expiry (b had receipted {b_receipts} batches)"
    );
    assert_eq!(
        resends_after, resends_before,
        "after the dead replica's session expired, batches still went unreceipted \
         and were resent: a share of new messages is still routed to it"
    );
    // Promise 5 (order) across replicas: one batch in flight per store, so
    // each terminal's sales (first copies: a resend may reach the other
    // replica's window and Kafka again) are in Kafka in posting order.
    ensure!(
        stack.wait_outbox_empty(Duration::from_secs(60)) == Some(0),
        "the agent's outbox did not drain"
    );
    let records = stack.consume_to_end(
        &[protocol::topics::KafkaTopic::Transactions.name()],
        Duration::from_secs(90),
    )?;
    let order = sales_in_posting_order(&stack.store_id, &records)?;
    println!(
        "order: {} records, first copies in posting order for {:?}",
        records.len(),
        order.iter().map(|(t, s)| (t, s.len())).collect::<Vec<_>>()
    );
    Ok(())
}
