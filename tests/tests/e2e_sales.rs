//! Issue 2 acceptance: sales POSTed by several terminals at once reach Kafka
//! exactly as posted, once each, through real Mosquitto, real Kafka and the
//! two binaries; duplicates are answered with the original id; invalid sales
//! are refused and appear nowhere; the outbox empties because receipts came
//! back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use harness::agent::{StoreStack, TERMINALS};
use protocol::topics::{headers, KafkaTopic};
use serde_json::Value;

const SALES_PER_TERMINAL: u64 = 130; // 8 terminals → 1,040 sales

#[derive(Debug, Default)]
struct Outcome {
    /// event id → (terminal, sequence number, body as posted)
    accepted: HashMap<String, (String, u64, Value)>,
    duplicates_answered: usize,
    invalid_refused: usize,
    invalid_keys: HashSet<(String, u64)>,
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("agent reachable");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn terminal(base: String, terminal: &'static str) -> Outcome {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/sales");
    let mut out = Outcome::default();
    for seq in 1..=SALES_PER_TERMINAL {
        let mut sale = protocol::samples::sale_numbered(terminal, seq);
        // Vary the basket so bodies differ across sales.
        sale.operator_id = format!("op-{}", seq % 7);
        let body = serde_json::to_value(&sale).expect("sale json");
        let (status, answer) = post(&client, &url, serde_json::to_vec(&body).expect("json")).await;
        assert_eq!(status, 201, "sale {terminal}/{seq} refused: {answer}");
        let id = answer["event_id"].as_str().expect("event_id").to_owned();
        out.accepted
            .insert(id.clone(), (terminal.to_owned(), seq, body.clone()));

        if seq % 10 == 0 {
            // The terminal did not hear the answer and posts again.
            let (status, again) =
                post(&client, &url, serde_json::to_vec(&body).expect("json")).await;
            assert_eq!(status, 200, "re-post answered {status}: {again}");
            assert_eq!(
                again["event_id"].as_str(),
                Some(id.as_str()),
                "re-post must return the original id"
            );
            assert_eq!(again["duplicate"], Value::Bool(true));
            out.duplicates_answered += 1;
        }
        if seq % 13 == 0 {
            // Invalid: totals that do not add up, on a sequence number never used validly.
            let bad_seq = 100_000 + seq;
            let mut bad = protocol::samples::sale_numbered(terminal, bad_seq);
            bad.totals.grand += 1;
            let (status, problem) =
                post(&client, &url, serde_json::to_vec(&bad).expect("json")).await;
            assert_eq!(status, 422, "{problem}");
            assert_eq!(problem["code"], "validation_failed");
            assert!(
                problem["errors"]
                    .as_array()
                    .expect("errors")
                    .iter()
                    .any(|e| e["field"] == "totals.grand"),
                "problem must name totals.grand: {problem}"
            );
            out.invalid_refused += 1;
            out.invalid_keys.insert((terminal.to_owned(), bad_seq));

            // Invalid: malformed JSON.
            let (status, problem) = post(&client, &url, b"{\"terminal_id\": ".to_vec()).await;
            assert_eq!(status, 400, "{problem}");
            assert_eq!(problem["code"], "malformed_json");

            // Invalid: an unknown currency, named by its field.
            let mut v =
                serde_json::to_value(protocol::samples::sale_numbered(terminal, bad_seq + 1))
                    .expect("json");
            v["currency"] = "EUD".into();
            let (status, problem) =
                post(&client, &url, serde_json::to_vec(&v).expect("json")).await;
            assert_eq!(status, 422, "{problem}");
            assert_eq!(problem["errors"][0]["field"], "currency", "{problem}");
            out.invalid_keys.insert((terminal.to_owned(), bad_seq + 1));
            out.invalid_refused += 2;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sales_from_concurrent_terminals_reach_kafka_once_each_exactly_as_posted() {
    let stack = Arc::new(
        tokio::task::spawn_blocking(|| StoreStack::start(""))
            .await
            .expect("join")
            .expect("store stack"),
    );

    let tasks: Vec<_> = TERMINALS
        .iter()
        .map(|t| tokio::spawn(terminal(stack.http_base.clone(), t)))
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await.expect("terminal task");
        all.accepted.extend(o.accepted);
        all.duplicates_answered += o.duplicates_answered;
        all.invalid_refused += o.invalid_refused;
        all.invalid_keys.extend(o.invalid_keys);
    }
    let expected = all.accepted.len();
    assert_eq!(expected as u64, SALES_PER_TERMINAL * TERMINALS.len() as u64);
    println!(
        "posted: {expected} accepted, {} duplicates re-posted, {} invalid refused",
        all.duplicates_answered, all.invalid_refused
    );

    // The outbox empties, and only because receipts came back: a receipt is
    // sent only once Kafka has the event. Once it is empty every sale is in
    // Kafka and the agent sends nothing more, so the topic read to its end
    // (not just until the expected count showed up) shows any duplicate a
    // resend made.
    let s = stack.clone();
    let left = tokio::task::spawn_blocking(move || s.wait_outbox_empty(Duration::from_secs(120)))
        .await
        .expect("join");
    assert_eq!(left, Some(0), "outbox still holds events");
    assert_eq!(stack.outbox_rows_on_disk().expect("read outbox file"), 0);

    let s = stack.clone();
    let records = tokio::task::spawn_blocking(move || {
        s.consume_to_end(&[KafkaTopic::Transactions.name()], Duration::from_secs(120))
    })
    .await
    .expect("join")
    .expect("reading the transactions topic to its end");

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let env: Value = serde_json::from_slice(&r.value).expect("record value is JSON");
        let id = env["id"].as_str().expect("id").to_owned();
        *seen.entry(id.clone()).or_default() += 1;
        let (terminal, seq, posted) = all
            .accepted
            .get(&id)
            .unwrap_or_else(|| panic!("record {id} was never accepted: {env}"));
        assert_eq!(
            &env["body"], posted,
            "body of {terminal}/{seq} differs from what was posted"
        );
        assert_eq!(
            r.key.as_deref(),
            Some(stack.store_id.as_str()),
            "transactions are keyed by store"
        );
        assert_eq!(
            r.header_str(headers::EVENT_ID).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            r.header_str(headers::SCHEMA).as_deref(),
            Some("storelink.sale")
        );
        assert_eq!(env["store_id"], stack.store_id.as_str());
        assert_eq!(env["source"]["device_id"], terminal.as_str());
        let key = (
            env["body"]["terminal_id"].as_str().unwrap_or("").to_owned(),
            env["body"]["sequence_number"].as_u64().unwrap_or(0),
        );
        assert!(
            !all.invalid_keys.contains(&key),
            "an invalid sale reached Kafka: {key:?}"
        );
    }
    let missing: Vec<_> = all
        .accepted
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted sales missing from Kafka, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sales delivered more than once: {twice:?}"
    );
    println!(
        "kafka: {} records, every accepted sale exactly once",
        records.len()
    );

    // Promise 5 (order): a store's transactions share one partition key, so
    // one partition; each terminal posted one sale at a time, waiting for
    // the answer, so its sales are in Kafka in the order it posted them.
    let order = harness::agent::sales_in_posting_order(&stack.store_id, &records)
        .expect("a store's sales are in one partition, in posting order per terminal");
    for t in TERMINALS {
        let want: Vec<u64> = (1..=SALES_PER_TERMINAL).collect();
        assert_eq!(
            order.get(t),
            Some(&want),
            "{t}'s sales in Kafka offset order are not its sequence numbers 1..={SALES_PER_TERMINAL} in posting order"
        );
    }

    // Each sale was receipted `delivered` exactly once. One bridge, never
    // restarted, whose de-duplication window (an hour) spans the test: a
    // resend of an event Kafka already has (or is writing) is receipted
    // `duplicate`, never `delivered` again. A `duplicate` receipt may
    // overtake the `delivered` one of the first copy (the bridge publishes
    // both once Kafka confirmed the first) and empty the outbox first, so
    // wait for the count to come in before comparing.
    let s = stack.clone();
    let receipted = tokio::task::spawn_blocking(move || {
        let series = "storelink_agent_events_receipted_total{outcome=\"delivered\"}";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = s.agent_metric(series).expect("delivered receipts metric");
            if n >= expected as f64 || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("join");
    assert_eq!(
        receipted,
        expected as f64,
        "{expected} sales, each in Kafka once, but {receipted} `delivered` receipts:\n{}",
        stack.agent_metrics()
    );
    println!("outbox empty after {receipted} delivery receipts");
}
