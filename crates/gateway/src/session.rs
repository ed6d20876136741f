//! One device connection, from TLS handshake to close.
//!
//! CONNECT is authenticated by the hub (chain or thumbprint or SAS token, device registered and
//! enabled); any refusal is CONNACK 5 plus the recorded reason. Then the loop serves telemetry
//! (QoS 0 and 1; QoS 1 acknowledged only once the message is durable), subscriptions, C2D delivery
//! (QoS 1, kept queued until PUBACK), PINGREQ, and closes on DISCONNECT, keep-alive expiry, a
//! protocol violation, or a signal from the hub (trust or device changed, replaced by a newer
//! connection, shutdown). Every close for cause is recorded with its reason.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use iothub_hub::{ConnectRequest, Hub, SessionSignal};
use iothub_mqtt::codec::{self, ConnAck, Packet, Publish, SubAck};
use iothub_mqtt::topics::{self, DeviceTopic};
use iothub_store::NewMessage;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::server::GatewayLimits;
use crate::stream::DeviceTls;

/// Why a session ended.
enum End {
    /// The device disconnected cleanly or the socket closed.
    Normal(String),
    /// Closed for cause: recorded as a refusal with this reason.
    Cause(String),
}

struct Conn {
    stream: DeviceTls,
    buf: BytesMut,
    max_packet: usize,
    /// The configured `--max-message-bytes`, named when a packet is refused for its size.
    max_message: usize,
}

/// Why a packet could not be decoded, naming the configured message limit (the packet limit is
/// that plus room for the topic and properties, which is not a number the operator set).
fn protocol_error_text(e: &codec::DecodeError, max_message: usize) -> String {
    match e {
        codec::DecodeError::PacketTooLarge { size, .. } => format!(
            "protocol error: a packet of {size} bytes exceeds the limit (messages up to \
             {max_message} bytes, --max-message-bytes, plus 64 KiB for topic and properties)"
        ),
        other => format!("protocol error: {other}"),
    }
}

/// Why reading a packet failed.
enum ReadError {
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
    async fn read_packet(&mut self) -> Result<Option<Packet>, ReadError> {
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

    async fn write_packet(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        codec::encode(packet, &mut out).map_err(|e| format!("cannot encode a packet: {e}"))?;
        self.write_bytes(&out).await
    }

    async fn write_bytes(&mut self, out: &[u8]) -> Result<(), String> {
        // write_all returns once every byte (and anything queued before, such as the session
        // ticket) is in the socket: a PUBACK never waits for the next packet out.
        tokio::time::timeout(Duration::from_secs(30), self.stream.write_all(out))
            .await
            .map_err(|_| "the device did not read for 30 s".to_string())?
            .map_err(|e| format!("write failed: {e}"))
    }
}

pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    hub: Hub,
    limits: Arc<GatewayLimits>,
    stop: watch::Receiver<bool>,
) {
    let remote = peer.to_string();
    let tls = match tokio::time::timeout(limits.handshake_timeout, DeviceTls::accept(stream, tls))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            hub.refuse_connection("", peer, &format!("TLS handshake failed: {e}"));
            return;
        }
        Err(_) => {
            hub.refuse_connection("", peer, "TLS handshake timed out");
            return;
        }
    };
    let chain: Vec<Vec<u8>> = tls
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    let mut conn = Conn {
        stream: tls,
        buf: BytesMut::with_capacity(4096),
        max_packet: limits.max_message_bytes + 64 * 1024,
        max_message: limits.max_message_bytes,
    };

    // CONNECT must come first, within the handshake timeout.
    let connect = match tokio::time::timeout(limits.handshake_timeout, conn.read_packet()).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            hub.refuse_connection(
                "",
                peer,
                &format!("the first packet was {}, not CONNECT", other.name()),
            );
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            // An MQTT 5 (or other unknown level) CONNECT gets CONNACK 1 before the close.
            if let ReadError::Protocol(codec::DecodeError::InvalidProtocol { .. }) = &error {
                let _ = conn
                    .write_packet(&Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: codec::CONNACK_UNACCEPTABLE_PROTOCOL,
                    }))
                    .await;
            }
            let reason = match &error {
                ReadError::Protocol(e) => protocol_error_text(e, conn.max_message),
                ReadError::Io(_) => error.to_string(),
            };
            hub.refuse_connection("", peer, &reason);
            return;
        }
        Err(_) => {
            hub.refuse_connection("", peer, "no CONNECT within the timeout");
            return;
        }
    };
    if connect.protocol_level != 4 {
        hub.refuse_connection(
            &connect.client_id,
            peer,
            &format!(
                "MQTT protocol level {} is not 4 (MQTT 3.1.1)",
                connect.protocol_level
            ),
        );
        let _ = conn
            .write_packet(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: codec::CONNACK_UNACCEPTABLE_PROTOCOL,
            }))
            .await;
        return;
    }
    let request = ConnectRequest {
        client_id: connect.client_id.clone(),
        username: connect.username.clone(),
        password: connect.password.clone(),
        chain,
        remote: remote.clone(),
    };
    // The hub judges, registers the session or records the refusal: one call.
    let clean_session = connect.clean_session;
    let Ok(admission) = hub.admit(request, peer, clean_session).await else {
        let _ = conn
            .write_packet(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: codec::CONNACK_NOT_AUTHORIZED,
            }))
            .await;
        let _ = conn.stream.close().await;
        return;
    };
    if conn
        .write_packet(&Packet::ConnAck(ConnAck {
            session_present: admission.resumed.is_some(),
            code: codec::CONNACK_ACCEPTED,
        }))
        .await
        .is_err()
    {
        hub.close_session(
            &admission.device_id,
            admission.session_id,
            "could not send CONNACK",
        );
        return;
    }

    let keep_alive = connect.keep_alive.min(limits.max_keep_alive);
    let resumed = admission.resumed.unwrap_or_default();
    let mut state = SessionState {
        device_id: admission.device_id.clone(),
        session_id: admission.session_id,
        persistent: !clean_session,
        c2d_subscribed: resumed.c2d,
        desired_subscribed: resumed.desired,
        methods_subscribed: resumed.methods,
        max_inflight: limits.max_inflight.max(1),
        unacked: VecDeque::new(),
        max_unacked: limits.max_unacked_telemetry.max(1),
        c2d_more: false,
        inflight: HashMap::new(),
        next_pkid: 1,
        last_touch: Instant::now(),
    };
    let mut signals = admission.signals;
    // A resumed session was subscribed to C2D: what waits is delivered now, as after SUBSCRIBE.
    if state.c2d_subscribed {
        if let Err(e) = deliver_c2d(&mut conn, &hub, &mut state).await {
            hub.record_refusal(&admission.device_id, &remote, &e);
        }
    }
    let end = serve_session(
        &mut conn,
        &hub,
        &limits,
        keep_alive,
        &mut state,
        &mut signals,
        stop,
    )
    .await;
    let _ = conn.stream.close().await;
    let (reason, cause) = match &end {
        End::Normal(r) => (r.clone(), false),
        End::Cause(r) => (r.clone(), true),
    };
    if cause {
        hub.record_refusal(&admission.device_id, &remote, &reason);
        // The Will message (if any) is forwarded as telemetry when the session did not end cleanly.
        if let Some(will) = &connect.will {
            if let Ok(DeviceTopic::Telemetry { bag, .. }) =
                topics::device_may_publish(&admission.device_id, &will.topic)
            {
                if let Ok(message) =
                    telemetry_message(&admission.device_id, bag, &will.payload, will.retain, true)
                {
                    let _ = hub.store_telemetry(message).await;
                }
            }
        }
    }
    // Memory only (the activity it records is written behind), so no blocking thread.
    hub.close_session(&admission.device_id, admission.session_id, &reason);
}

struct SessionState {
    device_id: String,
    session_id: u64,
    /// CleanSession=0: subscriptions are kept for the device's next connection.
    persistent: bool,
    c2d_subscribed: bool,
    /// Subscribed to `$iothub/methods/POST/#`.
    methods_subscribed: bool,
    /// Subscribed to `$iothub/twin/PATCH/properties/desired/#`.
    desired_subscribed: bool,
    max_inflight: usize,
    /// The last delivery stopped at the in-flight limit: more messages wait.
    c2d_more: bool,
    /// Packet id -> C2D message id, for messages published and not yet acknowledged.
    inflight: HashMap<u16, i64>,
    next_pkid: u16,
    last_touch: Instant,
    /// QoS 1 telemetry received and handed to the writer, oldest first: the PUBACK of each goes
    /// out when its commit lands, in the order the messages came (MQTT-4.6.0-2).
    unacked: VecDeque<(u16, StoreReceipt)>,
    max_unacked: usize,
}

type StoreReceipt = tokio::sync::oneshot::Receiver<Result<i64, iothub_hub::HubError>>;

/// Sends the PUBACK of every pending message whose commit has landed, oldest first, stopping at
/// the first still being written. All go out in one write.
async fn ack_stored(conn: &mut Conn, state: &mut SessionState) -> Result<(), String> {
    let mut out = BytesMut::new();
    while let Some((pkid, receipt)) = state.unacked.front_mut() {
        match receipt.try_recv() {
            Ok(Ok(_offset)) => {
                let pkid = *pkid;
                state.unacked.pop_front();
                codec::encode(&Packet::PubAck(pkid), &mut out)
                    .map_err(|e| format!("cannot encode a packet: {e}"))?;
            }
            Ok(Err(e)) => return Err(format!("the message could not be stored: {e}")),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err("the message could not be stored".into())
            }
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    conn.write_bytes(&out).await
}

/// Waits until every pending message is stored and acknowledged: before any other answer to the
/// device, so acknowledgements keep the order of the packets they answer.
async fn ack_all_stored(conn: &mut Conn, state: &mut SessionState) -> Result<(), String> {
    while let Some((_, receipt)) = state.unacked.front_mut() {
        wait_stored(receipt).await?;
        ack_stored(conn, state).await?;
    }
    Ok(())
}

/// Waits for one commit (without consuming the receipt: `ack_stored` reads it).
async fn wait_stored(receipt: &mut StoreReceipt) -> Result<(), String> {
    // A oneshot receiver cannot be peeked: poll it and keep the result in a fresh channel.
    let result = (&mut *receipt).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(result.unwrap_or_else(|_| {
        Err(iothub_hub::HubError::Internal(
            "the telemetry writer stopped".into(),
        ))
    }));
    *receipt = rx;
    Ok(())
}

/// Builds the stored form of a telemetry message from its property bag.
fn telemetry_message(
    device_id: &str,
    bag: &str,
    payload: &[u8],
    retain: bool,
    will: bool,
) -> Result<NewMessage, String> {
    let parsed =
        topics::parse_property_bag(bag).map_err(|e| format!("invalid property bag: {e}"))?;
    let mut system = serde_json::Map::new();
    for (k, v) in parsed.system {
        system.insert(k, v.map(Into::into).unwrap_or(serde_json::Value::Null));
    }
    let mut custom = serde_json::Map::new();
    for (k, v) in parsed.custom {
        custom.insert(k, v.map(Into::into).unwrap_or(serde_json::Value::Null));
    }
    if retain {
        custom.insert("mqtt-retain".into(), "true".into());
    }
    if will {
        custom.insert("iothub-MessageType".into(), "Will".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(NewMessage {
        device_id: device_id.to_string(),
        module_id: None,
        enqueued: now,
        system_properties: serde_json::Value::Object(system).to_string(),
        properties: serde_json::Value::Object(custom).to_string(),
        body: payload.to_vec(),
    })
}

async fn serve_session(
    conn: &mut Conn,
    hub: &Hub,
    limits: &GatewayLimits,
    keep_alive: u16,
    state: &mut SessionState,
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<SessionSignal>,
    mut stop: watch::Receiver<bool>,
) -> End {
    // MQTT 3.1.1: the server closes after 1.5 times the keep-alive without a packet.
    let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let mut deadline = grace.map(|g| Instant::now() + g);
    loop {
        if let Err(e) = ack_stored(conn, state).await {
            return End::Cause(e);
        }
        // Packets already buffered are served before waiting on anything else.
        let packet = match codec::decode(&mut conn.buf, conn.max_packet) {
            Ok(Some(p)) => Some(p),
            Ok(None) => None,
            Err(e) => return End::Cause(protocol_error_text(&e, conn.max_message)),
        };
        let packet = match packet {
            Some(p) => p,
            None => {
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let oldest_stored = async {
                    match state.unacked.front_mut() {
                        Some((_, receipt)) => wait_stored(receipt).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    read = conn.stream.read_buf(&mut conn.buf) => match read {
                        Ok(0) => return End::Normal("the device closed the connection".into()),
                        Ok(_) => continue,
                        Err(e) => return End::Normal(format!("connection lost: {e}")),
                    },
                    // The oldest pending message is stored: the loop's top acknowledges it.
                    _ = oldest_stored => continue,
                    signal = signals.recv() => match signal {
                        Some(SessionSignal::Close(reason)) => return End::Cause(reason),
                        Some(SessionSignal::C2dAvailable) => {
                            if let Err(e) = deliver_c2d(conn, hub, state).await {
                                return End::Cause(e);
                            }
                            continue;
                        }
                        Some(SessionSignal::DesiredPatch(patch)) => {
                            if state.desired_subscribed {
                                let version = serde_json::from_str::<serde_json::Value>(&patch)
                                    .ok()
                                    .and_then(|v| v["$version"].as_i64())
                                    .unwrap_or_default();
                                let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
                                if let Err(e) = publish_qos0(conn, topic, patch.into_bytes()).await {
                                    return End::Normal(e);
                                }
                            }
                            continue;
                        }
                        Some(SessionSignal::MethodRequest { rid, name, payload }) => {
                            let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
                            if let Err(e) = publish_qos0(conn, topic, payload).await {
                                return End::Normal(e);
                            }
                            continue;
                        }
                        None => return End::Cause("the hub ended the session".into()),
                    },
                    _ = stop.changed() => return End::Normal("the hub is shutting down".into()),
                    _ = sleep => return End::Cause(format!(
                        "keep-alive expired: no packet for 1.5 x {keep_alive} s"
                    )),
                }
            }
        };
        deadline = grace.map(|g| Instant::now() + g);
        if state.last_touch.elapsed() > Duration::from_secs(10) {
            state.last_touch = Instant::now();
            let (hub, id) = (hub.clone(), state.device_id.clone());
            tokio::task::spawn_blocking(move || hub.touch_device(&id));
        }
        if !matches!(
            packet,
            Packet::Publish(_) | Packet::PubAck(_) | Packet::PingReq
        ) {
            if let Err(e) = ack_all_stored(conn, state).await {
                return End::Cause(e);
            }
        }
        match packet {
            Packet::Publish(p) => {
                if let Err(reason) = handle_publish(conn, hub, limits, state, p).await {
                    return End::Cause(reason);
                }
            }
            Packet::PubAck(pkid) => {
                if let Some(id) = state.inflight.remove(&pkid) {
                    let hub2 = hub.clone();
                    let _ = tokio::task::spawn_blocking(move || hub2.c2d_delivered(id)).await;
                    // A slot is free: send what waits beyond the in-flight limit.
                    if state.c2d_more {
                        if let Err(e) = deliver_c2d(conn, hub, state).await {
                            return End::Cause(e);
                        }
                    }
                }
            }
            Packet::Subscribe(s) => {
                let mut codes = Vec::with_capacity(s.filters.len());
                for (filter, qos) in &s.filters {
                    if let Err(e) = topics::device_may_subscribe(&state.device_id, filter) {
                        return End::Cause(format!("subscription refused: {e}"));
                    }
                    if filter.starts_with("devices/") {
                        state.c2d_subscribed = true;
                    } else if filter.starts_with("$iothub/twin/PATCH/properties/desired") {
                        state.desired_subscribed = true;
                    } else if filter.starts_with("$iothub/methods/POST") {
                        state.methods_subscribed = true;
                    }
                    codes.push((*qos).min(1));
                }
                report_subscriptions(hub, state).await;
                if let Err(e) = conn
                    .write_packet(&Packet::SubAck(SubAck {
                        pkid: s.pkid,
                        return_codes: codes,
                    }))
                    .await
                {
                    return End::Normal(e);
                }
                if state.c2d_subscribed {
                    if let Err(e) = deliver_c2d(conn, hub, state).await {
                        return End::Cause(e);
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    if f.starts_with("devices/") {
                        state.c2d_subscribed = false;
                    } else if f.starts_with("$iothub/twin/PATCH/properties/desired") {
                        state.desired_subscribed = false;
                    } else if f.starts_with("$iothub/methods/POST") {
                        state.methods_subscribed = false;
                    }
                }
                report_subscriptions(hub, state).await;
                if let Err(e) = conn.write_packet(&Packet::UnsubAck(u.pkid)).await {
                    return End::Normal(e);
                }
            }
            Packet::PingReq => {
                if let Err(e) = conn.write_packet(&Packet::PingResp).await {
                    return End::Normal(e);
                }
            }
            Packet::Disconnect => return End::Normal("the device disconnected".into()),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                return End::Cause("QoS 2 is not supported: the hub grants QoS 0 and 1 only".into())
            }
            other => return End::Cause(format!("unexpected {} from a device", other.name())),
        }
    }
}

async fn handle_publish(
    conn: &mut Conn,
    hub: &Hub,
    limits: &GatewayLimits,
    state: &mut SessionState,
    p: Publish,
) -> Result<(), String> {
    if p.qos == 2 {
        return Err("QoS 2 PUBLISH refused: the hub supports QoS 0 and 1".into());
    }
    if p.payload.len() > limits.max_message_bytes {
        return Err(format!(
            "the message is {} bytes; at most {} bytes are accepted",
            p.payload.len(),
            limits.max_message_bytes
        ));
    }
    let topic =
        topics::device_may_publish(&state.device_id, &p.topic).map_err(|e| e.to_string())?;
    if !matches!(topic, DeviceTopic::Telemetry { .. }) {
        // Twin and method traffic is answered at once: earlier telemetry is acknowledged first.
        ack_all_stored(conn, state).await?;
    }
    let bag = match topic {
        DeviceTopic::Telemetry {
            bag,
            module_id: None,
            ..
        } => bag.to_string(),
        DeviceTopic::Telemetry {
            module_id: Some(_), ..
        } => return Err("module telemetry is not supported yet".into()),
        DeviceTopic::TwinGet { rid } => {
            let (hub2, id) = (hub.clone(), state.device_id.clone());
            let twin = tokio::task::spawn_blocking(move || hub2.twin_for_device(&id))
                .await
                .map_err(|e| format!("twin task failed: {e}"))?;
            let (status, body) = match twin {
                Ok(v) => (200, v.to_string().into_bytes()),
                Err(e) => (e.code().status, Vec::new()),
            };
            ack(conn, &p).await?;
            return publish_qos0(conn, format!("$iothub/twin/res/{status}/?$rid={rid}"), body)
                .await;
        }
        DeviceTopic::TwinPatchReported { rid } => {
            let outcome = match serde_json::from_slice::<serde_json::Value>(&p.payload) {
                Ok(patch) => {
                    let (hub2, id) = (hub.clone(), state.device_id.clone());
                    tokio::task::spawn_blocking(move || hub2.patch_reported(&id, &patch))
                        .await
                        .map_err(|e| format!("twin task failed: {e}"))?
                }
                Err(e) => Err(iothub_hub::HubError::TwinInvalid(format!(
                    "the reported patch is not JSON: {e}"
                ))),
            };
            ack(conn, &p).await?;
            let topic = match outcome {
                Ok(version) => format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"),
                Err(e) => format!("$iothub/twin/res/{}/?$rid={rid}", e.code().status),
            };
            return publish_qos0(conn, topic, Vec::new()).await;
        }
        DeviceTopic::MethodResponse { status, rid } => {
            if let Ok(rid) = rid.parse::<u64>() {
                let (hub2, id, payload) =
                    (hub.clone(), state.device_id.clone(), p.payload.to_vec());
                let _ = tokio::task::spawn_blocking(move || {
                    hub2.method_response(&id, rid, status, &payload)
                })
                .await;
            }
            return ack(conn, &p).await;
        }
        DeviceTopic::Other => return Err(format!("'{}' is not a topic of this hub", p.topic)),
    };
    let message = telemetry_message(&state.device_id, &bag, &p.payload, p.retain, false)?;
    let stored = hub.store_telemetry(message);
    if p.qos == 1 {
        // Acknowledge only what is durable; meanwhile read on (see `SessionState::unacked`).
        while state.unacked.len() >= state.max_unacked {
            if let Some((_, receipt)) = state.unacked.front_mut() {
                wait_stored(receipt).await?;
            }
            ack_stored(conn, state).await?;
        }
        state.unacked.push_back((p.pkid, stored));
    }
    Ok(())
}

/// Tells the hub what the session is subscribed to (direct methods are routed to subscribed
/// sessions; with CleanSession=0 the set is restored on the device's next connection).
async fn report_subscriptions(hub: &Hub, state: &SessionState) {
    let subs = iothub_hub::Subscriptions {
        c2d: state.c2d_subscribed,
        desired: state.desired_subscribed,
        methods: state.methods_subscribed,
    };
    let (hub, id, sid, persistent) = (
        hub.clone(),
        state.device_id.clone(),
        state.session_id,
        state.persistent,
    );
    let _ =
        tokio::task::spawn_blocking(move || hub.remember_subscriptions(&id, sid, subs, persistent))
            .await;
}

/// Acknowledges a QoS 1 PUBLISH (nothing to do for QoS 0).
async fn ack(conn: &mut Conn, p: &Publish) -> Result<(), String> {
    if p.qos == 1 {
        conn.write_packet(&Packet::PubAck(p.pkid)).await?;
    }
    Ok(())
}

/// Publishes to the device at QoS 0 (twin responses, desired patches, method requests, as Azure).
async fn publish_qos0(conn: &mut Conn, topic: String, payload: Vec<u8>) -> Result<(), String> {
    conn.write_packet(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic,
        pkid: 0,
        payload: payload.into(),
    }))
    .await
}

/// Publishes queued cloud-to-device messages not yet in flight in this session.
async fn deliver_c2d(conn: &mut Conn, hub: &Hub, state: &mut SessionState) -> Result<(), String> {
    if !state.c2d_subscribed {
        return Ok(());
    }
    let pending = {
        let (hub, id) = (hub.clone(), state.device_id.clone());
        tokio::task::spawn_blocking(move || hub.pending_c2d(&id))
            .await
            .map_err(|e| format!("delivery task failed: {e}"))?
            .map_err(|e| format!("cannot read queued messages: {e}"))?
    };
    state.c2d_more = false;
    for m in pending {
        if state.inflight.len() >= state.max_inflight {
            // The rest follows as the device acknowledges (see PUBACK handling).
            state.c2d_more = true;
            break;
        }
        if state.inflight.values().any(|id| *id == m.id) {
            continue;
        }
        let pkid = next_pkid(state);
        let props: serde_json::Value = serde_json::from_str(&m.properties).unwrap_or_default();
        let mut system = vec![
            ("$.mid".to_string(), Some(m.message_id.clone())),
            (
                "$.to".to_string(),
                Some(format!("/devices/{}/messages/deviceBound", m.device_id)),
            ),
        ];
        if let Some(obj) = props["system"].as_object() {
            for (k, v) in obj {
                system.push((k.clone(), v.as_str().map(str::to_owned)));
            }
        }
        let custom: Vec<(String, Option<String>)> = props["application"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
                    .collect()
            })
            .unwrap_or_default();
        let topic = topics::c2d_topic(&m.device_id, &topics::encode_property_bag(&system, &custom));
        let publish = Packet::Publish(Publish {
            // Sent before (an earlier session, or a resumed one): MQTT-3.3.1-1 wants DUP set.
            dup: m.delivery_count > 0,
            qos: 1,
            retain: false,
            topic,
            pkid,
            payload: m.body.clone().into(),
        });
        conn.write_packet(&publish).await?;
        state.inflight.insert(pkid, m.id);
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || hub.c2d_attempted(m.id));
    }
    Ok(())
}

fn next_pkid(state: &mut SessionState) -> u16 {
    loop {
        let id = state.next_pkid;
        state.next_pkid = state.next_pkid.checked_add(1).unwrap_or(1);
        if !state.inflight.contains_key(&id) {
            return id;
        }
    }
}
