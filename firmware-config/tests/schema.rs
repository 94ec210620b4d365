//! `store-profile.schema.json` is what editors validate profiles against:
//! it must be exactly what the types derive. Regenerate with
//! `UPDATE_SCHEMA=1 cargo test -p storelink-firmware-config --test schema`.

use std::path::Path;

#[test]
fn committed_schema_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("store-profile.schema.json");
    let fresh = firmware_config::schema_json();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &fresh).expect("writing the schema");
        // Comparing the file with what was just written would prove nothing.
        panic!(
            "regenerated {}; review the diff and run the test again without UPDATE_SCHEMA",
            path.display()
        );
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date; regenerate it with \
         `UPDATE_SCHEMA=1 cargo test -p storelink-firmware-config --test schema`",
        path.display()
    );
}

#[test]
fn schema_refuses_unknown_keys_and_documents_fields() {
    let schema: serde_json::Value =
        serde_json::from_str(&firmware_config::schema_json()).expect("schema is JSON");
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    let scanner = &schema["$defs"]["Scanner"];
    assert_eq!(scanner["additionalProperties"], serde_json::json!(false));
    for key in [
        "port",
        "baud_rate",
        "terminator",
        "max_frame_len",
        "frame_timeout_ms",
        "reconnect_max_backoff_ms",
    ] {
        assert!(scanner["properties"].get(key).is_some(), "Scanner.{key}");
    }
    assert!(schema["$defs"]["ShelfSensor"]["properties"]["alert_dwell_secs"].is_object());
}

/// The editor's bound is the contract's, the same number the validator uses
/// (`tests/validation.rs` pins its message): a profile an editor accepts is
/// not refused at deploy time.
#[test]
fn the_batch_size_bound_in_the_schema_is_the_contracts() {
    let schema: serde_json::Value =
        serde_json::from_str(&firmware_config::schema_json()).expect("schema is JSON");
    let field = &schema["$defs"]["Cloud"]["properties"]["batch_max_bytes"];
    assert_eq!(
        field["maximum"].as_u64(),
        Some(protocol::batch::MAX_BATCH_BYTES as u64)
    );
    assert_eq!(field["minimum"].as_u64(), Some(1024));
    let outbox = &schema["$defs"]["OutboxLimits"]["properties"];
    assert_eq!(
        outbox["max_bytes"]["minimum"].as_u64(),
        Some(4 * protocol::batch::MAX_EVENT_BYTES as u64)
    );
}
