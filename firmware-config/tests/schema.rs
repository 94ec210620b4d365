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
        "reconnect_max_backoff_ms",
    ] {
        assert!(scanner["properties"].get(key).is_some(), "Scanner.{key}");
    }
    assert!(schema["$defs"]["ShelfSensor"]["properties"]["alert_dwell_secs"].is_object());
}
