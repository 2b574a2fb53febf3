//! Reading servers' JSON as they write it: Python's `json` writes NaN and ±Infinity as bare
//! words, which strict JSON (serde_json) refuses; orjson writes them as null. Both read here as
//! non-finite numbers, so that a NaN score is a NaN (on_error decides) and not a parse error.

use serde_json::Value;

/// The reply as JSON, bare `NaN`, `Infinity` and `-Infinity` (outside strings) read as null.
pub fn parse_reply(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(first) => {
            let text = std::str::from_utf8(body).map_err(|_| first.to_string())?;
            let fixed = nulls_for_non_finite(text).ok_or_else(|| first.to_string())?;
            serde_json::from_str(&fixed).map_err(|_| first.to_string())
        }
    }
}

/// `text` with the bare words NaN, Infinity and -Infinity outside strings replaced by null;
/// `None` when it has none.
fn nulls_for_non_finite(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let word = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|w| rest.starts_with(w));
            if let Some(w) = word {
                out.push_str("null");
                rest = &rest[w.len()..];
                changed = true;
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

/// A tensor's `data`, flat or nested row-major, as numbers; null (a NaN or infinity on the
/// server) reads as NaN.
pub fn numbers(data: &Value) -> Result<Vec<f32>, String> {
    fn walk(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::Number(n) => {
                out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            Value::Null => {
                out.push(f32::NAN);
                Ok(())
            }
            Value::Bool(b) => {
                out.push(*b as u8 as f32);
                Ok(())
            }
            other => Err(format!(
                "expected numbers, found {}",
                hrf_core::text::clean(&other.to_string(), 80)
            )),
        }
    }
    if !data.is_array() {
        return Err("the output has no data array".into());
    }
    let mut out = Vec::new();
    walk(data, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_words_read_as_nan_and_strings_are_left_alone() {
        let v =
            parse_reply(br#"{"outputs":[{"name":"NaN","data":[1.5, NaN, -Infinity, Infinity]}]}"#)
                .unwrap();
        assert_eq!(v["outputs"][0]["name"], "NaN");
        let x = numbers(&v["outputs"][0]["data"]).unwrap();
        assert_eq!(x[0], 1.5);
        assert!(x[1..].iter().all(|v| v.is_nan()));
        assert!(parse_reply(b"{not json").is_err());
        assert_eq!(
            numbers(&serde_json::json!([[1], [2.5]])).unwrap(),
            vec![1.0, 2.5]
        );
        assert!(numbers(&serde_json::json!(["a"])).is_err());
        assert!(numbers(&serde_json::json!(3)).is_err());
    }
}
