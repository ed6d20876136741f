//! Property tests: what must hold for every input, not only for the hand-picked ones.
//!
//! - every valid packet survives encode-then-decode unchanged;
//! - decoding arbitrary or corrupted bytes never panics and always makes progress or stops;
//! - a valid stream split at any byte boundary decodes to the same packets;
//! - property bags survive encode-then-parse, and the topic policy never lets a device reach
//!   another device's topics.

use bytes::{Bytes, BytesMut};
use iothub_mqtt::codec::{
    decode, encode, ConnAck, Connect, Packet, Publish, SubAck, Subscribe, Unsubscribe, Will,
    SUBACK_FAILURE,
};
use iothub_mqtt::topics::{
    device_may_publish, device_may_subscribe, encode_property_bag, filter_matches,
    parse_property_bag, DeviceTopic,
};
use proptest::prelude::*;

const MAX: usize = 1024 * 1024;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Any string without U+0000 (which MQTT strings may not carry).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..max)
        .prop_map(String::from_iter)
}

fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        any::<char>().prop_filter("no NUL or wildcard", |c| !matches!(c, '\0' | '+' | '#')),
        1..24,
    )
    .prop_map(String::from_iter)
}

fn topic_filter() -> impl Strategy<Value = String> {
    text(24).prop_filter("non-empty", |s| !s.is_empty())
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn connect() -> impl Strategy<Value = Connect> {
    let will = prop::option::of((topic_name(), payload(), 0u8..=2, any::<bool>()).prop_map(
        |(topic, payload, qos, retain)| Will {
            topic,
            payload,
            qos,
            retain,
        },
    ));
    let credentials = prop::option::of((
        text(16),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    ));
    (
        prop_oneof![Just(3u8), Just(4u8)],
        text(16),
        any::<bool>(),
        any::<u16>(),
        credentials,
        will,
    )
        .prop_map(
            |(protocol_level, client_id, clean_session, keep_alive, credentials, will)| {
                let (username, password) = match credentials {
                    Some((u, p)) => (Some(u), p),
                    None => (None, None),
                };
                Connect {
                    protocol_level,
                    client_id,
                    clean_session,
                    keep_alive,
                    username,
                    password,
                    will,
                }
            },
        )
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        0u8..=2,
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        pkid(),
        payload(),
    )
        .prop_map(|(qos, dup, retain, topic, pkid, payload)| Publish {
            dup: dup && qos > 0,
            qos,
            retain,
            topic,
            pkid: if qos > 0 { pkid } else { 0 },
            payload,
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(Packet::Connect),
        (any::<bool>(), 0u8..=5).prop_map(|(session_present, code)| Packet::ConnAck(ConnAck {
            session_present,
            code
        })),
        publish().prop_map(Packet::Publish),
        pkid().prop_map(Packet::PubAck),
        pkid().prop_map(Packet::PubRec),
        pkid().prop_map(Packet::PubRel),
        pkid().prop_map(Packet::PubComp),
        (
            pkid(),
            prop::collection::vec((topic_filter(), 0u8..=2), 1..5)
        )
            .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
        (
            pkid(),
            prop::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(2), Just(SUBACK_FAILURE)],
                1..5
            )
        )
            .prop_map(|(pkid, return_codes)| Packet::SubAck(SubAck { pkid, return_codes })),
        (pkid(), prop::collection::vec(topic_filter(), 1..5))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
        pkid().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// Decodes until the buffer needs more bytes or an error; asserts progress on every packet.
fn drain(buf: &mut BytesMut, max: usize) -> (Vec<Packet>, bool) {
    let mut packets = Vec::new();
    loop {
        let before = buf.len();
        match decode(buf, max) {
            Ok(Some(p)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                packets.push(p);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return (packets, false);
            }
            Err(_) => return (packets, true),
        }
    }
}

/// An Azure device id: 1 to 16 characters from the set Azure allows.
fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9\\-.+%_#*?!(),=@$']{1,16}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encode_then_decode_is_identity(p in packet()) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf).unwrap();
        let whole = buf.clone();
        // Every strict prefix needs more bytes and consumes nothing.
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(decode(&mut partial, MAX), Ok(None));
            prop_assert_eq!(partial.len(), cut);
        }
        prop_assert_eq!(decode(&mut buf, MAX).unwrap(), Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..1024,
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, max);
    }

    #[test]
    fn decode_never_panics_on_corrupted_packets(
        p in packet(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf).unwrap();
        for (index, byte) in edits {
            let i = index.index(buf.len());
            buf[i] = byte;
        }
        drain(&mut buf, MAX);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(packets in prop::collection::vec(packet(), 1..5)) {
        let mut stream = BytesMut::new();
        for p in &packets {
            encode(p, &mut stream).unwrap();
        }
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            let (mut got, failed) = drain(&mut buf, MAX);
            prop_assert!(!failed);
            buf.extend_from_slice(&stream[cut..]);
            let (rest, failed) = drain(&mut buf, MAX);
            prop_assert!(!failed);
            got.extend(rest);
            prop_assert_eq!(&got, &packets);
            prop_assert!(buf.is_empty());
        }
        // And byte by byte.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in stream.iter() {
            buf.extend_from_slice(&[*byte]);
            let (some, failed) = drain(&mut buf, MAX);
            prop_assert!(!failed);
            got.extend(some);
        }
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn property_bags_survive_encode_then_parse(
        system in prop::collection::btree_map(text(8), prop::option::of(text(8)), 0..6),
        custom in prop::collection::btree_map(
            text(8).prop_filter("a custom name", |k| !k.is_empty() && !k.starts_with("$.")),
            prop::option::of(text(8)),
            0..6,
        ),
    ) {
        let system: Vec<_> = system.into_iter().map(|(k, v)| (format!("$.{k}"), v)).collect();
        let custom: Vec<_> = custom.into_iter().collect();
        let bag = encode_property_bag(&system, &custom);
        // One path segment: nothing the SDK would split on survives unencoded.
        prop_assert!(!bag.contains('/'));
        let parsed = parse_property_bag(&bag).unwrap();
        let mut got_system = parsed.system.clone();
        got_system.sort();
        let mut want_system = system.clone();
        want_system.sort();
        prop_assert_eq!(got_system, want_system);
        prop_assert_eq!(&parsed.custom, &custom); // sorted by key, as a BTreeMap is
        prop_assert_eq!(encode_property_bag(&parsed.system, &parsed.custom), bag);
    }

    #[test]
    fn topic_functions_never_panic(a in ".{0,40}", b in ".{0,40}") {
        let _ = parse_property_bag(&a);
        let _ = DeviceTopic::parse(&a);
        let _ = filter_matches(&a, &b);
        let _ = device_may_subscribe(&a, &b);
        let _ = device_may_publish(&a, &b);
    }

    #[test]
    fn plain_topics_match_themselves_and_hash(topic in "[a-z$/]{1,20}") {
        prop_assert!(filter_matches(&topic, &topic));
        prop_assert_eq!(filter_matches("#", &topic), !topic.starts_with('$'));
    }

    #[test]
    fn a_device_publishes_only_under_its_own_id(id in device_id(), other in device_id(), bag in "[a-z=&%0-9]{0,12}") {
        let own = format!("devices/{id}/messages/events/{bag}");
        prop_assert_eq!(
            device_may_publish(&id, &own),
            Ok(DeviceTopic::Telemetry { device_id: &id, module_id: None, bag: &bag })
        );
        let foreign = format!("devices/{other}/messages/events/{bag}");
        prop_assert_eq!(device_may_publish(&id, &foreign).is_ok(), id == other);
    }

    #[test]
    fn an_allowed_subscription_never_reaches_another_device(
        id in device_id(),
        other in device_id(),
        filter in prop_oneof![
            "[a-z+#/]{0,12}".prop_map(|s| s),
            "[a-z+#/]{0,12}".prop_map(|s| format!("devices/{s}")),
        ],
        suffix in "[a-z+#/]{0,8}",
    ) {
        prop_assume!(id != other && id != "+");
        let filters = [
            filter.clone(),
            format!("devices/{id}/messages/devicebound/{suffix}"),
            format!("devices/{other}/messages/devicebound/{suffix}"),
            format!("devices/+/messages/devicebound/{suffix}"),
        ];
        for f in &filters {
            if device_may_subscribe(&id, f).is_ok() {
                let theirs = format!("devices/{other}/messages/devicebound/{suffix}");
                prop_assert!(!filter_matches(f, &theirs), "{} reaches {}", f, theirs);
                let events = format!("devices/{id}/messages/events/");
                prop_assert!(!filter_matches(f, &events), "{} reaches {}", f, events);
            }
        }
    }
}
