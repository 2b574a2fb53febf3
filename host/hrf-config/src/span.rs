//! Where each node of a YAML document sits: a map from dotted field paths (`training.optimizer.lr`,
//! `rewards[1].stages[0].model`) to line:column, so that validation, which sees values, can still
//! point at the text.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

/// Line and column (1-based) of every node of one document, by field path.
#[derive(Debug, Default, Clone)]
pub(crate) struct SpanIndex(BTreeMap<String, (u64, u64)>);

impl SpanIndex {
    /// Indexes `text`; a document that does not parse gives an empty index (its syntax error is
    /// reported by the typed parse).
    pub(crate) fn of(text: &str) -> Self {
        match tree(text) {
            Some(root) => Self::of_tree(&root),
            None => Self::default(),
        }
    }

    /// Indexes a document's tree.
    pub(crate) fn of_tree(root: &Spanned<Node>) -> Self {
        let mut index = BTreeMap::new();
        collect(String::new(), root, &mut index);
        Self(index)
    }

    /// The place of `path`, or of its nearest ancestor that the document has (a value left to
    /// its default has no place of its own; its section does).
    pub(crate) fn get(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path;
        loop {
            if let Some(&loc) = self.0.get(p) {
                return Some(loc);
            }
            p = parent(p)?;
        }
    }
}

/// The document's tree, each node (and each mapping key) with its place; none when it does not
/// parse.
pub(crate) fn tree(text: &str) -> Option<Spanned<Node>> {
    serde_saphyr::from_str::<Spanned<Node>>(text).ok()
}

/// The tree of a document already read (one with its `--set` overrides applied), each node
/// placed in the document's order: the n-th node is on line n, at column 2, and a mapping key
/// sits on its value's line at column 1. Scalars are as the YAML reader resolves the document
/// written as JSON (a JSON string is text, whatever it spells).
pub(crate) fn tree_of_value(v: &Value) -> Spanned<Node> {
    let mut line = 0;
    placed_tree(v, &mut line)
}

fn placed_tree(v: &Value, line: &mut u64) -> Spanned<Node> {
    *line += 1;
    let here = *line;
    let node = match v {
        Value::Object(m) => Node::Map(
            m.iter()
                .map(|(k, v)| {
                    let value = placed_tree(v, line);
                    let key = placed(Key(k.clone()), value.referenced.line(), 1);
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Node::Seq(items.iter().map(|v| placed_tree(v, line)).collect()),
        Value::Null => Node::Scalar(Scalar::Null),
        Value::Bool(b) => Node::Scalar(Scalar::Bool(*b)),
        Value::Number(n) => Node::Scalar(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Int(i.into()),
            (None, Some(u)) => Scalar::Int(u.into()),
            (None, None) => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Node::Scalar(Scalar::Str(s.clone())),
    };
    placed(node, here, 2)
}

/// `value` at `line`:`column`.
fn placed<T>(value: T, line: u64, column: u64) -> Spanned<T> {
    // The reader's `Location` has no public constructor; it reads from its fields.
    let at: Location = serde_json::from_value(serde_json::json!({"line": line, "column": column}))
        .expect("a line and a column make a location");
    Spanned::new(value, at, at)
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a` → `` (the root), `` → none.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(&path[..path.rfind(['.', '[']).unwrap_or(0)])
}

fn collect(path: String, node: &Spanned<Node>, index: &mut BTreeMap<String, (u64, u64)>) {
    let loc = node.referenced;
    if loc.line() > 0 {
        index.insert(path.clone(), (loc.line(), loc.column()));
    }
    match &node.value {
        Node::Map(entries) => {
            for (k, v) in entries {
                let p = child(&path, &k.value.0);
                collect(p, v, index);
            }
        }
        Node::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(format!("{path}[{i}]"), v, index);
            }
        }
        Node::Scalar(_) => {}
    }
}

/// The path of `key` in the mapping at `path`.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A YAML node, each child (and each key) with its place.
pub(crate) enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar(Scalar),
}

/// A scalar as the YAML reader resolves it (plain `3` an integer, `'3'` text, `yes` true).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

macro_rules! scalar {
    ($($f:ident: $t:ty => $v:ident),*) => {
        $(fn $f<E: de::Error>(self, v: $t) -> Result<Node, E> {
            Ok(Node::Scalar(Scalar::$v(v.into())))
        })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar!(visit_bool: bool => Bool, visit_i64: i64 => Int, visit_u64: u64 => Int,
            visit_i128: i128 => Int, visit_f64: f64 => Float, visit_str: &str => Str);

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Int(
            i128::try_from(v).unwrap_or(i128::MAX),
        )))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(
            String::from_utf8_lossy(v).into_owned(),
        )))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Spanned<Node>>()? {
            items.push(v);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Key>>()? {
            entries.push((k, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key as text (YAML allows numbers and booleans as keys).
pub(crate) struct Key(pub(crate) String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_has_its_place() {
        let text = "training:\n  optimizer:\n    lr: -1\nrewards:\n  - kind: onnx\n    stages: [{model: a.onnx}]\n";
        let idx = SpanIndex::of(text);
        assert_eq!(idx.get("training.optimizer.lr"), Some((3, 9)));
        assert_eq!(idx.get("rewards[0].kind"), Some((5, 11)));
        assert_eq!(idx.get("rewards[0].stages[0].model").map(|l| l.0), Some(6));
        // Absent fields fall back to their section.
        assert_eq!(
            idx.get("training.optimizer.beta1"),
            idx.get("training.optimizer")
        );
    }

    /// A document already read is placed in its order: each node on its own line, a key on its
    /// value's line before it.
    #[test]
    fn a_read_document_is_placed_in_order() {
        let doc = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "d": null});
        let tree = tree_of_value(&doc);
        let idx = SpanIndex::of_tree(&tree);
        assert_eq!(idx.get(""), Some((1, 2)));
        assert_eq!(idx.get("a"), Some((2, 2)));
        assert_eq!(idx.get("a.b[1].c"), Some((6, 2)));
        assert_eq!(idx.get("d"), Some((7, 2)));
        assert_eq!(idx.get("a.b[1].e"), idx.get("a.b[1]"));
        let Node::Map(entries) = &tree.value else {
            panic!("a mapping");
        };
        assert_eq!(
            (
                entries[1].0.referenced.line(),
                entries[1].0.referenced.column()
            ),
            (7, 1)
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
