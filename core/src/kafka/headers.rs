//! A read record's headers, copied for the record that carries them on.

use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders, OwnedMessage};

/// The headers of a record read from Kafka, as a list a produced record can take. librdkafka
/// copies the list in one call, keeping order, repeated names and null values; reading each
/// header out through rdkafka and inserting it again costs, per header, a call, a `strlen` and a
/// UTF-8 check of its name. The mirror and the validator do this for every record.
pub trait CopyHeaders: Message {
    fn copy_headers(&self) -> Option<OwnedHeaders>;
}

impl CopyHeaders for BorrowedMessage<'_> {
    fn copy_headers(&self) -> Option<OwnedHeaders> {
        self.headers().map(BorrowedHeaders::detach)
    }
}

impl CopyHeaders for OwnedMessage {
    fn copy_headers(&self) -> Option<OwnedHeaders> {
        self.headers().cloned()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers, Timestamp};

    use super::*;

    #[test]
    fn order_repeated_names_and_null_values_are_kept() {
        let headers = [
            ("a", Some(&b"1"[..])),
            ("b", None),
            ("a", Some(b"2")),
            ("c", Some(b"")),
        ];
        let owned = headers
            .iter()
            .fold(OwnedHeaders::new(), |list, (key, value)| {
                list.insert(Header { key, value: *value })
            });
        let message = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(owned),
        );
        let copy = message.copy_headers().expect("headers");
        let read: Vec<(&str, Option<&[u8]>)> = copy.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(read, headers);
        let none = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert!(none.copy_headers().is_none());
    }
}
