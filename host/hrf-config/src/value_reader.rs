//! Reads a typed value straight out of a `serde_json::Value` (a pipeline with its `--set`
//! overrides applied) as the YAML reader (serde-saphyr) reads the same value written as JSON:
//! the same values are accepted (`'3'` as a number, `3` as text) and the same errors come back,
//! in the YAML reader's words. Mappings and lists are walked here; a scalar, and any request a
//! node's shape does not answer (a number asked of a mapping), is put to the YAML reader itself
//! on that one node's JSON text, and what the reader hands its visitor is handed on to ours.
//! `serde_path_to_error` names the field that failed.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize as _;
use serde_json::{Map, Value};
use serde_saphyr::Error;

/// `T` read from `doc`. An error is the dotted path of the field it is about
/// (`rewards[0].weight`; empty: the document itself) and the YAML reader's message.
pub(crate) fn from_value<T: DeserializeOwned>(doc: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(Node(doc)).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, crate::reader_message(e.inner()))
    })
}

/// One node of the document.
#[derive(Clone, Copy)]
struct Node<'a>(&'a Value);

/// A deserializer's request, to be put to the YAML reader.
#[derive(Clone, Copy)]
enum Req {
    Any,
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    String,
    Bytes,
    ByteBuf,
    Unit,
    UnitStruct(&'static str),
    Seq,
    Tuple(usize),
    TupleStruct(&'static str, usize),
    Map,
    Struct(&'static str, &'static [&'static str]),
    Enum(&'static str, &'static [&'static str]),
    Identifier,
}

/// What the YAML reader handed its visitor. `Nested`: a mapping, list, option or newtype,
/// which this module walks itself. `Variant`: an enum, by its variant's identifier.
enum Visit {
    Unit,
    None,
    Bool(bool),
    I64(i64),
    I128(i128),
    U64(u64),
    U128(u128),
    F64(f64),
    Char(char),
    Str(String),
    Bytes(Vec<u8>),
    Nested,
    Variant(Box<Visit>),
}

/// Puts `req` to the YAML reader on `node`'s JSON text.
fn probe(req: Req, node: &Value) -> Result<Visit, Error> {
    let text = serde_json::to_string(node).expect("plain data");
    serde_saphyr::with_deserializer_from_str(&text, |d| req.deserialize(d))
}

impl<'de> DeserializeSeed<'de> for Req {
    type Value = Visit;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Visit, D::Error> {
        let r = Recorder;
        match self {
            Req::Any => d.deserialize_any(r),
            Req::Bool => d.deserialize_bool(r),
            Req::I8 => d.deserialize_i8(r),
            Req::I16 => d.deserialize_i16(r),
            Req::I32 => d.deserialize_i32(r),
            Req::I64 => d.deserialize_i64(r),
            Req::I128 => d.deserialize_i128(r),
            Req::U8 => d.deserialize_u8(r),
            Req::U16 => d.deserialize_u16(r),
            Req::U32 => d.deserialize_u32(r),
            Req::U64 => d.deserialize_u64(r),
            Req::U128 => d.deserialize_u128(r),
            Req::F32 => d.deserialize_f32(r),
            Req::F64 => d.deserialize_f64(r),
            Req::Char => d.deserialize_char(r),
            Req::Str => d.deserialize_str(r),
            Req::String => d.deserialize_string(r),
            Req::Bytes => d.deserialize_bytes(r),
            Req::ByteBuf => d.deserialize_byte_buf(r),
            Req::Unit => d.deserialize_unit(r),
            Req::UnitStruct(name) => d.deserialize_unit_struct(name, r),
            Req::Seq => d.deserialize_seq(r),
            Req::Tuple(len) => d.deserialize_tuple(len, r),
            Req::TupleStruct(name, len) => d.deserialize_tuple_struct(name, len, r),
            Req::Map => d.deserialize_map(r),
            Req::Struct(name, fields) => d.deserialize_struct(name, fields, r),
            Req::Enum(name, variants) => d.deserialize_enum(name, variants, r),
            Req::Identifier => d.deserialize_identifier(r),
        }
    }
}

/// Records what the YAML reader hands it (nested content is read and dropped).
struct Recorder;

impl<'de> Visitor<'de> for Recorder {
    type Value = Visit;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Visit, E> {
        Ok(Visit::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Visit, E> {
        Ok(Visit::I64(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Visit, E> {
        Ok(Visit::I128(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Visit, E> {
        Ok(Visit::U64(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Visit, E> {
        Ok(Visit::U128(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Visit, E> {
        Ok(Visit::F64(v))
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<Visit, E> {
        Ok(Visit::Char(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Visit, E> {
        Ok(Visit::Str(v.to_string()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Visit, E> {
        Ok(Visit::Bytes(v.to_vec()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Visit, E> {
        Ok(Visit::None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Visit, E> {
        Ok(Visit::Unit)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Visit, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Visit::Nested)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Visit, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Visit::Nested)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Visit, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Visit::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Visit, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Visit::Nested)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Visit, A::Error> {
        let (id, variant) = data.variant_seed(Req::Identifier)?;
        variant.unit_variant()?;
        Ok(Visit::Variant(Box::new(id)))
    }
}

/// Hands `visit` (what the YAML reader handed its visitor for `req` on `node`) to `visitor`.
fn replay<'de, V: Visitor<'de>>(
    visit: Visit,
    node: &Value,
    req: Req,
    visitor: V,
) -> Result<V::Value, Error> {
    match visit {
        Visit::Unit => visitor.visit_unit(),
        Visit::None => visitor.visit_none(),
        Visit::Bool(v) => visitor.visit_bool(v),
        Visit::I64(v) => visitor.visit_i64(v),
        Visit::I128(v) => visitor.visit_i128(v),
        Visit::U64(v) => visitor.visit_u64(v),
        Visit::U128(v) => visitor.visit_u128(v),
        Visit::F64(v) => visitor.visit_f64(v),
        Visit::Char(v) => visitor.visit_char(v),
        Visit::Str(v) => visitor.visit_string(v),
        Visit::Bytes(v) => visitor.visit_byte_buf(v),
        Visit::Variant(id) => visitor.visit_enum(Recorded(*id)),
        Visit::Nested => match (node, req) {
            (Value::Object(m), _) => visitor.visit_map(Entries::new(m)),
            (Value::Array(a), _) => visitor.visit_seq(Items(a.iter())),
            (_, Req::Seq | Req::Tuple(_) | Req::TupleStruct(..)) => {
                visitor.visit_seq(Items([].iter()))
            }
            (_, Req::Map | Req::Struct(..)) => visitor.visit_map(Entries::new(&Map::new())),
            _ => visitor.visit_unit(),
        },
    }
}

impl<'a> Node<'a> {
    /// `req` as the YAML reader answers it on this node.
    fn read<'de, V: Visitor<'de>>(self, req: Req, visitor: V) -> Result<V::Value, Error> {
        let visit = probe(req, self.0)?;
        replay(visit, self.0, req, visitor)
    }
}

macro_rules! by_the_reader {
    ($($method:ident => $req:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.read(Req::$req, visitor)
        })*
    };
}

impl<'de> Deserializer<'de> for Node<'_> {
    type Error = Error;

    by_the_reader!(
        deserialize_bool => Bool, deserialize_i8 => I8, deserialize_i16 => I16,
        deserialize_i32 => I32, deserialize_i64 => I64, deserialize_i128 => I128,
        deserialize_u8 => U8, deserialize_u16 => U16, deserialize_u32 => U32,
        deserialize_u64 => U64, deserialize_u128 => U128, deserialize_f32 => F32,
        deserialize_f64 => F64, deserialize_char => Char, deserialize_str => Str,
        deserialize_string => String, deserialize_bytes => Bytes,
        deserialize_byte_buf => ByteBuf, deserialize_unit => Unit,
        deserialize_identifier => Identifier,
    );

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
            Value::Array(a) => visitor.visit_seq(Items(a.iter())),
            _ => self.read(Req::Any, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // In JSON text only `null` is a null-like scalar; quoted text never is.
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.read(Req::UnitStruct(name), visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => visitor.visit_seq(Items(a.iter())),
            _ => self.read(Req::Seq, visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => tuple(a, len, visitor),
            _ => self.read(Req::Tuple(len), visitor),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => tuple(a, len, visitor),
            _ => self.read(Req::TupleStruct(name, len), visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
            _ => self.read(Req::Map, visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
            _ => self.read(Req::Struct(name, fields), visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            // `{variant: payload}`; the reader reads the first entry and wants no other.
            Value::Object(m) if !m.is_empty() => {
                let (key, payload) = m.iter().next().expect("an entry");
                let value = visitor.visit_enum(Tagged { key, payload })?;
                if m.len() > 1 {
                    return Err(de::Error::custom(
                        "expected end of mapping after enum variant value",
                    ));
                }
                Ok(value)
            }
            // A unit variant's name, or a value the reader refuses.
            _ => self.read(Req::Enum(name, variants), visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A list read as a tuple of `len`: as the reader does, an item left over after the visitor is
/// done is an error.
fn tuple<'de, V: Visitor<'de>>(items: &[Value], len: usize, visitor: V) -> Result<V::Value, Error> {
    let mut rest = Items(items.iter());
    let value = visitor.visit_seq(&mut rest)?;
    if rest.0.len() > 0 {
        let consumed = items.len() - rest.0.len();
        return Err(de::Error::invalid_length(consumed + 1, &TupleOf(len)));
    }
    Ok(value)
}

/// "a tuple of size N", the reader's words.
struct TupleOf(usize);

impl de::Expected for TupleOf {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a tuple of size {}", self.0)
    }
}

/// A mapping's key: text.
struct Key<'a>(&'a str);

impl<'de> Deserializer<'de> for Key<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// A mapping's entries, in order.
struct Entries<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'a> Entries<'a> {
    fn new(m: &'a Map<String, Value>) -> Self {
        Self {
            iter: m.iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Key(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let v = self.value.take().expect("a key first");
        seed.deserialize(Node(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A list's items, in order.
struct Items<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|v| seed.deserialize(Node(v))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// An enum written `{variant: payload}`.
struct Tagged<'a> {
    key: &'a str,
    payload: &'a Value,
}

impl<'de, 'a> EnumAccess<'de> for Tagged<'a> {
    type Error = Error;
    type Variant = Node<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Node<'a>), Error> {
        Ok((seed.deserialize(Key(self.key))?, Node(self.payload)))
    }
}

impl<'de> VariantAccess<'de> for Node<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            Value::Null => Ok(()),
            _ => Err(de::Error::custom("unexpected value for unit enum variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}

/// An enum the YAML reader read as a unit variant, by the identifier it recorded.
struct Recorded(Visit);

impl<'de> EnumAccess<'de> for Recorded {
    type Error = Error;
    type Variant = UnitOnly;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, UnitOnly), Error> {
        Ok((seed.deserialize(Replayed(self.0))?, UnitOnly))
    }
}

/// Replays a recorded visit, whatever is asked of it.
struct Replayed(Visit);

impl<'de> Deserializer<'de> for Replayed {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        replay(self.0, &Value::Null, Req::Any, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// The payload of a variant written as a bare name: none.
struct UnitOnly;

impl<'de> VariantAccess<'de> for UnitOnly {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"struct variant",
        ))
    }
}

#[cfg(test)]
mod tests;
