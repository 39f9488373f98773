//! Inputs for the property tests of the parsers that take outside input (log lines, schema
//! documents, rule documents): JSON shaped by a parser's own vocabulary, so that generated
//! documents reach past the first check, and the bytes that break parsers: invalid UTF-8, deep
//! nesting, huge numbers, duplicate keys, cut-off text.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;

/// Nesting of generated values; deeper inputs come from [`hostile_text`].
const DEPTH: u32 = 4;

/// A string: one of `words` (a parser's keys and values) or any characters.
pub fn word(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(words).prop_map(str::to_owned),
        1 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
    ]
}

/// Any JSON value whose object keys and strings come mostly from `words`, with numbers at the
/// edges of every integer and float type.
pub fn json_value(words: &'static [&'static str]) -> BoxedStrategy<Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(
            &[
                0i64,
                1,
                -1,
                i32::MAX as i64,
                i32::MIN as i64,
                i64::MAX,
                i64::MIN
            ][..]
        )
        .prop_map(Value::from),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        word(words).prop_map(Value::String),
    ];
    leaf.prop_recursive(DEPTH, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((word(words), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Text a parser must refuse or accept without panicking: a generated value's JSON, or that
/// JSON damaged (cut short, a byte flipped to invalid UTF-8, a key repeated), or one of the
/// classic hostile inputs (nesting thousands deep, numbers beyond every type).
pub fn hostile_text(words: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let json = json_value(words)
        .prop_map(|v| v.to_string().into_bytes())
        .boxed();
    prop_oneof![
        4 => json.clone(),
        1 => (json.clone(), any::<prop::sample::Index>())
            .prop_map(|(text, at)| text[..at.index(text.len() + 1)].to_vec()),
        1 => (json.clone(), any::<prop::sample::Index>(), 0x80u8..=0xff).prop_map(
            |(mut text, at, byte)| {
                if !text.is_empty() {
                    let i = at.index(text.len());
                    text[i] = byte;
                }
                text
            }
        ),
        1 => (word(words), json_value(words), json_value(words)).prop_map(|(key, a, b)| {
            format!("{{{k}:{a},{k}:{b}}}", k = Value::String(key)).into_bytes()
        }),
        1 => (1usize..5_000, any::<bool>()).prop_map(|(depth, object)| {
            let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        1 => proptest::sample::select(&[
            "1e999999",
            "-1e999999",
            "123456789012345678901234567890",
            "-0.000000000000000000000000000001e-400",
            "{\"a\":1e400}",
            "{\"n\":18446744073709551616}",
            "\"\\ud800\"",
            "",
            "\u{feff}{}",
        ][..])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..64),
    ]
}
