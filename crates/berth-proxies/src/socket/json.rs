//! Strict JSON for request bodies, read the way Docker's Go decoder reads it.
//!
//! Two properties of Go's `encoding/json` matter to a filter that sits in
//! front of Docker:
//!
//! * **Duplicate keys: the last one wins.** A filter that kept the first
//!   `"Privileged": false` while Docker took the later `"Privileged": true`
//!   would be bypassed. [`Json`] refuses any object with a repeated key.
//! * **Struct fields match case-insensitively**, with Unicode simple case
//!   folding: `"privileged"`, `"PRIVILEGED"` and even `"NetworKMode"` (with
//!   U+212A KELVIN SIGN) all set `NetworkMode`. [`Fields`] looks struct
//!   fields up under Go's folding and refuses an object in which two keys
//!   fold to the same field, because Go would let the later one win.
//!
//! Map-valued fields (`Labels`, `Sysctls`, `Tmpfs`…) are matched exactly,
//! as Go does for map keys.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their order and never repeat a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses `bytes` strictly: valid UTF-8, no trailing data, no repeated
    /// key in any object, at most 128 levels deep.
    pub fn parse(bytes: &[u8]) -> Result<Json, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The exact-key member of an object (map semantics).
    pub fn member(&self, key: &str) -> Option<&Json> {
        self.as_object()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The value as compact JSON text, members in their order. Used to
    /// forward a body with one field rewritten; Go reads it as it would
    /// have read the original, but for that field.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Json::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            Json::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(k, out);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Sets the member for struct field `name` (under Go's folding, as
    /// [`Fields`] finds it) of an object; false when there is none.
    pub fn set_field(&mut self, name: &str, value: Json) -> bool {
        let folded = go_fold(name);
        let Json::Object(members) = self else {
            return false;
        };
        match members.iter_mut().find(|(k, _)| go_fold(k) == folded) {
            Some((_, v)) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    /// A short name of the value's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly what JSON requires; a `&str` always
    // serialises.
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out: Vec<(String, Json)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("the key `{key}` is repeated")));
            }
            let value = map.next_value()?;
            out.push((key, value));
        }
        Ok(Json::Object(out))
    }
}

/// Go's folding of a JSON key for struct-field matching: ASCII letters
/// fold to upper case, and the two non-ASCII characters whose simple case
/// fold reaches ASCII (U+212A KELVIN SIGN → `K`, U+017F LATIN SMALL LETTER
/// LONG S → `S`) fold to their ASCII letter. Any other character cannot
/// match an ASCII field name and is kept.
pub fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'K',
            '\u{017F}' => 'S',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// An object read as a Go struct: members looked up under [`go_fold`].
#[derive(Debug)]
pub struct Fields<'a> {
    members: Vec<(String, &'a str, &'a Json)>,
}

impl<'a> Fields<'a> {
    /// Reads `value` as a struct; `what` names it in messages. Refuses a
    /// non-object and an object with two keys for the same field.
    pub fn new(value: &'a Json, what: &str) -> Result<Fields<'a>, String> {
        let object = value
            .as_object()
            .ok_or_else(|| format!("{what} must be an object, not {}", value.kind()))?;
        let mut members: Vec<(String, &'a str, &'a Json)> = Vec::with_capacity(object.len());
        for (key, v) in object {
            let folded = go_fold(key);
            if let Some((_, other, _)) = members.iter().find(|(f, _, _)| *f == folded) {
                return Err(format!(
                    "{what} has both `{other}` and `{key}`, which Docker reads as the same field"
                ));
            }
            members.push((folded, key.as_str(), v));
        }
        Ok(Fields { members })
    }

    /// The member for field `name` (its canonical Go spelling), unless null.
    pub fn get(&self, name: &str) -> Option<&'a Json> {
        let folded = go_fold(name);
        self.members
            .iter()
            .find(|(f, _, _)| *f == folded)
            .map(|(_, _, v)| *v)
            .filter(|v| !v.is_null())
    }

    /// Every member as (folded name, key as sent, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a str, &'a Json)> + '_ {
        self.members.iter().map(|(f, k, v)| (f.as_str(), *k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_repeated_keys_at_any_depth() {
        assert!(Json::parse(br#"{"a":1,"a":2}"#).is_err());
        assert!(Json::parse(br#"{"x":{"Privileged":false,"Privileged":true}}"#).is_err());
        assert!(Json::parse(br#"{"x":[{"a":1},{"a":2}]}"#).is_ok());
        // Escapes are decoded before the comparison.
        assert!(Json::parse(br#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn refuses_trailing_data_and_bad_utf8() {
        assert!(Json::parse(b"{} {}").is_err());
        assert!(Json::parse(b"{\"a\":\"\xff\"}").is_err());
        assert!(Json::parse(&[b'['; 200]).is_err());
    }

    #[test]
    fn writes_back_what_it_read() {
        let text = r#"{"Container":"a\"b\u00e9","EndpointConfig":{"Aliases":["x"],"N":[1,-2,3.5,null,true,false]},"k":{}}"#;
        let mut v = Json::parse(text.as_bytes()).unwrap();
        let again = Json::parse(&v.to_bytes()).unwrap();
        assert_eq!(again, v);
        assert!(v.set_field("container", Json::String("abc".into())));
        assert!(!v.set_field("Force", Json::Bool(true)));
        let written = String::from_utf8(v.to_bytes()).unwrap();
        assert!(
            written.starts_with(r#"{"Container":"abc","EndpointConfig":{"Aliases":["x"]"#),
            "{written}"
        );
    }

    #[test]
    fn go_folding() {
        assert_eq!(go_fold("privileged"), go_fold("Privileged"));
        assert_eq!(go_fold("Networ\u{212A}Mode"), go_fold("NetworkMode"));
        assert_eq!(go_fold("\u{017F}ecurityOpt"), go_fold("SecurityOpt"));
        assert_ne!(go_fold("Privil\u{00E9}ged"), go_fold("Privileged"));
        let v = Json::parse(br#"{"privileged":true}"#).unwrap();
        let f = Fields::new(&v, "HostConfig").unwrap();
        assert_eq!(f.get("Privileged"), Some(&Json::Bool(true)));
        let v = Json::parse(br#"{"Privileged":false,"PRIVILEGED":true}"#).unwrap();
        assert!(Fields::new(&v, "HostConfig").is_err());
    }
}
