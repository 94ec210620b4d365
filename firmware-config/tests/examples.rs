//! The example profiles that ship with the repo stay valid and show what
//! they claim to show.

use std::path::{Path, PathBuf};

use firmware_config::{check, CheckOptions, Terminator};

fn example(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reading the example");
    (path, text)
}

/// The TLS files exist only at a store, so they are not checked here.
const AWAY_FROM_THE_STORE: CheckOptions = CheckOptions { check_files: false };

#[test]
fn small_store_example_is_clean() {
    let (_, text) = example("small-store.toml");
    let report = check(&text, &AWAY_FROM_THE_STORE);
    assert_eq!(report.problems, vec![], "no errors and no warnings");
    let p = report.profile.expect("parsed");
    assert_eq!(p.store.id, "store-0007");
    assert_eq!(p.terminals.len(), 2);
    assert_eq!(p.scanners.len(), 1);
    assert_eq!(p.scanners[0].terminator, Terminator::Cr);
    assert_eq!(p.shelf_sensors.len(), 2);
    assert!(p.local_mqtt.is_some() && p.cloud.tls.is_some());
}

#[test]
fn large_store_example_is_clean_and_uses_every_kind_of_setting() {
    let (_, text) = example("large-store.toml");
    let report = check(&text, &AWAY_FROM_THE_STORE);
    assert_eq!(report.problems, vec![], "no errors and no warnings");
    let p = report.profile.expect("parsed");
    assert_eq!(p.terminals.len(), 7);
    assert_eq!(p.scanners.len(), 7);
    assert_eq!(p.shelf_sensors.len(), 4);
    let terminators: Vec<Terminator> = p.scanners.iter().map(|s| s.terminator).collect();
    assert!(terminators.contains(&Terminator::Crlf));
    assert!(terminators.contains(&Terminator::Byte(3)));
    let desk = p
        .scanners
        .iter()
        .find(|s| s.id == "scan-desk")
        .expect("desk scanner");
    assert_eq!((desk.data_bits, desk.stop_bits), (7, 1));
    assert_eq!(desk.parity, firmware_config::Parity::Even);
    assert_eq!(desk.flow_control, firmware_config::FlowControl::Hardware);
    assert!(p.shelf_sensors.iter().any(|s| s.alert_dwell_secs > 0));
}

#[test]
fn at_a_store_without_its_certificates_the_examples_say_so() {
    let (_, text) = example("small-store.toml");
    // The example names /etc/storelink/tls/*, which a real store box has: the
    // same profile pointed at a directory that surely does not exist.
    let dir = tempfile::tempdir().expect("temp dir");
    let absent = dir.path().join("tls");
    let text = text.replace("/etc/storelink/tls/", &format!("{}/", absent.display()));
    assert!(!absent.exists());
    let report = check(&text, &CheckOptions::default());
    let paths: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cloud.tls.ca_file",
            "cloud.tls.cert_file",
            "cloud.tls.key_file"
        ]
    );
}

#[test]
fn examples_round_trip_through_serialization() {
    for name in ["small-store.toml", "large-store.toml"] {
        let (_, text) = example(name);
        let p = check(&text, &AWAY_FROM_THE_STORE).profile.expect("parsed");
        let again = toml::to_string(&p).expect("serializes");
        let back = check(&again, &AWAY_FROM_THE_STORE);
        assert_eq!(back.problems, vec![], "{name}");
        assert_eq!(back.profile.as_ref(), Some(&p), "{name}");
    }
}
