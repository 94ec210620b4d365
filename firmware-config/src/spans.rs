//! Where things are in the profile text.
//!
//! The profile is parsed once into toml's span-carrying [`DeTable`]. From it
//! come two things:
//! * a [`SpanIndex`] from key paths (`scanners[1].port`) to byte ranges, so a
//!   semantic problem found on the typed struct can point at a line and column;
//! * the list of unknown keys, found by walking the table against the JSON
//!   Schema derived from the types (so the list of known keys can never drift
//!   from the structs). Unknown keys are removed before the typed parse, which
//!   lets one run report every unknown key and every semantic problem together
//!   instead of stopping at serde's first `unknown field`.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::Value;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Byte range of every key path's value in the text.
#[derive(Debug, Default)]
pub(crate) struct SpanIndex {
    values: HashMap<String, Range<usize>>,
}

impl SpanIndex {
    pub(crate) fn build(root: &Spanned<DeTable<'_>>) -> SpanIndex {
        let mut index = SpanIndex::default();
        index.table("", root.get_ref());
        index
    }

    fn table(&mut self, path: &str, table: &DeTable<'_>) {
        for (k, v) in table.iter() {
            let child = join(path, k.get_ref());
            self.value(child, v);
        }
    }

    fn value(&mut self, path: String, v: &Spanned<DeValue<'_>>) {
        match v.get_ref() {
            DeValue::Table(t) => self.table(&path, t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    self.value(format!("{path}[{i}]"), item);
                }
            }
            _ => {}
        }
        self.values.insert(path, v.span());
    }

    /// The span of `path`, or of the nearest enclosing key that is written
    /// in the text (a missing key points at its table), or of the start.
    pub(crate) fn locate(&self, path: &str) -> Range<usize> {
        let mut p = path;
        loop {
            if let Some(span) = self.values.get(p) {
                return span.clone();
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return 0..0,
            }
        }
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A key the profile's types do not have.
#[derive(Debug)]
pub(crate) struct UnknownKey {
    pub path: String,
    pub key: String,
    pub span: Range<usize>,
    pub known: Vec<String>,
}

/// Finds keys the schema does not allow and removes them from `root`.
pub(crate) fn take_unknown_keys(
    schema: &Value,
    root: &mut Spanned<DeTable<'_>>,
) -> Vec<UnknownKey> {
    let mut out = vec![];
    walk_table(schema, schema, "", root.get_mut(), &mut out);
    out
}

fn walk_table(
    root: &Value,
    schema: &Value,
    path: &str,
    table: &mut DeTable<'_>,
    out: &mut Vec<UnknownKey>,
) {
    let Some((props, closed)) = object_schema(root, schema, 0) else {
        return;
    };
    let mut unknown = vec![];
    for (k, v) in table.iter_mut() {
        let key = k.get_ref().to_string();
        match props.get(&key) {
            Some(sub) => walk_value(root, sub, &join(path, &key), v.get_mut(), out),
            None if closed => {
                out.push(UnknownKey {
                    path: join(path, &key),
                    key: key.clone(),
                    span: k.span(),
                    known: props.keys().cloned().collect(),
                });
                unknown.push(key);
            }
            None => {}
        }
    }
    for key in unknown {
        table.remove(key.as_str());
    }
}

fn walk_value(
    root: &Value,
    schema: &Value,
    path: &str,
    value: &mut DeValue<'_>,
    out: &mut Vec<UnknownKey>,
) {
    match value {
        DeValue::Table(t) => walk_table(root, schema, path, t, out),
        DeValue::Array(items) => {
            if let Some(item_schema) = items_schema(root, schema, 0) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk_value(
                        root,
                        item_schema,
                        &format!("{path}[{i}]"),
                        item.get_mut(),
                        out,
                    );
                }
            }
        }
        _ => {}
    }
}

/// Follows `$ref` (only the local `#/$defs/…` form schemars emits).
fn deref<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs")?.get(name))
            .unwrap_or(schema),
        None => schema,
    }
}

fn alternatives(schema: &Value) -> impl Iterator<Item = &Value> {
    ["anyOf", "oneOf", "allOf"]
        .into_iter()
        .filter_map(|k| schema.get(k).and_then(Value::as_array))
        .flatten()
}

/// The properties of an object schema and whether other keys are refused.
fn object_schema<'a>(
    root: &'a Value,
    schema: &'a Value,
    depth: usize,
) -> Option<(&'a serde_json::Map<String, Value>, bool)> {
    if depth > 8 {
        return None;
    }
    let s = deref(root, schema);
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
        return Some((props, closed));
    }
    alternatives(s).find_map(|alt| object_schema(root, alt, depth + 1))
}

fn items_schema<'a>(root: &'a Value, schema: &'a Value, depth: usize) -> Option<&'a Value> {
    if depth > 8 {
        return None;
    }
    let s = deref(root, schema);
    if let Some(items) = s.get("items") {
        return Some(items);
    }
    alternatives(s).find_map(|alt| items_schema(root, alt, depth + 1))
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("baudrate", "baud_rate"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(closest("scaners", ["scanners", "store"]), Some("scanners"));
        assert_eq!(closest("zzz", ["scanners", "store"]), None);
    }

    #[test]
    fn locate_falls_back_to_the_enclosing_key() {
        let text = "[store]\nid = \"x\"\n\n[[scanners]]\nid = \"a\"\n";
        let root = DeTable::parse(text).expect("valid TOML");
        let index = SpanIndex::build(&root);
        let id = index.locate("store.id");
        assert_eq!(&text[id], "\"x\"");
        let missing = index.locate("scanners[0].port");
        assert!(missing.start >= text.find("[[scanners]]").expect("header"));
        assert_eq!(index.locate("nothing.here"), 0..0);
    }
}
