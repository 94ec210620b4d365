//! Issue 4 acceptance, shelf sensors: raw load-cell readings published to
//! the in-store Mosquitto come out of Kafka calibrated, filtered by the
//! deadband, with one stock alert per threshold crossing on a noisy signal,
//! unparseable payloads counted without losing anything, and a silent
//! sensor reported offline and back online.

use std::time::{Duration, Instant};

use harness::agent::{metric_value, StoreStack};
use harness::kafka::Record;
use protocol::topics::{shelf_sensor_topic, KafkaTopic};
use rumqttc::{Client, Connection, MqttOptions, QoS};
use serde_json::Value;

const SENSOR: &str = "shelf-e2e-1";
const ZERO: i64 = 100_000;
const CPG: i64 = 10; // counts per gram

/// Raw counts for `grams` on the shelf.
fn raw(grams: i64) -> i64 {
    ZERO + grams * CPG
}

struct Sensor {
    client: Client,
    _io: std::thread::JoinHandle<()>,
}

impl Sensor {
    fn connect(port: u16) -> Sensor {
        let mut opts = MqttOptions::new("test-shelf-sensor", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut connection): (Client, Connection) = Client::new(opts, 64);
        let io = std::thread::spawn(move || {
            for ev in connection.iter() {
                if ev.is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Sensor { client, _io: io }
    }

    fn publish(&self, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(shelf_sensor_topic(SENSOR), QoS::AtLeastOnce, false, payload)
            .expect("publish");
        // Sensors report a few times a second; keep the order obvious.
        std::thread::sleep(Duration::from_millis(40));
    }

    fn grams(&self, g: i64) {
        self.publish(raw(g).to_string());
    }

    /// A reading the broker keeps and hands every new subscriber.
    fn grams_retained(&self, g: i64) {
        self.client
            .publish(
                shelf_sensor_topic(SENSOR),
                QoS::AtLeastOnce,
                true,
                raw(g).to_string(),
            )
            .expect("publish");
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// The profile section of the test sensor.
fn sensor_profile() -> String {
    format!(
        r#"
[[shelf_sensors]]
id = "{SENSOR}"
gtin = "05901234123457"
zero_offset = {ZERO}
counts_per_gram = {CPG}
unit_weight_grams = 100
low_stock_at = 3
restocked_at = 6
deadband_grams = 20
offline_after_secs = 3
"#
    )
}

/// Publishes the opening weight until the agent has emitted a reading:
/// the agent subscribes only once it is connected to the store broker
/// (repeats fall inside the deadband and produce nothing).
fn first_reading(stack: &StoreStack, sensor: &Sensor, grams: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sensor.grams(grams);
        let m = stack.agent_metrics();
        if metric_value(
            &m,
            &format!(
                r#"storelink_agent_shelf_readings_total{{sensor="{SENSOR}",result="emitted"}}"#
            ),
        )
        .is_some()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never took a reading; metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn envelopes(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.value).expect("envelope JSON"))
        .filter(|e| e["source"]["device_id"] == SENSOR)
        .collect()
}

fn inventory(stack: &StoreStack, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let records = stack.consume(
        KafkaTopic::Inventory.name(),
        |rs| until(&envelopes(rs)),
        Duration::from_secs(60),
    );
    envelopes(&records)
}

fn alerts(evs: &[Value]) -> Vec<(String, u64, u64)> {
    evs.iter()
        .filter(|e| e["schema"] == "storelink.stock_alert")
        .map(|e| {
            let b = &e["body"];
            (
                b["kind"].as_str().unwrap_or_default().to_owned(),
                b["item_count"].as_u64().unwrap_or_default(),
                b["threshold"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn readings(evs: &[Value]) -> Vec<(i64, u64)> {
    evs.iter()
        .filter(|e| e["schema"] == "storelink.shelf_reading")
        .map(|e| {
            let b = &e["body"];
            (
                b["grams"].as_i64().unwrap_or_default(),
                b["item_count"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The sensor's status changes from its first `online` on. (If the agent
/// started more than offline_after_secs before the first reading reached
/// it, an `offline` for "never heard from" comes first; that is correct
/// but depends on how fast this machine starts processes.)
fn states(stack: &StoreStack, n: usize) -> Vec<String> {
    let pick = |rs: &[Record]| -> Vec<String> {
        envelopes(rs)
            .iter()
            .map(|e| e["body"]["state"].as_str().unwrap_or_default().to_owned())
            .skip_while(|s| s != "online")
            .collect()
    };
    let records = stack.consume(
        KafkaTopic::Devices.name(),
        |rs| pick(rs).len() >= n,
        Duration::from_secs(60),
    );
    pick(&records)
}

#[test]
fn shelf_readings_are_calibrated_filtered_and_alert_once_per_crossing() {
    let stack = StoreStack::start(&sensor_profile()).expect("store stack");
    let sensor = Sensor::connect(stack.store_mqtt_port);
    first_reading(&stack, &sensor, 1000);

    // Calibration: (raw - zero) / counts_per_gram = 455.5 g → 456 g (half
    // away from zero) → 4.56 items → 5.
    sensor.publish((raw(455) + 5).to_string());
    // Deadband: 10 g from the last emitted reading: nothing.
    sensor.grams(466);
    // JSON payload with the sensor's own timestamp: 300 g = 3 items → low stock.
    sensor.publish(format!(
        r#"{{"raw": {}, "ts": "2026-11-24T10:15:02+01:00"}}"#,
        raw(300)
    ));
    // A noisy signal around the low threshold: 3 ↔ 4 items, one alert only.
    for g in [350, 300, 349, 251, 360, 290, 340, 260, 349] {
        sensor.grams(g);
    }
    // Unparseable payloads: counted, nothing else lost.
    sensor.publish("heavy");
    sensor.publish(r#"{"raw": "lots"}"#);
    // Restock to 6 items, then noise around the restock threshold: one alert.
    for g in [620, 540, 610, 530, 600, 549] {
        sensor.grams(g);
    }

    let evs = inventory(&stack, |evs| readings(evs).len() >= 18);
    let r = readings(&evs);
    assert_eq!(
        r,
        vec![
            (1000, 10),
            (456, 5),
            (300, 3),
            (350, 4), // 3.5 → 4
            (300, 3),
            (349, 3),
            (251, 3), // 2.51 → 3
            (360, 4),
            (290, 3),
            (340, 3),
            (260, 3),
            (349, 3),
            (620, 6),
            (540, 5),
            (610, 6),
            (530, 5),
            (600, 6),
            (549, 5),
        ],
        "{evs:#?}"
    );
    assert_eq!(
        alerts(&evs),
        vec![
            ("low_stock".to_owned(), 3, 3),
            ("restocked".to_owned(), 6, 6)
        ],
        "{evs:#?}"
    );
    // Each alert follows the reading that caused it, in one ordered stream.
    let schemas: Vec<&str> = evs
        .iter()
        .map(|e| e["schema"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(schemas[3], "storelink.stock_alert", "{schemas:?}");
    assert_eq!(evs[2]["occurred_at"], "2026-11-24T10:15:02+01:00");
    assert_eq!(evs[2]["body"]["raw_counts"], raw(300));
    assert_eq!(evs[0]["body"]["gtin"], "05901234123457");
    assert!(evs.iter().all(|e| e["source"]["kind"] == "shelf_sensor"));

    // Silence past offline_after_secs, then the sensor returns.
    assert_eq!(states(&stack, 2), ["online", "offline"]);
    sensor.grams(600);
    assert_eq!(states(&stack, 3), ["online", "offline", "online"]);
    let evs = inventory(&stack, |evs| readings(evs).len() >= 19);
    assert_eq!(
        readings(&evs).last(),
        Some(&(600, 6)),
        "the first reading after a silence is always sent"
    );

    let m = stack.agent_metrics();
    let get =
        |name: &str| metric_value(&m, name).unwrap_or_else(|| panic!("{name} missing in\n{m}"));
    assert_eq!(
        get(&format!(
            r#"storelink_agent_shelf_unparseable_total{{sensor="{SENSOR}"}}"#
        )),
        2.0
    );
    assert_eq!(
        get(&format!(
            r#"storelink_agent_stock_alerts_total{{sensor="{SENSOR}",kind="low_stock"}}"#
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            r#"storelink_agent_stock_alerts_total{{sensor="{SENSOR}",kind="restocked"}}"#
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            r#"storelink_agent_shelf_readings_total{{sensor="{SENSOR}",result="emitted"}}"#
        )),
        19.0
    );
    assert!(
        get(&format!(
            r#"storelink_agent_shelf_readings_total{{sensor="{SENSOR}",result="deadband"}}"#
        )) >= 1.0
    );
}

/// A sensor that published its reading retained: after an agent restart the
/// broker hands the stored copy to the new subscription. That is the last
/// reading, not a new one, and is skipped and counted.
#[test]
fn a_retained_reading_is_not_replayed_as_a_new_one_after_a_restart() {
    let mut stack = StoreStack::start(&sensor_profile()).expect("store stack");
    let sensor = Sensor::connect(stack.store_mqtt_port);
    first_reading(&stack, &sensor, 1000);
    // Within the deadband of the reading just emitted: nothing new live.
    sensor.grams_retained(1005);

    stack.stop_agent_cleanly().expect("clean stop");
    stack.restart_agent().expect("agent restarts");
    let retained =
        format!(r#"storelink_agent_shelf_readings_total{{sensor="{SENSOR}",result="retained"}}"#);
    let emitted =
        format!(r#"storelink_agent_shelf_readings_total{{sensor="{SENSOR}",result="emitted"}}"#);
    // The restarted agent has subscribed once the stored copy is counted,
    // one way or the other.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = stack.agent_metrics();
        if metric_value(&m, &retained).is_some() || metric_value(&m, &emitted).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent never received the retained reading:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    sensor.grams(600);
    // A replayed reading would have been emitted at the restart, so before
    // this one in the sensor's ordered stream.
    let evs = inventory(&stack, |evs| readings(evs).contains(&(600, 6)));
    assert_eq!(
        readings(&evs),
        vec![(1000, 10), (600, 6)],
        "the retained 1005 g is not a reading of its own: {evs:#?}"
    );
    assert_eq!(metric_value(&stack.agent_metrics(), &retained), Some(1.0));
}
