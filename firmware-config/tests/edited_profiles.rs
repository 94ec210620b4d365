//! Profiles as regional IT really edits them: a value retyped, a line
//! deleted or pasted twice. Whatever the text, the checker answers with
//! located problems and never panics.

use firmware_config::{check, CheckOptions};
use proptest::prelude::*;

const EXAMPLES: [&str; 2] = [
    include_str!("../examples/small-store.toml"),
    include_str!("../examples/large-store.toml"),
];

#[derive(Debug, Clone)]
enum Edit {
    /// The value after `=` on a line replaced.
    Value(prop::sample::Index, &'static str),
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
}

/// Values of every TOML type, in and out of each setting's range.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "9600",
    "8",
    "65536",
    "4294967296",
    "1e3",
    "3.5",
    "nan",
    "true",
    "\"\"",
    "\"x\"",
    "\"/dev/ttyUSB9\"",
    "\"EUR\"",
    "\"Mars/Olympus\"",
    "\"25:00\"",
    "[]",
    "[1, 2]",
    "{}",
    "{ days = [\"mon\"], start = \"05:00\", end = \"02:00\" }",
    "\"store-0007\"",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), prop::sample::select(VALUES)).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        1 => any::<prop::sample::Index>().prop_map(Edit::Duplicate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        match e {
            Edit::Value(i, v) => {
                let n = lines.len();
                let line = &mut lines[i.index(n)];
                if let Some(eq) = line.find('=') {
                    *line = format!("{}= {v}", &line[..eq]);
                }
            }
            Edit::Delete(i) => {
                lines.remove(i.index(lines.len()));
            }
            Edit::Duplicate(i) => {
                let i = i.index(lines.len());
                lines.insert(i, lines[i].clone());
            }
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn an_edited_profile_gets_located_problems_never_a_panic(
        example in 0..EXAMPLES.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let text = apply(EXAMPLES[example], &edits);
        // The examples name TLS files that exist only at a store.
        let report = check(&text, &CheckOptions { check_files: false });
        let lines = text.lines().count().max(1);
        for p in &report.problems {
            prop_assert!(!p.message.is_empty());
            let line = p.line.unwrap_or(0);
            prop_assert!(line >= 1 && line <= lines + 1, "line {} of {}: {:?}", line, lines, p);
            prop_assert!(p.column.is_some_and(|c| c >= 1), "{:?}", p);
        }
        if report.profile.is_none() {
            prop_assert!(report.has_errors(), "no profile and no error for:\n{}", text);
        }
    }

}
