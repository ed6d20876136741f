//! A device connection's MQTT framing over TLS: reading one packet (within the size limit) and
//! writing packets out. Its own module because both kinds of connection on the device port use
//! it: a device's session (`session`) and a provisioning client's exchange (`provisioning`).

use std::time::Duration;

use bytes::BytesMut;
use iothub_mqtt::codec::{self, ConnAck, Packet};

use crate::stream::DeviceTls;

pub(crate) struct Conn {
    pub(crate) stream: DeviceTls,
    pub(crate) buf: BytesMut,
    pub(crate) max_packet: usize,
    /// The configured `--max-message-bytes`, named when a packet is refused for its size.
    pub(crate) max_message: usize,
}

/// Why a packet could not be decoded, naming the configured message limit (the packet limit is
/// that plus room for the topic and properties, which is not a number the operator set).
pub(crate) fn protocol_error_text(e: &codec::DecodeError, max_message: usize) -> String {
    match e {
        codec::DecodeError::PacketTooLarge { size, .. } => format!(
            "protocol error: a packet of {size} bytes exceeds the limit (messages up to \
             {max_message} bytes, --max-message-bytes, plus 64 KiB for topic and properties)"
        ),
        other => format!("protocol error: {other}"),
    }
}

/// Why reading a packet failed.
pub(crate) enum ReadError {
    Protocol(codec::DecodeError),
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Protocol(e) => write!(f, "protocol error: {e}"),
            ReadError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl Conn {
    /// Reads one packet (None: the peer closed the connection).
    pub(crate) async fn read_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            match codec::decode(&mut self.buf, self.max_packet) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(e)),
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| ReadError::Io(e.to_string()))?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    pub(crate) async fn write_packet(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        codec::encode(packet, &mut out).map_err(|e| format!("cannot encode a packet: {e}"))?;
        self.write_bytes(&out).await
    }

    pub(crate) async fn write_bytes(&mut self, out: &[u8]) -> Result<(), String> {
        // write_all returns once every byte (and anything queued before, such as the session
        // ticket) is in the socket: a PUBACK never waits for the next packet out.
        tokio::time::timeout(Duration::from_secs(30), self.stream.write_all(out))
            .await
            .map_err(|_| "the device did not read for 30 s".to_string())?
            .map_err(|e| format!("write failed: {e}"))
    }
}

/// A CONNACK without a session present (every refusal, and a fresh session).
pub(crate) fn connack(code: u8) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    })
}
