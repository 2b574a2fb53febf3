//! The JSON Schema (draft 2020-12) of a run pipeline file, derived from the raw types (their
//! doc comments are its descriptions, their defaults its `default`s); configs/pipeline.schema.json
//! is `run_schema_text()`.

use serde_json::Value;

use super::raw::RunFile;

/// The JSON Schema (draft 2020-12) of a run pipeline file.
pub fn run_schema() -> Value {
    let mut s =
        serde_json::to_value(schemars::schema_for!(RunFile)).expect("a schema is plain data");
    describe_variant_keys(&mut s);
    s
}

/// An enum variant with data (`{column: 1}`, `{fixed: 3}`) is an object of one key, and an
/// internally tagged variant (`{kind: pixels, size: 8}`) an object whose tag is a `const`;
/// schemars puts the variant's doc comment on the object, and this copies it to the key or the
/// tag, so that every property of the schema says what it is.
fn describe_variant_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let desc = m.get("description").cloned();
            if let (Some(desc), Some(Value::Object(props))) = (desc, m.get_mut("properties")) {
                let one_key = props.len() == 1;
                for p in props.values_mut() {
                    if let Value::Object(p) = p {
                        if one_key || p.contains_key("const") {
                            p.entry("description").or_insert(desc.clone());
                        }
                    }
                }
            }
            m.values_mut().for_each(describe_variant_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(describe_variant_keys),
        _ => {}
    }
}

/// `run_schema()` as `hrf schema` prints it and configs/pipeline.schema.json holds it.
pub fn run_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&run_schema()).expect("plain data");
    s.push('\n');
    s
}
