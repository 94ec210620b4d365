//! Version 2 of the sale and return schemas through the real store stack:
//! a cash sale rounded to 5 cents, a sale with nothing to pay (no tender)
//! and a return of goods bought in another store are acknowledged by the
//! agent and reach the transactions topic at version 2, as posted, with
//! the version-1 sale around them still at version 1. Before, the first two
//! were refused for good (the terminal could never record them) and the
//! third lost the other store's id.

use std::collections::HashMap;
use std::time::Duration;

use harness::agent::{post_sale, StoreStack};
use protocol::topics::{headers, KafkaTopic};

#[test]
fn version_2_sales_and_returns_reach_kafka_as_posted() {
    let stack = StoreStack::start("").expect("store stack");
    let client = reqwest::blocking::Client::new();
    let base = &stack.http_base;
    let post = |route: &str, body: serde_json::Value| -> String {
        let r = client
            .post(format!("{base}{route}"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .send()
            .expect("agent answers");
        let status = r.status();
        let v: serde_json::Value = r.json().expect("json answer");
        assert_eq!(status.as_u16(), 201, "{route}: {v}");
        v["event_id"].as_str().expect("event_id").to_owned()
    };
    let ids = [
        (
            post(
                "/v1/sales",
                json(protocol::samples::sale_with_cash_rounding()),
            ),
            2,
        ),
        (
            post(
                "/v1/sales",
                json(protocol::samples::fully_discounted_sale()),
            ),
            2,
        ),
        (
            post(
                "/v1/returns",
                json(protocol::samples::return_of_another_stores_sale()),
            ),
            2,
        ),
    ];
    let v1 = post_sale(&client, base, "pos-02", 1).expect("agent answers");
    assert_eq!(v1.status().as_u16(), 201);
    let v1_id = v1.json::<serde_json::Value>().expect("json")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    let want: HashMap<String, u32> = ids.into_iter().chain([(v1_id, 1)]).collect();

    let records = stack.consume(
        KafkaTopic::Transactions.name(),
        |rs| {
            want.keys().all(|id| {
                rs.iter()
                    .any(|r| r.header_str(headers::EVENT_ID).as_deref() == Some(id))
            })
        },
        Duration::from_secs(60),
    );
    let mut seen = HashMap::new();
    for r in &records {
        let Some(id) = r.header_str(headers::EVENT_ID) else {
            continue;
        };
        if let Some(version) = want.get(&id) {
            let value: serde_json::Value = serde_json::from_slice(&r.value).expect("event JSON");
            assert_eq!(
                r.header_str(headers::SCHEMA_VERSION).as_deref(),
                Some(&*version.to_string()),
                "{value}"
            );
            assert_eq!(value["schema_version"], *version, "{value}");
            seen.insert(id, value);
        }
    }
    assert_eq!(
        seen.len(),
        want.len(),
        "every acknowledged transaction in Kafka's transactions topic; agent log:\n{}",
        stack.agent.log_tail(20)
    );
    let bodies: Vec<&serde_json::Value> = seen.values().map(|v| &v["body"]).collect();
    assert!(bodies
        .iter()
        .any(|b| b["totals"]["rounding"] == -2 && b["totals"]["change"] == 415));
    assert!(bodies
        .iter()
        .any(|b| b["tenders"] == serde_json::json!([]) && b["totals"]["grand"] == 0));
    assert!(bodies
        .iter()
        .any(|b| b["original"]["store_id"] == "store-0017"));
    println!(
        "version 2: {} of {} transactions in Kafka at the version they need (3 at v2, 1 at v1)",
        seen.len(),
        want.len()
    );
}

fn json(sample: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(sample).expect("sample serializes")
}
