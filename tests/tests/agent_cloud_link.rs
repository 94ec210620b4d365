//! The agent's cloud link (issue 3): a batch the forwarder queued just as the
//! connection dropped must never go out on the next connection. The
//! forwarder resends every unreceipted event from SQLite, in order, after a
//! reconnect; a stale batch sent ahead of those resends would overtake older
//! batches that a broker which forgot the session had lost, and break the
//! stream's order in Kafka.
//!
//! The broker keeps sessions across the restart here (`stop` + `start_again`)
//! so a watcher's persistent session records every message the agent's link
//! publishes while the watcher itself is reconnecting: nothing can slip by
//! unseen.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, NetworkOptions, QoS};
use store_agent::forwarder::{run_connection, CloudLink, Link};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const STORE: &str = "store-link-test";

async fn next_link(rx: &mut mpsc::Receiver<Link>, what: &str) -> Result<Link> {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .with_context(|| format!("no {what} from the cloud link within 30 s"))?
        .context("the cloud link task ended")
}

async fn connected(rx: &mut mpsc::Receiver<Link>) -> Result<AsyncClient> {
    loop {
        match next_link(rx, "connection").await? {
            Link::Connected { client, .. } => return Ok(client),
            Link::Disconnected(_) | Link::PubAcked => continue,
            Link::Receipt(r) => bail!("unexpected receipt {}", r.batch_id),
        }
    }
}

/// Subscribes with a persistent session and forwards every payload on the
/// store's events topic, reconnecting across broker restarts.
async fn watch(port: u16) -> Result<mpsc::UnboundedReceiver<Vec<u8>>> {
    let mut opts = MqttOptions::new("link-test-watcher", "127.0.0.1", port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let topic = protocol::topics::store_events_topic(STORE);
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == topic => {
                    if tx.send(p.payload.to_vec()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .context("the watcher was not subscribed within 10 s")?
        .context("the watcher stopped")?;
    Ok(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queued_as_the_link_dropped_is_never_sent_on_the_next_connection() -> Result<()> {
    let mut broker = Mosquitto::start()?;
    let mut seen = watch(broker.port()).await?;

    let mut options = MqttOptions::new("link-test-agent", broker.host(), broker.port());
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(5));
    let cloud = CloudLink {
        options,
        network: NetworkOptions::new(),
        capacity: 16,
    };
    let (link_tx, mut link_rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_connection(
        cloud,
        STORE.to_owned(),
        link_tx,
        shutdown.clone(),
    ));
    let topic = protocol::topics::store_events_topic(STORE);

    let first = connected(&mut link_rx).await?;
    first
        .publish(&topic, QoS::AtLeastOnce, false, b"before".to_vec())
        .await?;
    // `publish` only queues it; the broker must have it before it stops.
    let before = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .context("the watcher did not see the first message within 30 s")?
        .context("the watcher stopped")?;
    assert_eq!(before, b"before");

    broker.stop()?;
    loop {
        match next_link(&mut link_rx, "disconnect").await? {
            Link::Disconnected(_) => break,
            // The broker's PUBACK of "before".
            Link::PubAcked => {}
            other => bail!("expected the link to report the drop, got {other:?}"),
        }
    }
    // What the forwarder may still publish before it hears of the drop. An
    // error here is as good as a discarded message.
    let _ = first
        .publish(&topic, QoS::AtLeastOnce, false, b"stale".to_vec())
        .await;

    broker.start_again()?;
    let second = connected(&mut link_rx).await?;
    second
        .publish(&topic, QoS::AtLeastOnce, false, b"resent".to_vec())
        .await?;

    let mut payloads = vec![before];
    while !payloads.iter().any(|p: &Vec<u8>| p == b"resent") {
        let p = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .with_context(|| {
                format!(
                    "the watcher saw {:?} and not the resend within 30 s; broker log:\n{}",
                    printable(&payloads),
                    broker.log_tail(20)
                )
            })?
            .context("the watcher stopped")?;
        payloads.push(p);
    }
    // Anything stale would have been queued ahead of the resend; wait a
    // little longer all the same.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(p) = seen.try_recv() {
        payloads.push(p);
    }
    assert_eq!(
        printable(&payloads),
        ["before", "resent"],
        "only what was published on a live connection reaches the broker"
    );

    // Shutdown disconnects and ends the task promptly.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .context("the cloud link task did not stop within 5 s of shutdown")??;
    Ok(())
}

fn printable(payloads: &[Vec<u8>]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}
