//! Every golden sample ever written must still parse, validate and round-trip.

use std::path::Path;

use protocol::{Envelope, EventBody, EventKind};

fn golden_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut files = vec![];
    for version in std::fs::read_dir(&root).expect("samples/ exists") {
        let dir = version.expect("readable dir entry").path();
        for f in std::fs::read_dir(&dir).expect("readable version dir") {
            let p = f.expect("readable file entry").path();
            if p.extension().is_some_and(|e| e == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn validate(env: &Envelope) -> Result<(), protocol::Problems> {
    match &env.body {
        EventBody::Sale(s) => s.validate(),
        EventBody::Return(r) => r.validate(),
        EventBody::Void(v) => v.validate(),
        _ => Ok(()),
    }
}

#[test]
fn every_golden_sample_parses_validates_and_round_trips() {
    let files = golden_files();
    let mut kinds = std::collections::BTreeSet::new();
    for path in &files {
        let bytes = std::fs::read(path).expect("readable sample");
        let env = Envelope::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        validate(&env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again = Envelope::from_json(&env.to_json()).expect("re-encoded sample parses");
        assert_eq!(env, again, "{} does not round-trip", path.display());
        // Same JSON value as the file: nothing lost or invented by a round trip.
        let original: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let written: serde_json::Value = serde_json::from_slice(&env.to_json()).expect("json");
        assert_eq!(
            original,
            written,
            "{} changes when re-encoded",
            path.display()
        );
        // The spliced writer produces exactly what serde's derive does.
        assert_eq!(env.to_json(), serde_json::to_vec(&env).expect("json"));
        let (bytes2, body) = env.to_json_with_body_range();
        let body_value: serde_json::Value =
            serde_json::from_slice(&bytes2[body]).expect("body json");
        assert_eq!(body_value, original["body"]);
        kinds.insert(env.schema);
    }
    for kind in EventKind::ALL {
        assert!(kinds.contains(&kind), "no golden sample of {kind}");
    }
}

#[test]
fn readers_ignore_unknown_fields_from_newer_writers() {
    let path = golden_files()
        .into_iter()
        .find(|p| p.ends_with("sale.json"))
        .expect("sale sample");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    value["loyalty_id"] = "L-1".into();
    value["body"]["basket_id"] = "B-9".into();
    value["body"]["lines"][0]["promo_engine"] = serde_json::json!({"rule": 7});
    let env =
        Envelope::from_json(&serde_json::to_vec(&value).expect("json")).expect("still parses");
    assert_eq!(env.schema, EventKind::Sale);
}

#[test]
fn a_newer_schema_version_is_refused_with_a_reason() {
    let path = golden_files()
        .into_iter()
        .find(|p| p.ends_with("scan.json"))
        .expect("scan sample");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    value["schema_version"] = 2.into();
    let err =
        Envelope::from_json(&serde_json::to_vec(&value).expect("json")).expect_err("v2 refused");
    assert_eq!(err.reason_code(), "unsupported_schema_version");
}

/// VERSIONING.md rule 4: no build writes a version its own bridge would
/// dead-letter, and what it writes is what the samples hold.
#[test]
fn every_schema_is_written_at_a_version_readers_of_the_same_build_accept() {
    for kind in EventKind::ALL {
        assert!(
            kind.written_version() <= kind.readable_version(),
            "{kind} is written at v{} but read only up to v{}",
            kind.written_version(),
            kind.readable_version()
        );
        assert!(kind.written_version() >= 1, "{kind}");
    }
    for env in protocol::samples::envelopes("store-0042") {
        assert_eq!(env.schema_version, 1, "{}", env.schema);
    }
    for env in protocol::samples::version_2_envelopes("store-0042") {
        assert_eq!(env.schema_version, 2, "{}", env.schema);
        assert!(env.schema_version <= env.schema.written_version());
    }
}

/// Each event is written at the lowest version that carries it, so a
/// version-1 reader reads every event that needs nothing newer.
#[test]
fn an_event_is_written_at_the_lowest_version_that_carries_it() {
    let v1 = |env: &Envelope| {
        let mut v = serde_json::from_slice::<serde_json::Value>(&env.to_json()).expect("json");
        v["schema_version"] = 1.into();
        serde_json::to_vec(&v).expect("json")
    };
    for env in protocol::samples::envelopes("store-0042") {
        // What a version-1 reader sees is the whole event.
        let read = Envelope::from_json(&v1(&env)).expect("v1");
        assert_eq!(read, env);
    }
    // A version-2 event read as if it were version 1 loses what makes it
    // version 2: that is why it is labelled 2.
    for env in protocol::samples::version_2_envelopes("store-0042") {
        let value: serde_json::Value = serde_json::from_slice(&env.to_json()).expect("json");
        let body = &value["body"];
        assert!(
            body["totals"].get("rounding").is_some()
                || body["tenders"] == serde_json::json!([])
                || body["original"].get("store_id").is_some(),
            "{body}"
        );
    }
}

/// An event labelled below the version its body needs is refused, by both
/// readers: a version-1 reader would take the other store's sale for this
/// store's, or totals that need the cash rounding for wrong ones.
#[test]
fn an_event_labelled_below_its_bodys_version_is_refused() {
    for env in protocol::samples::version_2_envelopes("store-0042") {
        let text = String::from_utf8(env.to_json()).expect("utf-8");
        let relabelled = text.replacen("\"schema_version\":2", "\"schema_version\":1", 1);
        assert_ne!(text, relabelled);
        let err = Envelope::from_json(relabelled.as_bytes()).expect_err("below its body");
        assert_eq!(err.reason_code(), "invalid_envelope", "{err}");
        assert!(protocol::checked_envelope::CheckedEnvelope::parse_fast(&relabelled).is_none());
        assert!(protocol::checked_envelope::CheckedEnvelope::parse_fast(&text).is_some());
    }
}

/// Fields are named: an envelope or a body written as a JSON array (serde's
/// positional form of a struct) is refused, not read by position. A
/// consumer reading by name could not read it.
#[test]
fn an_envelope_or_body_in_positional_array_form_is_refused() {
    let void_body = r#"["pos-01","op-117","2026-11-24",1043,"2026-11-24T10:16:10+01:00",["pos-01","2026-11-24",1042],"CUSTOMER_CANCELLED"]"#;
    let err = EventBody::from_json(EventKind::Void, void_body).expect_err("array body");
    assert!(err.to_string().contains("JSON object"), "{err}");
    let as_object = r#"{"terminal_id":"pos-01","operator_id":"op-117","business_day":"2026-11-24","sequence_number":1043,"voided_at":"2026-11-24T10:16:10+01:00","voided":{"terminal_id":"pos-01","business_day":"2026-11-24","sequence_number":1042},"reason_code":"CUSTOMER_CANCELLED"}"#;
    EventBody::from_json(EventKind::Void, as_object).expect("the same void, named");

    let header =
        r#""01a20000-0000-7000-8000-000000000001","storelink.void",1,"store-0042","eu-west","#;
    let positional = format!(
        r#"[{header}["pos_terminal","pos-01"],"2026-11-24T10:16:10+01:00","2026-11-24T09:16:10Z",{void_body}]"#
    );
    let err = Envelope::from_json(positional.as_bytes()).expect_err("array envelope");
    assert_eq!(err.reason_code(), "undecodable");
    let array_body = format!(
        r#"{{"id":"01a20000-0000-7000-8000-000000000001","schema":"storelink.void","schema_version":1,"store_id":"store-0042","region":"eu-west","source":{{"kind":"pos_terminal","device_id":"pos-01"}},"occurred_at":"2026-11-24T10:16:10+01:00","recorded_at":"2026-11-24T09:16:10Z","body":{void_body}}}"#
    );
    assert!(Envelope::from_json(array_body.as_bytes()).is_err());
    let named = array_body.replace(void_body, as_object);
    Envelope::from_json(named.as_bytes()).expect("the same event, named");
    // The bridge's one-pass reader agrees.
    assert!(protocol::checked_envelope::CheckedEnvelope::parse_fast(&array_body).is_none());
    assert!(protocol::checked_envelope::CheckedEnvelope::parse_fast(&named).is_some());
}
