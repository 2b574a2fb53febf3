//! The JSON Schema: unknown keys refused, descriptions, the checked-in copy.

use super::*;

#[test]
fn the_schema_refuses_unknown_keys_and_spells_enums_in_kebab_case() {
    let s = run_schema();
    let text = s.to_string();
    assert_eq!(s["additionalProperties"], false, "{s:#}");
    for def in ["TrainingRaw", "OptimizerRaw", "HrfRaw", "WindowClusterRaw"] {
        assert_eq!(s["$defs"][def]["additionalProperties"], false, "{def}");
    }
    assert!(s["$defs"]["TrainingRaw"]["properties"]
        .get("seed")
        .is_none());
    assert_eq!(
        s["$defs"]["OptimizerRaw"]["properties"]["lr"]["default"],
        1e-4
    );
    for word in [
        "ddpo-sf",
        "hrf-d",
        "per-prompt",
        "jpeg-compressibility",
        "reward-with-diversity",
    ] {
        assert!(text.contains(&format!("\"{word}\"")), "{word}");
    }
}

/// Every property of the schema has a description (editors show it as the field's help).
#[test]
fn every_property_of_the_schema_has_a_description() {
    fn walk(v: &Value, at: &str, seen: &mut usize, missing: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    for (k, p) in props {
                        *seen += 1;
                        let ok = p
                            .get("description")
                            .and_then(Value::as_str)
                            .is_some_and(|d| !d.trim().is_empty());
                        if !ok {
                            missing.push(format!("{at}.{k}"));
                        }
                    }
                }
                for (k, x) in m {
                    walk(x, &format!("{at}/{k}"), seen, missing);
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    walk(x, &format!("{at}[{i}]"), seen, missing);
                }
            }
            _ => {}
        }
    }
    let (mut seen, mut missing) = (0, Vec::new());
    walk(&run_schema(), "", &mut seen, &mut missing);
    assert!(seen > 90, "{seen} properties");
    assert!(missing.is_empty(), "no description: {missing:#?}");
}

/// configs/pipeline.schema.json is generated; regenerate with
/// `hrf schema > configs/pipeline.schema.json` or `HRF_UPDATE_SCHEMA=1 cargo test -p hrf-config`.
#[test]
fn the_checked_in_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/pipeline.schema.json");
    let want = run_schema_text();
    if std::env::var_os("HRF_UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: regenerate it with `hrf schema > configs/pipeline.schema.json` \
         (or HRF_UPDATE_SCHEMA=1 cargo test -p hrf-config)",
        path.display()
    );
}
