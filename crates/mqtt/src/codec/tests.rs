//! Hand-built byte vectors: one or more for every `DecodeError` and `EncodeError` variant, and the
//! edge cases of the fixed header.

use super::*;

const MAX: usize = 1024 * 1024;

/// A packet with a correct remaining length around `body`.
fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(first);
    put_varint(&mut out, body.len());
    out.put_slice(body);
    out
}

fn field(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// A CONNECT body: "MQTT" level 4, the given flags, keep-alive 60, then `rest`.
fn connect_body(flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[4, flags, 0, 60]);
    for part in rest {
        body.extend_from_slice(&field(part));
    }
    body
}

fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, MAX)
}

fn roundtrip(packet: Packet) {
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf).unwrap();
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(packet));
    assert!(buf.is_empty());
}

#[test]
fn empty_and_partial_input_consume_nothing() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    let whole = frame(0x40, &[0, 7]);
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(decode(&mut buf, MAX), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &whole[..cut]);
    }
    // A remaining length whose continuation bytes have not all arrived.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn consumes_exactly_one_packet() {
    let mut buf = frame(0x40, &[0, 7]);
    buf.extend_from_slice(&frame(0xC0, &[]));
    buf.extend_from_slice(&[0x30]);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PubAck(7))));
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn reserved_packet_types() {
    assert_eq!(
        decode_all(&[0x00, 0x00]),
        Err(DecodeError::ReservedPacketType(0))
    );
    assert_eq!(
        decode_all(&[0xF0, 0x00]),
        Err(DecodeError::ReservedPacketType(15))
    );
    // Detected from the first byte alone.
    assert_eq!(
        decode_all(&[0xF0]),
        Err(DecodeError::ReservedPacketType(15))
    );
}

#[test]
fn malformed_remaining_length() {
    assert_eq!(
        decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Err(DecodeError::MalformedRemainingLength)
    );
    // Fails with the fifth length byte still missing.
    assert_eq!(
        decode_all(&[0x30, 0x80, 0x80, 0x80, 0x80]),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn packet_too_large_before_the_body_arrives() {
    // The largest announcement the header can make (256 MiB); 300 MB cannot even be encoded and is
    // a malformed remaining length (above).
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(DecodeError::PacketTooLarge {
            size: 5 + MAX_REMAINING_LENGTH,
            max: MAX
        })
    );
    assert_eq!(buf.len(), 5, "nothing consumed, nothing allocated");
    // The limit counts the fixed header: a 10-byte packet against a 9-byte limit.
    let mut buf = frame(0x30, &[0, 1, b'a', 1, 2, 3, 4, 5]);
    assert_eq!(buf.len(), 10);
    assert_eq!(
        decode(&mut buf, 9),
        Err(DecodeError::PacketTooLarge { size: 10, max: 9 })
    );
    let mut buf = frame(0x30, &[0, 1, b'a', 1, 2, 3, 4, 5]);
    assert!(matches!(decode(&mut buf, 10), Ok(Some(Packet::Publish(_)))));
}

#[test]
fn invalid_fixed_header_flags() {
    let cases: &[(u8, &'static str, u8, u8)] = &[
        (0x80, "SUBSCRIBE", 0b0010, 0b0000),
        (0x83, "SUBSCRIBE", 0b0010, 0b0011),
        (0xA0, "UNSUBSCRIBE", 0b0010, 0b0000),
        (0x60, "PUBREL", 0b0010, 0b0000),
        (0x11, "CONNECT", 0, 0b0001),
        (0x42, "PUBACK", 0, 0b0010),
        (0xC8, "PINGREQ", 0, 0b1000),
        (0xE1, "DISCONNECT", 0, 0b0001),
    ];
    for &(first, packet, expected, flags) in cases {
        assert_eq!(
            decode_all(&[first, 0]),
            Err(DecodeError::InvalidFlags {
                packet,
                expected,
                flags
            }),
            "first byte {first:#04x}"
        );
    }
    let message = DecodeError::InvalidFlags {
        packet: "SUBSCRIBE",
        expected: 0b0010,
        flags: 0,
    }
    .to_string();
    assert_eq!(
        message,
        "invalid fixed header flags for SUBSCRIBE: expected 0b0010, found 0b0000"
    );
}

#[test]
fn invalid_protocol() {
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidProtocol {
            name: "MQTT".into(),
            level: 5
        })
    );
    let mut body = field(b"MQIsdp");
    body.extend_from_slice(&[4, 0x02, 0, 60, 0, 0]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidProtocol {
            name: "MQIsdp".into(),
            level: 4
        })
    );
    let mut body = field(b"HTTP");
    body.extend_from_slice(&[4]);
    let err = decode_all(&frame(0x10, &body)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported protocol: expected \"MQTT\" level 4 or \"MQIsdp\" level 3, found \"HTTP\" level 4"
    );
}

#[test]
fn level_3_connect_is_decoded() {
    let mut body = field(b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0, 60]);
    body.extend_from_slice(&field(b"dev1"));
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &body)) else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol_level, 3);
    assert_eq!(c.client_id, "dev1");
}

#[test]
fn invalid_qos() {
    // PUBLISH with both QoS bits.
    assert_eq!(decode_all(&[0x36, 0]), Err(DecodeError::InvalidQos(3)));
    // SUBSCRIBE requesting QoS 3, and a requested-QoS byte with reserved bits.
    let mut body = vec![0, 1];
    body.extend_from_slice(&field(b"a/b"));
    body.push(3);
    assert_eq!(
        decode_all(&frame(0x82, &body)),
        Err(DecodeError::InvalidQos(3))
    );
    *body.last_mut().unwrap() = 0x41;
    assert_eq!(
        decode_all(&frame(0x82, &body)),
        Err(DecodeError::InvalidQos(0x41))
    );
    // CONNECT with will QoS 3.
    let body = connect_body(0b0001_1110, &[b"dev1", b"t", b"m"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidQos(3))
    );
}

#[test]
fn dup_with_qos_0() {
    let body = [&field(b"a")[..], b"x"].concat();
    assert_eq!(
        decode_all(&frame(0x38, &body)),
        Err(DecodeError::DupWithQos0)
    );
    // DUP with QoS 1 is fine.
    let body = [&field(b"a")[..], &[0, 9], b"x"].concat();
    assert!(matches!(
        decode_all(&frame(0x3A, &body)),
        Ok(Some(Packet::Publish(Publish {
            dup: true,
            qos: 1,
            pkid: 9,
            ..
        })))
    ));
}

#[test]
fn invalid_utf8() {
    let body = connect_body(0x02, &[b"dev\xFF"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidUtf8 {
            field: "client identifier"
        })
    );
    // An encoded surrogate (U+D800) is not UTF-8 either.
    let body = [&field(b"a/\xED\xA0\x80")[..], b"x"].concat();
    assert_eq!(
        decode_all(&frame(0x30, &body)),
        Err(DecodeError::InvalidUtf8 {
            field: "topic name"
        })
    );
    let body = connect_body(0x82, &[b"dev1", b"\xC3"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidUtf8 { field: "user name" })
    );
}

#[test]
fn null_character() {
    let body = [&field(b"a/\0/b")[..], b"x"].concat();
    assert_eq!(
        decode_all(&frame(0x30, &body)),
        Err(DecodeError::NullCharacter {
            field: "topic name"
        })
    );
    let body = connect_body(0x02, &[b"d\0"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::NullCharacter {
            field: "client identifier"
        })
    );
}

#[test]
fn empty_topics() {
    let body = [&field(b"")[..], b"x"].concat();
    assert_eq!(
        decode_all(&frame(0x30, &body)),
        Err(DecodeError::EmptyTopic {
            field: "topic name"
        })
    );
    let body = connect_body(0x06, &[b"dev1", b"", b"bye"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::EmptyTopic {
            field: "will topic"
        })
    );
    let body = [&[0, 1][..], &field(b""), &[1]].concat();
    assert_eq!(
        decode_all(&frame(0x82, &body)),
        Err(DecodeError::EmptyTopic {
            field: "topic filter"
        })
    );
    let body = [&[0, 1][..], &field(b"")].concat();
    assert_eq!(
        decode_all(&frame(0xA2, &body)),
        Err(DecodeError::EmptyTopic {
            field: "topic filter"
        })
    );
}

#[test]
fn wildcard_in_topic_name() {
    for topic in ["a/+/b", "a/#", "+", "devices/dev+1/messages/events/"] {
        let body = [&field(topic.as_bytes())[..], b"x"].concat();
        assert_eq!(
            decode_all(&frame(0x30, &body)),
            Err(DecodeError::WildcardInTopic {
                field: "topic name",
                topic: topic.into()
            })
        );
    }
    let body = connect_body(0x06, &[b"dev1", b"will/#", b"bye"]);
    assert!(matches!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::WildcardInTopic {
            field: "will topic",
            ..
        })
    ));
    // Wildcards in filters are the business of the topic policy, not of the codec.
    let body = [
        &[0, 1][..],
        &field(b"devices/a+b/messages/devicebound/#"),
        &[1],
    ]
    .concat();
    assert!(matches!(
        decode_all(&frame(0x82, &body)),
        Ok(Some(Packet::Subscribe(_)))
    ));
}

#[test]
fn zero_packet_id() {
    for (first, packet) in [
        (0x40, "PUBACK"),
        (0x50, "PUBREC"),
        (0x62, "PUBREL"),
        (0x70, "PUBCOMP"),
        (0xB0, "UNSUBACK"),
    ] {
        assert_eq!(
            decode_all(&frame(first, &[0, 0])),
            Err(DecodeError::ZeroPacketId { packet })
        );
    }
    let body = [&field(b"a")[..], &[0, 0], b"x"].concat();
    assert_eq!(
        decode_all(&frame(0x32, &body)),
        Err(DecodeError::ZeroPacketId { packet: "PUBLISH" })
    );
    let body = [&[0, 0][..], &field(b"a"), &[1]].concat();
    assert_eq!(
        decode_all(&frame(0x82, &body)),
        Err(DecodeError::ZeroPacketId {
            packet: "SUBSCRIBE"
        })
    );
    assert_eq!(
        decode_all(&frame(0x90, &[0, 0, 1])),
        Err(DecodeError::ZeroPacketId { packet: "SUBACK" })
    );
    let body = [&[0, 0][..], &field(b"a")].concat();
    assert_eq!(
        decode_all(&frame(0xA2, &body)),
        Err(DecodeError::ZeroPacketId {
            packet: "UNSUBSCRIBE"
        })
    );
    // QoS 0 carries no packet id: the two bytes after the topic are payload.
    let body = [&field(b"a")[..], &[0, 0]].concat();
    assert!(matches!(
        decode_all(&frame(0x30, &body)),
        Ok(Some(Packet::Publish(Publish { pkid: 0, .. })))
    ));
}

#[test]
fn empty_subscription() {
    assert_eq!(
        decode_all(&frame(0x82, &[0, 1])),
        Err(DecodeError::EmptySubscription {
            packet: "SUBSCRIBE"
        })
    );
    assert_eq!(
        decode_all(&frame(0xA2, &[0, 1])),
        Err(DecodeError::EmptySubscription {
            packet: "UNSUBSCRIBE"
        })
    );
    assert_eq!(
        decode_all(&frame(0x90, &[0, 1])),
        Err(DecodeError::EmptySubscription { packet: "SUBACK" })
    );
}

#[test]
fn connect_flag_rules() {
    let body = connect_body(0x03, &[b"dev1"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::ConnectReservedFlag)
    );
    // Will QoS 1 without the will flag.
    let body = connect_body(0b0000_1010, &[b"dev1"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidWillFlags { flags: 0b0000_1010 })
    );
    // Will retain without the will flag.
    let body = connect_body(0b0010_0010, &[b"dev1"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::InvalidWillFlags { flags: 0b0010_0010 })
    );
    let body = connect_body(0x42, &[b"dev1", b"secret"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::PasswordWithoutUsername)
    );
}

#[test]
fn connect_with_everything() {
    let body = connect_body(0b1110_1100, &[b"dev1", b"will/t", b"bye", b"user", b"pw"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Ok(Some(Packet::Connect(Connect {
            protocol_level: 4,
            client_id: "dev1".into(),
            clean_session: false,
            keep_alive: 60,
            username: Some("user".into()),
            password: Some(b"pw".to_vec()),
            will: Some(Will {
                topic: "will/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: true,
            }),
        })))
    );
}

#[test]
fn connack_rules() {
    assert_eq!(
        decode_all(&frame(0x20, &[0x02, 0])),
        Err(DecodeError::InvalidConnAckFlags(0x02))
    );
    assert_eq!(
        decode_all(&frame(0x20, &[0, 6])),
        Err(DecodeError::InvalidConnAckCode(6))
    );
    assert_eq!(
        decode_all(&frame(0x20, &[1, 0])),
        Ok(Some(Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0
        })))
    );
}

#[test]
fn suback_codes() {
    assert_eq!(
        decode_all(&frame(0x90, &[0, 1, 0, 3])),
        Err(DecodeError::InvalidSubAckCode(3))
    );
    assert_eq!(
        decode_all(&frame(0x90, &[0, 1, 0, 1, 2, 0x80])),
        Ok(Some(Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![0, 1, 2, 0x80]
        })))
    );
}

#[test]
fn truncated_fields() {
    assert_eq!(
        decode_all(&frame(0x40, &[0])),
        Err(DecodeError::Truncated {
            field: "packet identifier"
        })
    );
    // A string whose length prefix points past the end of the packet.
    let mut body = connect_body(0x02, &[]);
    body.extend_from_slice(&[0, 10, b'd']);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::Truncated {
            field: "client identifier"
        })
    );
    assert_eq!(
        decode_all(&frame(0x10, &field(b"MQTT"))),
        Err(DecodeError::Truncated {
            field: "protocol level"
        })
    );
    // Username flag set, user name missing.
    let body = connect_body(0x82, &[b"dev1"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::Truncated { field: "user name" })
    );
    // A SUBSCRIBE filter without its requested QoS.
    let body = [&[0, 1][..], &field(b"a")].concat();
    assert_eq!(
        decode_all(&frame(0x82, &body)),
        Err(DecodeError::Truncated {
            field: "requested QoS"
        })
    );
    assert_eq!(
        decode_all(&frame(0x30, &[0])),
        Err(DecodeError::Truncated {
            field: "topic name"
        })
    );
    assert_eq!(
        decode_all(&frame(0x20, &[0])),
        Err(DecodeError::Truncated {
            field: "return code"
        })
    );
}

#[test]
fn trailing_bytes() {
    assert_eq!(
        decode_all(&frame(0x40, &[0, 1, 9])),
        Err(DecodeError::TrailingBytes {
            packet: "PUBACK",
            extra: 1
        })
    );
    assert_eq!(
        decode_all(&frame(0xC0, &[0])),
        Err(DecodeError::TrailingBytes {
            packet: "PINGREQ",
            extra: 1
        })
    );
    assert_eq!(
        decode_all(&frame(0xE0, &[1, 2])),
        Err(DecodeError::TrailingBytes {
            packet: "DISCONNECT",
            extra: 2
        })
    );
    let body = connect_body(0x02, &[b"dev1", b"junk"]);
    assert_eq!(
        decode_all(&frame(0x10, &body)),
        Err(DecodeError::TrailingBytes {
            packet: "CONNECT",
            extra: 6
        })
    );
    assert_eq!(
        decode_all(&frame(0x20, &[0, 0, 0])),
        Err(DecodeError::TrailingBytes {
            packet: "CONNACK",
            extra: 1
        })
    );
}

#[test]
fn body_errors_consume_the_packet() {
    let mut buf = frame(0x40, &[0, 0]);
    buf.extend_from_slice(&frame(0xC0, &[]));
    assert!(decode(&mut buf, MAX).is_err());
    assert_eq!(&buf[..], &[0xC0, 0]);
}

#[test]
fn roundtrips_of_every_type() {
    roundtrip(Packet::Connect(Connect {
        protocol_level: 3,
        client_id: String::new(),
        clean_session: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
    }));
    roundtrip(Packet::ConnAck(ConnAck {
        session_present: false,
        code: CONNACK_NOT_AUTHORIZED,
    }));
    roundtrip(Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: true,
        topic: "a/b".into(),
        pkid: 0,
        payload: Bytes::new(),
    }));
    roundtrip(Packet::PubAck(u16::MAX));
    roundtrip(Packet::PubRec(1));
    roundtrip(Packet::PubRel(2));
    roundtrip(Packet::PubComp(3));
    roundtrip(Packet::Subscribe(Subscribe {
        pkid: 4,
        filters: vec![("#".into(), 2), ("$iothub/twin/res/#".into(), 1)],
    }));
    roundtrip(Packet::SubAck(SubAck {
        pkid: 4,
        return_codes: vec![SUBACK_FAILURE, 1],
    }));
    roundtrip(Packet::Unsubscribe(Unsubscribe {
        pkid: 5,
        filters: vec!["a/+".into()],
    }));
    roundtrip(Packet::UnsubAck(5));
    roundtrip(Packet::PingReq);
    roundtrip(Packet::PingResp);
    roundtrip(Packet::Disconnect);
}

#[test]
fn remaining_length_boundaries() {
    for len in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let topic_field = 3; // "a" with its length prefix
        let payload = Bytes::from(vec![7u8; len.saturating_sub(topic_field)]);
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "a".into(),
            pkid: 0,
            payload,
        });
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf).unwrap();
        assert_eq!(decode(&mut buf, usize::MAX).unwrap(), Some(packet));
    }
    // Non-minimal length encodings are accepted (MQTT 3.1.1 does not forbid them).
    assert_eq!(decode_all(&[0xC0, 0x80, 0x00]), Ok(Some(Packet::PingReq)));
}

#[test]
fn known_encodings() {
    let mut buf = BytesMut::new();
    encode(
        &Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
        }),
        &mut buf,
    )
    .unwrap();
    encode(
        &Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![1, 0x80],
        }),
        &mut buf,
    )
    .unwrap();
    encode(&Packet::PingResp, &mut buf).unwrap();
    encode(&Packet::PubRel(0x0102), &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        &[0x20, 2, 1, 0, 0x90, 4, 0, 1, 1, 0x80, 0xD0, 0, 0x62, 2, 1, 2]
    );
}

fn publish(topic: &str, qos: u8, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: Bytes::from_static(b"x"),
    }
}

fn encode_err(packet: Packet) -> EncodeError {
    let mut buf = BytesMut::new();
    let err = encode(&packet, &mut buf).unwrap_err();
    assert!(buf.is_empty(), "nothing written on error");
    err
}

#[test]
fn encode_errors() {
    let long = "a".repeat(MAX_FIELD_LENGTH + 1);
    assert_eq!(
        encode_err(Packet::Publish(publish(&long, 0, 0))),
        EncodeError::FieldTooLong {
            field: "topic name",
            len: 65_536
        }
    );
    let connect = Connect {
        protocol_level: 4,
        client_id: "dev1".into(),
        clean_session: true,
        keep_alive: 60,
        username: None,
        password: None,
        will: None,
    };
    assert_eq!(
        encode_err(Packet::Connect(Connect {
            username: Some("u".into()),
            password: Some(vec![0; 70_000]),
            ..connect.clone()
        })),
        EncodeError::FieldTooLong {
            field: "password",
            len: 70_000
        }
    );
    assert_eq!(
        encode_err(Packet::Connect(Connect {
            password: Some(vec![1]),
            ..connect.clone()
        })),
        EncodeError::PasswordWithoutUsername
    );
    assert_eq!(
        encode_err(Packet::Connect(Connect {
            protocol_level: 5,
            ..connect.clone()
        })),
        EncodeError::UnsupportedProtocolLevel(5)
    );
    assert_eq!(
        encode_err(Packet::Connect(Connect {
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::new(),
                qos: 3,
                retain: false
            }),
            ..connect.clone()
        })),
        EncodeError::InvalidQos(3)
    );
    assert_eq!(
        encode_err(Packet::Connect(Connect {
            client_id: "a\0".into(),
            ..connect
        })),
        EncodeError::NullCharacter {
            field: "client identifier"
        }
    );
    assert_eq!(
        encode_err(Packet::Publish(publish("a", 3, 1))),
        EncodeError::InvalidQos(3)
    );
    assert_eq!(
        encode_err(Packet::Publish(Publish {
            dup: true,
            ..publish("a", 0, 0)
        })),
        EncodeError::DupWithQos0
    );
    assert_eq!(
        encode_err(Packet::Publish(publish("", 0, 0))),
        EncodeError::EmptyTopic {
            field: "topic name"
        }
    );
    assert_eq!(
        encode_err(Packet::Publish(publish("a", 1, 0))),
        EncodeError::ZeroPacketId { packet: "PUBLISH" }
    );
    assert_eq!(
        encode_err(Packet::PubAck(0)),
        EncodeError::ZeroPacketId { packet: "PUBACK" }
    );
    assert_eq!(
        encode_err(Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![]
        })),
        EncodeError::EmptySubscription {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        encode_err(Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![("a".into(), 3)]
        })),
        EncodeError::InvalidQos(3)
    );
    assert_eq!(
        encode_err(Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            filters: vec![]
        })),
        EncodeError::EmptySubscription {
            packet: "UNSUBSCRIBE"
        }
    );
    assert_eq!(
        encode_err(Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![0x81]
        })),
        EncodeError::InvalidSubAckCode(0x81)
    );
    assert_eq!(
        encode_err(Packet::ConnAck(ConnAck {
            session_present: false,
            code: 6
        })),
        EncodeError::InvalidConnAckCode(6)
    );
}

#[test]
fn encode_refuses_oversized_packets() {
    // Topic "a" (3 bytes) + packet id (2) + payload = one byte over the limit. The zeroed buffer is
    // lazily mapped, and nothing is written.
    let payload = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH - 4]);
    let packet = Packet::Publish(Publish {
        payload,
        ..publish("a", 1, 1)
    });
    assert_eq!(
        encode_err(packet),
        EncodeError::PacketTooLarge {
            size: MAX_REMAINING_LENGTH + 1
        }
    );
}

#[test]
fn encoder_allows_wildcards_in_device_ids() {
    // C2D to a device whose id contains '+': the encoder writes it; a strict decoder refuses it.
    let mut buf = BytesMut::new();
    encode(
        &Packet::Publish(publish("devices/a+b/messages/devicebound/", 1, 1)),
        &mut buf,
    )
    .unwrap();
    assert!(matches!(
        decode(&mut buf, MAX),
        Err(DecodeError::WildcardInTopic { .. })
    ));
}

#[test]
fn packet_names() {
    assert_eq!(Packet::PubRel(1).name(), "PUBREL");
    assert_eq!(Packet::Disconnect.name(), "DISCONNECT");
}

#[test]
fn connect_debug_redacts_the_password() {
    let connect = Connect {
        protocol_level: 4,
        client_id: "dev1".into(),
        clean_session: false,
        keep_alive: 60,
        username: Some("hub/dev1/?api-version=2019-10-01".into()),
        password: Some(b"SharedAccessSignature sr=hub&sig=secret".to_vec()),
        will: None,
    };
    let shown = format!("{connect:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("<39 bytes redacted>"), "{shown}");
    assert!(shown.contains("dev1"));
}
