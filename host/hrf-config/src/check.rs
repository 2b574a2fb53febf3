//! Every unknown key and wrong type of a document at once. The typed parse stops at its first
//! error; when it fails, this pass walks the whole YAML tree against the pipeline's JSON schema
//! and reports each node the typed parse is certain to refuse: a key the schema does not have
//! (where it refuses unknown keys), a missing required key, a mapping or list where the other is
//! wanted, a scalar where a mapping or list is wanted (and the reverse), text that is no number
//! where a number is wanted, a float or a negative number where an unsigned integer is wanted, a
//! value outside an integer's range, an unknown enum word, a fixed-length list of the wrong
//! length. Where the reader might still accept a value (`'3'` as a number, `3` as text, `null`
//! for a section), nothing is reported: each problem listed is one the typed parse refuses.

use serde_json::Value;
use serde_saphyr::Spanned;

use crate::span::{child, Node, Scalar};

/// A problem found: the field's path, its place, the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub path: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// The problems of `text` against `schema` (a draft 2020-12 schema whose `$ref`s point into its
/// own `$defs`), in document order; none when the text does not parse as YAML.
pub(crate) fn problems(schema: &Value, text: &str) -> Vec<Found> {
    match crate::span::tree(text) {
        Some(root) => problems_in(schema, &root),
        None => Vec::new(),
    }
}

/// The problems of a document's tree against `schema`, in document order.
pub(crate) fn problems_in(schema: &Value, root: &Spanned<Node>) -> Vec<Found> {
    let mut out = Vec::new();
    Checker { root: schema }.node(schema, root, "", &mut out);
    out.sort_by_key(|f| (f.line, f.column));
    out
}

struct Checker<'a> {
    root: &'a Value,
}

/// What kind of node the reader saw, in words.
fn got(node: &Node) -> String {
    match node {
        Node::Map(_) => "a mapping".into(),
        Node::Seq(_) => "a list".into(),
        Node::Scalar(Scalar::Null) => "null".into(),
        Node::Scalar(Scalar::Bool(b)) => format!("`{b}`"),
        Node::Scalar(Scalar::Int(i)) => format!("`{i}`"),
        Node::Scalar(Scalar::Float(f)) => format!("`{f}`"),
        Node::Scalar(Scalar::Str(s)) => format!("`{s}`"),
    }
}

/// The schema's `type` as a list (none: any).
fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Words for the schema's types.
fn expected(types: &[&str]) -> String {
    let words: Vec<&str> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "object" => "a mapping",
            "array" => "a list",
            "integer" => "a whole number",
            "number" => "a number",
            "boolean" => "true or false",
            "string" => "text",
            other => other,
        })
        .collect();
    words.join(" or ")
}

/// Text the reader cannot take as a number: no digit at all, and no spelling of infinity or NaN.
fn not_a_number(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    !l.chars().any(|c| c.is_ascii_digit()) && !l.contains("inf") && !l.contains("nan")
}

/// Text the reader cannot take as true or false.
fn not_a_bool(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    !matches!(
        l.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    )
}

impl<'a> Checker<'a> {
    /// `schema` with its `$ref` followed.
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(name) = r.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(s) => schema = s,
                None => break,
            }
        }
        schema
    }

    fn node(&self, schema: &'a Value, node: &Spanned<Node>, path: &str, out: &mut Vec<Found>) {
        let schema = self.resolve(schema);
        let push = |out: &mut Vec<Found>, message: String| {
            out.push(Found {
                path: path.to_string(),
                line: node.referenced.line(),
                column: node.referenced.column(),
                message,
            })
        };
        if let Node::Scalar(Scalar::Null) = node.value {
            // `key:` with nothing may still be read as a default; never certain.
            return;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                self.alternatives(alts, node, path, out);
                return;
            }
        }
        if let Some(words) = schema.get("enum").and_then(Value::as_array) {
            self.word(schema, words, node, path, out);
            return;
        }
        if let Some(word) = schema.get("const") {
            self.word(schema, std::slice::from_ref(word), node, path, out);
            return;
        }
        let Some(types) = types(schema) else {
            return;
        };
        let has = |t: &str| types.contains(&t);
        match &node.value {
            Node::Map(entries) => {
                if !has("object") {
                    push(out, format!("expected {}, got a mapping", expected(&types)));
                    return;
                }
                self.mapping(schema, node, entries, path, out);
            }
            Node::Seq(items) => {
                if !has("array") {
                    push(out, format!("expected {}, got a list", expected(&types)));
                    return;
                }
                let n = items.len() as u64;
                let min = schema.get("minItems").and_then(Value::as_u64);
                let max = schema.get("maxItems").and_then(Value::as_u64);
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    let size = match (min, max) {
                        (Some(a), Some(b)) if a == b => format!("{a}"),
                        (a, b) => format!(
                            "{}..={}",
                            a.unwrap_or(0),
                            b.map_or(String::new(), |b| b.to_string())
                        ),
                    };
                    push(out, format!("expected a list of {size} items, got {n}"));
                    return;
                }
                if let Some(item) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.node(item, v, &format!("{path}[{i}]"), out);
                    }
                }
            }
            Node::Scalar(s) => {
                if (has("string") && !matches!(s, Scalar::Null)) || types.is_empty() {
                    // The reader takes any scalar as text.
                    return;
                }
                let bad = match s {
                    Scalar::Null => false,
                    Scalar::Bool(_) => !has("boolean"),
                    Scalar::Int(i) => {
                        if has("integer") {
                            let min = schema.get("minimum").and_then(Value::as_f64);
                            let max = schema.get("maximum").and_then(Value::as_f64);
                            if min.is_some_and(|m| (*i as f64) < m)
                                || max.is_some_and(|m| (*i as f64) > m)
                            {
                                let range = match (min, max) {
                                    (Some(a), Some(b)) => format!("in {a}..={b}"),
                                    (Some(a), None) => format!("≥ {a}"),
                                    (None, Some(b)) => format!("≤ {b}"),
                                    (None, None) => unreachable!(),
                                };
                                push(out, format!("expected a whole number {range}, got {i}"));
                                return;
                            }
                            false
                        } else {
                            !has("number")
                        }
                    }
                    Scalar::Float(_) => !has("number"),
                    Scalar::Str(t) => {
                        let numeric = has("number") || has("integer");
                        let takes =
                            (numeric && !not_a_number(t)) || (has("boolean") && !not_a_bool(t));
                        !takes
                    }
                };
                if bad {
                    push(
                        out,
                        format!("expected {}, got {}", expected(&types), got(&node.value)),
                    );
                }
            }
        }
    }

    /// A mapping against an object schema: unknown keys, missing required keys, each value.
    fn mapping(
        &self,
        schema: &'a Value,
        node: &Spanned<Node>,
        entries: &[(Spanned<crate::span::Key>, Spanned<Node>)],
        path: &str,
        out: &mut Vec<Found>,
    ) {
        let empty = serde_json::Map::new();
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let extra = schema.get("additionalProperties");
        for (k, v) in entries {
            let key = &k.value.0;
            let at = child(path, key);
            match (props.get(key), extra) {
                (Some(s), _) => self.node(s, v, &at, out),
                (None, Some(Value::Bool(false))) => {
                    let names: Vec<&str> = props.keys().map(String::as_str).collect();
                    out.push(Found {
                        path: at,
                        line: k.referenced.line(),
                        column: k.referenced.column(),
                        message: format!(
                            "unknown field `{key}`, expected {}",
                            match names.len() {
                                1 => format!("`{}`", names[0]),
                                _ => format!("one of {}", names.join(", ")),
                            }
                        ),
                    });
                }
                (None, Some(s @ Value::Object(_))) => self.node(s, v, &at, out),
                (None, _) => {}
            }
        }
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !entries.iter().any(|(k, _)| k.value.0 == req) {
                out.push(Found {
                    path: path.to_string(),
                    line: node.referenced.line(),
                    column: node.referenced.column(),
                    message: format!("missing field `{req}`"),
                });
            }
        }
    }

    /// A scalar against a list of allowed words (unit enum variants): anything else is refused.
    fn word(
        &self,
        schema: &Value,
        words: &[Value],
        node: &Spanned<Node>,
        path: &str,
        out: &mut Vec<Found>,
    ) {
        let list: Vec<&str> = words.iter().filter_map(Value::as_str).collect();
        if list.len() != words.len() {
            return; // not a list of words: leave it to the typed parse
        }
        let text = match &node.value {
            Node::Scalar(Scalar::Str(s)) => s.clone(),
            Node::Scalar(Scalar::Null) => return,
            Node::Scalar(_) => got(&node.value).trim_matches('`').to_string(),
            other => {
                let _ = schema;
                out.push(Found {
                    path: path.to_string(),
                    line: node.referenced.line(),
                    column: node.referenced.column(),
                    message: format!("expected one of {}, got {}", list.join(", "), got(other)),
                });
                return;
            }
        };
        if !list.contains(&text.as_str()) {
            out.push(Found {
                path: path.to_string(),
                line: node.referenced.line(),
                column: node.referenced.column(),
                message: format!(
                    "unknown variant `{text}`, expected {}",
                    match list.len() {
                        1 => format!("`{}`", list[0]),
                        _ => format!("one of {}", list.join(", ")),
                    }
                ),
            });
        }
    }

    /// `anyOf` / `oneOf`: refused only when every alternative refuses the node. `Option<T>`
    /// (`T` or null) is checked as `T`; otherwise, when exactly one alternative has the node's
    /// shape (a mapping, a list, a scalar), its problems are the node's, else one message says
    /// what was expected.
    fn alternatives(
        &self,
        alts: &'a [Value],
        node: &Spanned<Node>,
        path: &str,
        out: &mut Vec<Found>,
    ) {
        let is_null = |s: &Value| types(self.resolve(s)).is_some_and(|t| t == ["null"]);
        let real: Vec<&Value> = alts.iter().filter(|s| !is_null(s)).collect();
        if real.len() == 1 {
            self.node(real[0], node, path, out);
            return;
        }
        // Unit variants with their own descriptions come as one `const` (or `enum`) each.
        let words: Option<Vec<Value>> = real
            .iter()
            .map(|a| {
                let a = self.resolve(a);
                match (a.get("const"), a.get("enum").and_then(Value::as_array)) {
                    (Some(c), _) => Some(vec![c.clone()]),
                    (None, Some(ws)) => Some(ws.clone()),
                    (None, None) => None,
                }
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        if let Some(words) = words {
            self.word(&Value::Null, &words, node, path, out);
            return;
        }
        let mut results = Vec::new();
        for alt in &real {
            let mut found = Vec::new();
            self.node(alt, node, path, &mut found);
            if found.is_empty() {
                return; // one alternative takes it
            }
            results.push((alt, found));
        }
        let shape = match node.value {
            Node::Map(_) => "object",
            Node::Seq(_) => "array",
            Node::Scalar(_) => "scalar",
        };
        let fits = |alt: &Value| {
            let alt = self.resolve(alt);
            let ts = types(alt).unwrap_or_default();
            match shape {
                "object" => ts.contains(&"object"),
                "array" => ts.contains(&"array"),
                _ => {
                    alt.get("enum").is_some() || ts.iter().any(|t| !["object", "array"].contains(t))
                }
            }
        };
        let fitting: Vec<_> = results.iter().filter(|(a, _)| fits(a)).collect();
        if fitting.len() == 1 {
            out.extend(fitting[0].1.iter().cloned());
            return;
        }
        let words: Vec<String> = real
            .iter()
            .map(|a| {
                let a = self.resolve(a);
                if let Some(c) = a.get("const").and_then(Value::as_str) {
                    return format!("`{c}`");
                }
                match a.get("enum").and_then(Value::as_array) {
                    Some(ws) => ws
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|w| format!("`{w}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => expected(&types(a).unwrap_or_default()),
                }
            })
            .filter(|w| !w.is_empty())
            .collect();
        out.push(Found {
            path: path.to_string(),
            line: node.referenced.line(),
            column: node.referenced.column(),
            message: format!("expected {}, got {}", words.join(" or "), got(&node.value)),
        });
    }
}
