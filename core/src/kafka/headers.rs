//! A read record's headers, carried on to the record produced for it: moved as librdkafka's own
//! list ([`HeaderList`], [`produce`]) rather than copied into rdkafka's `OwnedHeaders`.

use std::ffi::{c_void, CStr};
use std::ptr::{self, NonNull};

use rdkafka::bindings::{self as rd, rd_kafka_vtype_t::*};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedMessage};
use rdkafka::producer::{Producer, ProducerContext};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::IntoOpaque;

/// A record's headers as librdkafka's own list, owned: moved out of a fetched record and into a
/// produced one without a copy.
///
/// rdkafka gives a produced record only an `OwnedHeaders`, which for a fetched record is a copy
/// of the list librdkafka parsed (an allocation per header), and the original is destroyed with
/// the fetched record: in the mirror's profile the copy and the second destruction were about a
/// tenth of its CPU. This is the parsed list itself, detached from the fetched record.
pub struct HeaderList(NonNull<rd::rd_kafka_headers_t>);

// SAFETY: the list is owned by this value alone, and librdkafka's lists are plain data that any
// thread may use or destroy.
unsafe impl Send for HeaderList {}

impl HeaderList {
    pub fn new() -> HeaderList {
        // SAFETY: rd_kafka_headers_new only allocates; it never returns null (it aborts instead).
        HeaderList(NonNull::new(unsafe { rd::rd_kafka_headers_new(4) }).expect("allocated"))
    }

    /// A copy of `headers`, for a record that was not fetched (held, or made in a test).
    pub fn copy_of<H: Headers>(headers: &H) -> HeaderList {
        let mut list = HeaderList::new();
        for header in headers.iter() {
            list.add(header.key, header.value);
        }
        list
    }

    /// Appends a header (`None`: a null value).
    pub fn add(&mut self, name: &str, value: Option<&[u8]>) {
        let (value_ptr, value_len) = value.map_or((ptr::null(), 0), |v| (v.as_ptr(), v.len()));
        // SAFETY: the list is ours; librdkafka copies name and value, whose lengths are given
        // (so neither needs a terminating NUL).
        unsafe {
            rd::rd_kafka_header_add(
                self.0.as_ptr(),
                name.as_ptr().cast(),
                name.len() as isize,
                value_ptr.cast(),
                value_len as isize,
            );
        }
    }

    /// Gives the list up to librdkafka, which then destroys it.
    fn into_raw(self) -> *mut rd::rd_kafka_headers_t {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }
}

impl Clone for HeaderList {
    fn clone(&self) -> HeaderList {
        // SAFETY: a valid list; the copy is new and ours.
        let copy = unsafe { rd::rd_kafka_headers_copy(self.0.as_ptr()) };
        HeaderList(NonNull::new(copy).expect("allocated"))
    }
}

impl Default for HeaderList {
    fn default() -> HeaderList {
        HeaderList::new()
    }
}

impl Drop for HeaderList {
    fn drop(&mut self) {
        // SAFETY: the list is ours alone and not used after this.
        unsafe { rd::rd_kafka_headers_destroy(self.0.as_ptr()) }
    }
}

impl Headers for HeaderList {
    fn count(&self) -> usize {
        // SAFETY: a valid list.
        unsafe { rd::rd_kafka_header_cnt(self.0.as_ptr()) }
    }

    /// The header at `idx`; `None` past the end, and for a name that is not UTF-8 (which
    /// rdkafka's own lists would panic on).
    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0);
        // SAFETY: a valid list; librdkafka points name and value into it, valid while it lives
        // unchanged, which the borrow of `self` ensures.
        unsafe {
            let err =
                rd::rd_kafka_header_get_all(self.0.as_ptr(), idx, &mut name, &mut value, &mut size);
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                return None;
            }
            Some(Header {
                key: CStr::from_ptr(name).to_str().ok()?,
                value: (!value.is_null())
                    .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
            })
        }
    }
}

/// Records whose headers can be taken as a [`HeaderList`].
pub trait TakeHeaders: Message {
    /// The record's headers, `None` when it has none. A fetched record's parsed list moves out
    /// (`&mut`: nothing still reads it; reading the record's headers again would parse them
    /// anew); an owned record's is copied.
    fn take_headers(&mut self) -> Option<HeaderList>;
}

impl TakeHeaders for BorrowedMessage<'_> {
    fn take_headers(&mut self) -> Option<HeaderList> {
        let mut list = ptr::null_mut();
        // SAFETY: the message is valid while borrowed and nothing borrows its headers (`&mut`);
        // detaching parses them if they were not yet, hands the list over and leaves the message
        // without one, so it is destroyed once, by the list's owner.
        let err = unsafe { rd::rd_kafka_message_detach_headers(self.ptr(), &mut list) };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        NonNull::new(list).map(HeaderList)
    }
}

impl TakeHeaders for OwnedMessage {
    fn take_headers(&mut self) -> Option<HeaderList> {
        self.headers().map(HeaderList::copy_of)
    }
}

/// A record to produce with a [`HeaderList`]: rdkafka's `BaseRecord`, which cannot take one.
/// The topic's name is given in C form, made once by the caller rather than per record.
pub struct Outgoing<'a> {
    pub topic: &'a CStr,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// ms since the epoch (CreateTime); `None`: librdkafka's current time.
    pub timestamp: Option<i64>,
    pub headers: Option<HeaderList>,
}

/// Enqueues `record` as rdkafka's `send` does (librdkafka copies key and payload), with `opaque`
/// for its delivery report. Once enqueued, the headers are librdkafka's (taken out of `record`);
/// on an error `record` is unchanged, to send again (a full queue), and `opaque` is dropped.
pub fn produce<C, Part, P>(
    producer: &P,
    record: &mut Outgoing<'_>,
    opaque: C::DeliveryOpaque,
) -> Result<(), RDKafkaErrorCode>
where
    Part: rdkafka::producer::Partitioner,
    C: ProducerContext<Part>,
    P: Producer<C, Part>,
{
    fn bytes(data: Option<&[u8]>) -> (*mut c_void, usize) {
        data.map_or((ptr::null_mut(), 0), |d| {
            (d.as_ptr() as *mut c_void, d.len())
        })
    }
    let (payload, payload_len) = bytes(record.payload);
    let (key, key_len) = bytes(record.key);
    let headers = record
        .headers
        .as_ref()
        .map_or(ptr::null_mut(), |h| h.0.as_ptr());
    let opaque = opaque.into_ptr();
    // SAFETY: the handle is valid while `producer` lives; the arguments are the type-tagged
    // pairs librdkafka expects, as rdkafka's own `send` passes them; key and payload are copied
    // (RD_KAFKA_MSG_F_COPY) before the call returns.
    let err = unsafe {
        rd::rd_kafka_producev(
            producer.client().native_ptr(),
            RD_KAFKA_VTYPE_TOPIC,
            record.topic.as_ptr(),
            RD_KAFKA_VTYPE_PARTITION,
            record.partition.unwrap_or(-1),
            RD_KAFKA_VTYPE_MSGFLAGS,
            rd::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            payload,
            payload_len,
            RD_KAFKA_VTYPE_KEY,
            key,
            key_len,
            RD_KAFKA_VTYPE_OPAQUE,
            opaque,
            RD_KAFKA_VTYPE_TIMESTAMP,
            record.timestamp.unwrap_or(0),
            RD_KAFKA_VTYPE_HEADERS,
            headers,
            RD_KAFKA_VTYPE_END,
        )
    };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: made by into_ptr above, and librdkafka did not keep it (the call failed).
        drop(unsafe { C::DeliveryOpaque::from_ptr(opaque) });
        return Err(err.into());
    }
    // librdkafka owns the list now and destroys it with the produced record.
    if let Some(list) = record.headers.take() {
        list.into_raw();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{OwnedHeaders, Timestamp};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, Producer as _};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::{KafkaConfig, Role};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Headers with the cases a copy must keep: order, a repeated name, a null and an empty value.
    const CASES: [(&str, Option<&[u8]>); 4] = [
        ("a", Some(b"1")),
        ("b", None),
        ("a", Some(b"2")),
        ("c", Some(b"")),
    ];

    fn pairs<H: Headers>(headers: &H) -> Vec<(&str, Option<&[u8]>)> {
        headers.iter().map(|h| (h.key, h.value)).collect()
    }

    /// The first record of partition 0 of `topic`.
    fn first<'c>(consumer: &'c BaseConsumer, topic: &str) -> BorrowedMessage<'c> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        loop {
            if let Some(read) = consumer.poll(TIMEOUT) {
                return read.unwrap();
            }
        }
    }

    #[test]
    fn a_fetched_records_headers_move_to_a_produced_record() {
        let cluster = MockCluster::new(1).unwrap();
        for topic in ["in", "out"] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        let kafka = KafkaConfig::new(cluster.bootstrap_servers());
        let producer: BaseProducer = kafka
            .client_config(&Role::Producer, "test")
            .create()
            .unwrap();
        let consumer: BaseConsumer = kafka
            .client_config(
                &Role::Consumer {
                    group_id: "g".into(),
                },
                "test",
            )
            .create()
            .unwrap();
        let mut record = Outgoing {
            topic: c"in",
            partition: Some(0),
            key: Some(b"k"),
            payload: Some(b"v"),
            timestamp: Some(1_700_000_000_123),
            headers: Some(CASES.iter().fold(HeaderList::new(), |mut list, (k, v)| {
                list.add(k, *v);
                list
            })),
        };
        produce(&producer, &mut record, ()).unwrap();
        assert!(
            record.headers.is_none(),
            "librdkafka owns the list once enqueued"
        );
        producer.flush(TIMEOUT).unwrap();

        let mut fetched = first(&consumer, "in");
        let taken = fetched.take_headers().expect("headers");
        assert_eq!(pairs(&taken), CASES);
        let mut copy = Outgoing {
            topic: c"out",
            partition: Some(0),
            key: fetched.key(),
            payload: fetched.payload(),
            timestamp: fetched.timestamp().to_millis(),
            headers: Some(taken),
        };
        produce(&producer, &mut copy, ()).unwrap();
        drop(fetched);
        producer.flush(TIMEOUT).unwrap();

        let out = first(&consumer, "out");
        assert_eq!(pairs(out.headers().expect("headers")), CASES);
        assert_eq!(out.key(), Some(&b"k"[..]));
        assert_eq!(out.payload(), Some(&b"v"[..]));
        assert_eq!(out.timestamp(), Timestamp::CreateTime(1_700_000_000_123));
        // A record without headers has none to take, and is produced without any.
        let mut bare =
            OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert!(bare.take_headers().is_none());
    }

    #[test]
    fn a_refused_record_comes_back_whole() {
        let cluster = MockCluster::new(1).unwrap();
        let producer: BaseProducer = KafkaConfig::new(cluster.bootstrap_servers())
            .client_config(&Role::Producer, "test")
            .create()
            .unwrap();
        let mut record = Outgoing {
            topic: c"t",
            partition: Some(0),
            key: None,
            payload: Some(b"v"),
            timestamp: None,
            headers: Some(HeaderList::copy_of(&OwnedHeaders::new().insert(Header {
                key: "a",
                value: Some(b"1"),
            }))),
        };
        // Refused before it is enqueued: above message.max.bytes.
        let big = vec![0u8; 2 << 20];
        record.payload = Some(&big);
        assert_eq!(
            produce(&producer, &mut record, ()),
            Err(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        assert_eq!(
            pairs(record.headers.as_ref().expect("kept")),
            [("a", Some(&b"1"[..]))]
        );
    }

    #[test]
    fn an_owned_records_headers_are_copied_and_a_clone_is_whole() {
        let owned = CASES
            .iter()
            .fold(OwnedHeaders::new(), |list, (key, value)| {
                list.insert(Header { key, value: *value })
            });
        let mut message = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(owned),
        );
        let taken = message.take_headers().expect("headers");
        assert_eq!(pairs(&taken), CASES);
        assert_eq!(pairs(message.headers().expect("kept")), CASES);
        let mut clone = taken.clone();
        drop(taken);
        clone.add("d", Some(b"4"));
        assert_eq!(pairs(&clone)[..4], CASES);
        assert_eq!(pairs(&clone)[4], ("d", Some(&b"4"[..])));
    }
}
