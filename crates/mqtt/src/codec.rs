//! MQTT 3.1.1 framing for the device gateway: bytes in, packets out, and back.
//!
//! Why our own codec: no maintained crate fits a plain tokio server that owns its TLS verifier
//! (see `docs/azure-wire.md#mqtt-codec`), and the part we need is small: the fourteen packet types of
//! MQTT 3.1.1 (protocol level 4, plus the level 3 `MQIsdp` CONNECT so that the gateway can refuse it
//! with CONNACK 1 instead of dropping the connection).
//!
//! Why no I/O: the gateway's connection loop owns the socket and the buffer; this module owns only
//! the rules of the wire, so that every rule can be tested with hand-built bytes and property tests.
//!
//! Why so strict: the hub faces untrusted devices. The announced packet size is checked against the
//! caller's limit as soon as the fixed header is complete, before a byte of the body is awaited or
//! allocated, and every rule of the specification that makes a packet malformed is a distinct
//! [`DecodeError`], so that a refusal can say what was expected and what was found. Nothing in here
//! panics on any input.
//!
//! What is deliberately *not* checked here: the placement of wildcards inside topic filters and the
//! meaning of topics. Azure device ids may contain `+` and `#`, which are literal inside the id
//! level of a filter such as `devices/a+b/messages/devicebound/#`; which filters a device may use
//! is the business of [`crate::topics`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// CONNACK return code: connection accepted.
pub const CONNACK_ACCEPTED: u8 = 0;
/// CONNACK return code: the server does not support the requested protocol level.
pub const CONNACK_UNACCEPTABLE_PROTOCOL: u8 = 1;
/// CONNACK return code: the client identifier is not allowed.
pub const CONNACK_IDENTIFIER_REJECTED: u8 = 2;
/// CONNACK return code: the service is unavailable (clients retry).
pub const CONNACK_SERVER_UNAVAILABLE: u8 = 3;
/// CONNACK return code: malformed user name or password.
pub const CONNACK_BAD_CREDENTIALS: u8 = 4;
/// CONNACK return code: the client is not authorized (Azure's answer to bad device credentials).
pub const CONNACK_NOT_AUTHORIZED: u8 = 5;
/// SUBACK return code for a refused subscription.
pub const SUBACK_FAILURE: u8 = 0x80;

/// The largest remaining length the 4-byte variable length encoding can express.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// The largest length of a length-prefixed string or binary field.
pub const MAX_FIELD_LENGTH: usize = 65_535;

/// One MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(u16),
    /// QoS 2 flow: decoded so that the server can detect and refuse it.
    PubRec(u16),
    /// QoS 2 flow: decoded so that the server can detect and refuse it.
    PubRel(u16),
    /// QoS 2 flow: decoded so that the server can detect and refuse it.
    PubComp(u16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The packet type's name as the specification spells it, for logs and refusals.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT. `protocol_level` is 4 (`MQTT`) or 3 (`MQIsdp`); the protocol name follows from it.
/// Its `Debug` output shows the password's length only: for SAS devices it is a bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol_level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self
            .password
            .as_ref()
            .map(|p| format!("<{} bytes redacted>", p.len()));
        f.debug_struct("Connect")
            .field("protocol_level", &self.protocol_level)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &password)
            .field("will", &self.will)
            .finish()
    }
}

/// The Will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
}

/// PUBLISH. `pkid` is 0 for QoS 0 (and is then neither encoded nor decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub payload: Bytes,
}

/// SUBSCRIBE: topic filters with their requested QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, u8)>,
}

/// SUBACK: one return code (0, 1, 2 or [`SUBACK_FAILURE`]) per filter of the SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub return_codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

/// Why a byte stream is not valid MQTT 3.1.1. Every error is final: the specification requires
/// the server to close the connection (MQTT 3.1.1 §4.8).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("reserved packet type {0}: expected a type from 1 (CONNECT) to 14 (DISCONNECT)")]
    ReservedPacketType(u8),
    #[error(
        "malformed remaining length: expected at most 4 bytes, found a continuation bit in the 4th"
    )]
    MalformedRemainingLength,
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    #[error(
        "invalid fixed header flags for {packet}: expected {expected:#06b}, found {flags:#06b}"
    )]
    InvalidFlags {
        packet: &'static str,
        expected: u8,
        flags: u8,
    },
    #[error(
        "unsupported protocol: expected \"MQTT\" level 4 or \"MQIsdp\" level 3, found {name:?} level {level}"
    )]
    InvalidProtocol { name: String, level: u8 },
    #[error("invalid QoS {0}: expected 0, 1 or 2")]
    InvalidQos(u8),
    #[error("PUBLISH with QoS 0 has the DUP flag set: expected DUP 0 for QoS 0")]
    DupWithQos0,
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field} contains U+0000: expected a string without null characters")]
    NullCharacter { field: &'static str },
    #[error("{field} is empty: expected at least one character")]
    EmptyTopic { field: &'static str },
    #[error("{field} {topic:?} contains a wildcard: expected a topic name without '+' or '#'")]
    WildcardInTopic { field: &'static str, topic: String },
    #[error("{packet} has packet identifier 0: expected a non-zero packet identifier")]
    ZeroPacketId { packet: &'static str },
    #[error("{packet} has an empty payload: expected at least one topic filter or return code")]
    EmptySubscription { packet: &'static str },
    #[error("CONNECT flags have the reserved bit 0 set: expected 0")]
    ConnectReservedFlag,
    #[error("CONNECT flags {flags:#010b} set will QoS or will retain without the will flag: expected both 0")]
    InvalidWillFlags { flags: u8 },
    #[error("CONNECT sets the password flag without the user name flag: expected a user name with any password")]
    PasswordWithoutUsername,
    #[error("CONNACK acknowledge flags {0:#010b}: expected bits 7-1 to be 0")]
    InvalidConnAckFlags(u8),
    #[error("CONNACK return code {0}: expected 0 to 5")]
    InvalidConnAckCode(u8),
    #[error("SUBACK return code {0:#04x}: expected 0x00, 0x01, 0x02 or 0x80")]
    InvalidSubAckCode(u8),
    #[error("truncated {field}: the packet ends before it is complete")]
    Truncated { field: &'static str },
    #[error("{packet} has {extra} trailing bytes after its last field: expected none")]
    TrailingBytes { packet: &'static str, extra: usize },
}

/// Why a packet cannot be put on the wire. Checked before anything is written to the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes: at most 65535 fit in an MQTT length-prefixed field")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("packet body of {size} bytes: at most 268435455 fit in an MQTT packet")]
    PacketTooLarge { size: usize },
    #[error("invalid QoS {0}: expected 0, 1 or 2")]
    InvalidQos(u8),
    #[error("PUBLISH with QoS 0 and the DUP flag: expected DUP 0 for QoS 0")]
    DupWithQos0,
    #[error("{packet} with packet identifier 0: expected a non-zero packet identifier")]
    ZeroPacketId { packet: &'static str },
    #[error("{packet} with no entries: expected at least one topic filter or return code")]
    EmptySubscription { packet: &'static str },
    #[error("{field} contains U+0000: expected a string without null characters")]
    NullCharacter { field: &'static str },
    #[error("{field} is empty: expected at least one character")]
    EmptyTopic { field: &'static str },
    #[error("CONNECT with a password and no user name: MQTT 3.1.1 requires the user name")]
    PasswordWithoutUsername,
    #[error("unsupported protocol level {0}: expected 3 (MQIsdp) or 4 (MQTT)")]
    UnsupportedProtocolLevel(u8),
    #[error("CONNACK return code {0}: expected 0 to 5")]
    InvalidConnAckCode(u8),
    #[error("SUBACK return code {0:#04x}: expected 0x00, 0x01, 0x02 or 0x80")]
    InvalidSubAckCode(u8),
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

fn type_name(kind: u8) -> &'static str {
    match kind {
        CONNECT => "CONNECT",
        CONNACK => "CONNACK",
        PUBLISH => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBREL => "PUBREL",
        PUBCOMP => "PUBCOMP",
        SUBSCRIBE => "SUBSCRIBE",
        SUBACK => "SUBACK",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        UNSUBACK => "UNSUBACK",
        PINGREQ => "PINGREQ",
        PINGRESP => "PINGRESP",
        DISCONNECT => "DISCONNECT",
        _ => "reserved",
    }
}

/// Checks the fixed header's first byte: a known type with the flags the specification fixes.
fn check_first_byte(first: u8) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let expected = match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQos(qos));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQos0);
            }
            return Ok(());
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        CONNECT..=DISCONNECT => 0,
        _ => return Err(DecodeError::ReservedPacketType(kind)),
    };
    if flags != expected {
        return Err(DecodeError::InvalidFlags {
            packet: type_name(kind),
            expected,
            flags,
        });
    }
    Ok(())
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet; nothing is consumed then. On
/// success exactly one packet's bytes are consumed. The total size (fixed header included) is
/// checked against `max_packet_size` as soon as the remaining length is complete, so an oversized
/// announcement fails before its body arrives. After an error the connection must be closed: errors
/// in the fixed header consume nothing, errors in the body consume the offending packet.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first)?;

    let mut remaining: usize = 0;
    let mut header_len: usize = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len == 5 {
            return Err(DecodeError::MalformedRemainingLength);
        }
    }

    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    decode_body(first, frame).map(Some)
}

/// A cursor over a packet body whose every read is checked.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Truncated { field });
        }
        Ok(self.buf.get_u16())
    }

    fn pkid(&mut self, packet: &'static str) -> Result<u16, DecodeError> {
        match self.u16("packet identifier")? {
            0 => Err(DecodeError::ZeroPacketId { packet }),
            id => Ok(id),
        }
    }

    fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if self.buf.len() < len {
            return Err(DecodeError::Truncated { field });
        }
        Ok(self.buf.split_to(len))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.binary(field)?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        if text.contains('\0') {
            return Err(DecodeError::NullCharacter { field });
        }
        Ok(text.to_owned())
    }

    fn topic_name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let topic = self.string(field)?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic { field });
        }
        if topic.contains(['+', '#']) {
            return Err(DecodeError::WildcardInTopic { field, topic });
        }
        Ok(topic)
    }

    fn topic_filter(&mut self) -> Result<String, DecodeError> {
        let field = "topic filter";
        let filter = self.string(field)?;
        if filter.is_empty() {
            return Err(DecodeError::EmptyTopic { field });
        }
        Ok(filter)
    }

    fn has_more(&self) -> bool {
        !self.buf.is_empty()
    }

    fn rest(self) -> Bytes {
        self.buf
    }

    fn finish(self, packet: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { packet, extra }),
        }
    }
}

fn decode_body(first: u8, body: Bytes) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let mut r = Reader { buf: body };
    let packet = match kind {
        CONNECT => Packet::Connect(decode_connect(&mut r)?),
        CONNACK => {
            let flags = r.u8("acknowledge flags")?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::InvalidConnAckFlags(flags));
            }
            let code = r.u8("return code")?;
            if code > CONNACK_NOT_AUTHORIZED {
                return Err(DecodeError::InvalidConnAckCode(code));
            }
            Packet::ConnAck(ConnAck {
                session_present: flags == 1,
                code,
            })
        }
        PUBLISH => {
            let qos = (first >> 1) & 0b11;
            let topic = r.topic_name("topic name")?;
            let pkid = if qos > 0 { r.pkid("PUBLISH")? } else { 0 };
            return Ok(Packet::Publish(Publish {
                dup: first & 0b1000 != 0,
                qos,
                retain: first & 1 != 0,
                topic,
                pkid,
                payload: r.rest(),
            }));
        }
        PUBACK => Packet::PubAck(r.pkid("PUBACK")?),
        PUBREC => Packet::PubRec(r.pkid("PUBREC")?),
        PUBREL => Packet::PubRel(r.pkid("PUBREL")?),
        PUBCOMP => Packet::PubComp(r.pkid("PUBCOMP")?),
        UNSUBACK => Packet::UnsubAck(r.pkid("UNSUBACK")?),
        SUBSCRIBE => {
            let pkid = r.pkid("SUBSCRIBE")?;
            let mut filters = Vec::new();
            while r.has_more() {
                let filter = r.topic_filter()?;
                let qos = r.u8("requested QoS")?;
                if qos > 2 {
                    return Err(DecodeError::InvalidQos(qos));
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptySubscription {
                    packet: "SUBSCRIBE",
                });
            }
            Packet::Subscribe(Subscribe { pkid, filters })
        }
        SUBACK => {
            let pkid = r.pkid("SUBACK")?;
            let mut return_codes = Vec::new();
            while r.has_more() {
                let code = r.u8("return code")?;
                if code > 2 && code != SUBACK_FAILURE {
                    return Err(DecodeError::InvalidSubAckCode(code));
                }
                return_codes.push(code);
            }
            if return_codes.is_empty() {
                return Err(DecodeError::EmptySubscription { packet: "SUBACK" });
            }
            Packet::SubAck(SubAck { pkid, return_codes })
        }
        UNSUBSCRIBE => {
            let pkid = r.pkid("UNSUBSCRIBE")?;
            let mut filters = Vec::new();
            while r.has_more() {
                filters.push(r.topic_filter()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptySubscription {
                    packet: "UNSUBSCRIBE",
                });
            }
            Packet::Unsubscribe(Unsubscribe { pkid, filters })
        }
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect,
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    r.finish(type_name(kind))?;
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    match (name.as_str(), level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        _ => return Err(DecodeError::InvalidProtocol { name, level }),
    }
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags { flags });
    }
    if will_qos == 3 {
        return Err(DecodeError::InvalidQos(will_qos));
    }
    if password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let topic = r.topic_name("will topic")?;
        let payload = r.binary("will message")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        protocol_level: level,
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
    })
}

/// Appends `packet` to `out`.
///
/// Everything is validated before the first byte is written, so `out` is untouched on error. The
/// encoder refuses what the decoder would refuse, except wildcards inside topic names: the hub
/// publishes cloud-to-device messages to `devices/{id}/...`, and Azure device ids may contain `+`
/// and `#`.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining = body_len(packet)?;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { size: remaining });
    }
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first_byte(packet));
    put_varint(out, remaining);
    write_body(packet, out);
    Ok(())
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        // Masked to 7 bits, so the cast cannot truncate.
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => CONNECT << 4,
        Packet::ConnAck(_) => CONNACK << 4,
        Packet::Publish(p) => {
            (PUBLISH << 4) | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => PUBACK << 4,
        Packet::PubRec(_) => PUBREC << 4,
        Packet::PubRel(_) => (PUBREL << 4) | 0b0010,
        Packet::PubComp(_) => PUBCOMP << 4,
        Packet::Subscribe(_) => (SUBSCRIBE << 4) | 0b0010,
        Packet::SubAck(_) => SUBACK << 4,
        Packet::Unsubscribe(_) => (UNSUBSCRIBE << 4) | 0b0010,
        Packet::UnsubAck(_) => UNSUBACK << 4,
        Packet::PingReq => PINGREQ << 4,
        Packet::PingResp => PINGRESP << 4,
        Packet::Disconnect => DISCONNECT << 4,
    }
}

fn field_len(field: &'static str, len: usize) -> Result<usize, EncodeError> {
    if len > MAX_FIELD_LENGTH {
        return Err(EncodeError::FieldTooLong { field, len });
    }
    Ok(2 + len)
}

fn string_len(field: &'static str, s: &str) -> Result<usize, EncodeError> {
    if s.contains('\0') {
        return Err(EncodeError::NullCharacter { field });
    }
    field_len(field, s.len())
}

fn topic_len(field: &'static str, s: &str) -> Result<usize, EncodeError> {
    if s.is_empty() {
        return Err(EncodeError::EmptyTopic { field });
    }
    string_len(field, s)
}

fn check_qos(qos: u8) -> Result<(), EncodeError> {
    if qos > 2 {
        return Err(EncodeError::InvalidQos(qos));
    }
    Ok(())
}

fn pkid_len(packet: &'static str, pkid: u16) -> Result<usize, EncodeError> {
    if pkid == 0 {
        return Err(EncodeError::ZeroPacketId { packet });
    }
    Ok(2)
}

/// Validates `packet` and computes its remaining length.
fn body_len(packet: &Packet) -> Result<usize, EncodeError> {
    let name = packet.name();
    let len = match packet {
        Packet::Connect(c) => {
            let protocol = protocol_name(c.protocol_level)?;
            if c.password.is_some() && c.username.is_none() {
                return Err(EncodeError::PasswordWithoutUsername);
            }
            let mut len = 2 + protocol.len() + 1 + 1 + 2;
            len += string_len("client identifier", &c.client_id)?;
            if let Some(w) = &c.will {
                check_qos(w.qos)?;
                len += topic_len("will topic", &w.topic)?;
                len += field_len("will message", w.payload.len())?;
            }
            if let Some(u) = &c.username {
                len += string_len("user name", u)?;
            }
            if let Some(p) = &c.password {
                len += field_len("password", p.len())?;
            }
            len
        }
        Packet::ConnAck(a) => {
            if a.code > CONNACK_NOT_AUTHORIZED {
                return Err(EncodeError::InvalidConnAckCode(a.code));
            }
            2
        }
        Packet::Publish(p) => {
            check_qos(p.qos)?;
            if p.qos == 0 && p.dup {
                return Err(EncodeError::DupWithQos0);
            }
            let id = if p.qos > 0 {
                pkid_len(name, p.pkid)?
            } else {
                0
            };
            // Saturating: a payload near usize::MAX is reported as too large, not overflowed.
            topic_len("topic name", &p.topic)?
                .saturating_add(id)
                .saturating_add(p.payload.len())
        }
        Packet::PubAck(id)
        | Packet::PubRec(id)
        | Packet::PubRel(id)
        | Packet::PubComp(id)
        | Packet::UnsubAck(id) => pkid_len(name, *id)?,
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::EmptySubscription { packet: name });
            }
            let mut len = pkid_len(name, s.pkid)?;
            for (filter, qos) in &s.filters {
                check_qos(*qos)?;
                len = len.saturating_add(topic_len("topic filter", filter)? + 1);
            }
            len
        }
        Packet::SubAck(s) => {
            if s.return_codes.is_empty() {
                return Err(EncodeError::EmptySubscription { packet: name });
            }
            if let Some(&bad) = s
                .return_codes
                .iter()
                .find(|&&c| c > 2 && c != SUBACK_FAILURE)
            {
                return Err(EncodeError::InvalidSubAckCode(bad));
            }
            pkid_len(name, s.pkid)?.saturating_add(s.return_codes.len())
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::EmptySubscription { packet: name });
            }
            let mut len = pkid_len(name, u.pkid)?;
            for filter in &u.filters {
                len = len.saturating_add(topic_len("topic filter", filter)?);
            }
            len
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    };
    Ok(len)
}

fn protocol_name(level: u8) -> Result<&'static str, EncodeError> {
    match level {
        4 => Ok("MQTT"),
        3 => Ok("MQIsdp"),
        other => Err(EncodeError::UnsupportedProtocolLevel(other)),
    }
}

/// Writes a length-prefixed field whose length `body_len` has already checked.
fn put_field(out: &mut BytesMut, data: &[u8]) {
    // Checked by `field_len` before anything is written.
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(data);
}

/// Writes the body of a packet that `body_len` has validated.
fn write_body(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => {
            put_field(
                out,
                protocol_name(c.protocol_level).unwrap_or("MQTT").as_bytes(),
            );
            out.put_u8(c.protocol_level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            put_field(out, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                put_field(out, w.topic.as_bytes());
                put_field(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_field(out, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_field(out, p);
            }
        }
        Packet::ConnAck(a) => {
            out.put_u8(u8::from(a.session_present));
            out.put_u8(a.code);
        }
        Packet::Publish(p) => {
            put_field(out, p.topic.as_bytes());
            if p.qos > 0 {
                out.put_u16(p.pkid);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(id)
        | Packet::PubRec(id)
        | Packet::PubRel(id)
        | Packet::PubComp(id)
        | Packet::UnsubAck(id) => out.put_u16(*id),
        Packet::Subscribe(s) => {
            out.put_u16(s.pkid);
            for (filter, qos) in &s.filters {
                put_field(out, filter.as_bytes());
                out.put_u8(*qos);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.pkid);
            out.put_slice(&s.return_codes);
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.pkid);
            for filter in &u.filters {
                put_field(out, filter.as_bytes());
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
}

#[cfg(test)]
mod tests;
