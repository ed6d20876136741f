//! MQTT 3.1.1 for iothub's device gateway, without I/O: the wire codec and Azure IoT Hub's device
//! topic namespace.
//!
//! Why a crate of its own: both halves are pure functions over bytes and strings that face
//! untrusted devices. Keeping them free of sockets, TLS and the runtime lets them be tested to the
//! last byte (hand-built vectors for every error, property tests, captured client traffic), and
//! keeps the gateway a thin adapter.
//!
//! - [`codec`]: [`decode`] and [`encode`] MQTT 3.1.1 packets over `bytes::BytesMut`, with the size
//!   limit checked before a body is awaited and every malformation a distinct [`DecodeError`].
//! - [`provisioning`]: the provisioning service's dialect (username, request and answer topics,
//!   the register body) that the device SDK's `ProvisioningDeviceClient` speaks on the same port.
//! - [`topics`]: the IoT Hub topics a device may publish and subscribe to, property bags, and MQTT
//!   filter matching.

pub mod codec;
pub mod provisioning;
pub mod topics;

pub use codec::{
    decode, encode, ConnAck, Connect, DecodeError, EncodeError, Packet, Publish, SubAck, Subscribe,
    Unsubscribe, Will, CONNACK_ACCEPTED, CONNACK_BAD_CREDENTIALS, CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE, CONNACK_UNACCEPTABLE_PROTOCOL,
    SUBACK_FAILURE,
};
pub use topics::{
    c2d_topic, device_may_publish, device_may_subscribe, encode_property_bag, filter_matches,
    parse_property_bag, parse_property_bag_with, BagLimits, DeviceTopic, PropertyBag, TopicError,
};
