//! The Confluent wire format of clean records: a magic byte (0), the schema id as 4 bytes
//! big-endian, then the payload (an Avro datum, or the JSON text for JSON schemas).
//!
//! The validator writes it and every reader of clean topics (reconciliation, tests, benchmarks)
//! parses it; this module is the one place that knows the byte layout, so that any
//! Confluent-compatible deserializer and logpipe's own readers agree.

use thiserror::Error;

/// The first byte of every value in the wire format.
pub const MAGIC: u8 = 0;

/// Length of the header in front of the payload: the magic byte and the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// Why a value is not in the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("{0} bytes are too short for the Confluent wire format header ({HEADER_LEN} bytes)")]
    TooShort(usize),
    #[error("first byte {0:#04x} is not the Confluent wire format's magic byte 0")]
    BadMagic(u8),
}

/// Appends the header for `schema_id` to `out`; the caller then appends the payload.
pub fn write_header(schema_id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// The whole value: header and payload.
pub fn encode(schema_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    write_header(schema_id, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Splits a value into its schema id and payload. The payload may be empty (an Avro record
/// without fields encodes to no bytes).
pub fn parse(value: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let Some((header, payload)) = value.split_first_chunk::<HEADER_LEN>() else {
        return Err(WireError::TooShort(value.len()));
    };
    let [magic, id @ ..] = *header;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    Ok((u32::from_be_bytes(id), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Result<(u32, &'static [u8]), WireError>;

    #[test]
    fn values_parse_or_say_why_not() {
        let cases: &[(&[u8], Parsed)] = &[
            (&[0, 0, 0, 0, 9, 2, 4], Ok((9, &[2, 4]))),
            (&[0, 1, 2, 3, 4], Ok((0x0102_0304, &[]))),
            (&[0, 0xff, 0xff, 0xff, 0xff, 7], Ok((u32::MAX, &[7]))),
            (&[], Err(WireError::TooShort(0))),
            (&[0, 0, 0, 1], Err(WireError::TooShort(4))),
            (&[1, 0, 0, 0, 9, 2], Err(WireError::BadMagic(1))),
            (b"{\"a\":1}", Err(WireError::BadMagic(b'{'))),
        ];
        for (value, expected) in cases {
            assert_eq!(&parse(value), expected, "{value:?}");
        }
    }

    proptest::proptest! {
        /// Any bytes parse or are refused with the reason, never a panic; what parses is the
        /// header and the rest, and encodes back to the same bytes.
        #[test]
        fn any_bytes_parse_or_are_refused(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            match parse(&value) {
                Ok((id, payload)) => proptest::prop_assert_eq!(encode(id, payload), value),
                Err(WireError::TooShort(n)) => proptest::prop_assert!(n < HEADER_LEN),
                Err(WireError::BadMagic(b)) => proptest::prop_assert_ne!(b, MAGIC),
            }
        }
    }

    #[test]
    fn encoded_values_parse_back() {
        for (id, payload) in [(0, &b""[..]), (1, b"x"), (0x00ab_cdef, b"payload")] {
            let value = encode(id, payload);
            assert_eq!(value.len(), HEADER_LEN + payload.len());
            assert_eq!(parse(&value), Ok((id, payload)));
        }
        let mut out = b"kept".to_vec();
        write_header(258, &mut out);
        assert_eq!(out, b"kept\x00\x00\x00\x01\x02");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(WireError::TooShort(3).to_string().contains("3 bytes"));
        assert!(WireError::BadMagic(0x7b).to_string().contains("0x7b"));
    }
}
