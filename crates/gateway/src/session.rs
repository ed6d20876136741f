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
use iothub_hub::{Admission, ConnectRequest, DeviceMessage, Hub, SessionSignal, SignalReceiver};
use iothub_mqtt::codec::{self, ConnAck, Connect, Packet, Publish, SubAck};
use iothub_mqtt::topics::{self, DeviceTopic};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::conn::{connack, protocol_error_text, Conn, ReadError};
use crate::limits::GatewayLimits;
use crate::stream::DeviceTls;

/// Why a session ended.
enum End {
    /// The device disconnected cleanly or the socket closed.
    Normal(String),
    /// Closed for cause: recorded as a refusal with this reason.
    Cause(String),
}

/// A connection the listener accepted, handed to its task in one box: a task's future keeps its
/// arguments for its whole life, so it holds one pointer instead of them.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) hub: Hub,
    pub(crate) limits: Arc<GatewayLimits>,
    pub(crate) stop: watch::Receiver<bool>,
    /// The connection's place under `--max-device-connections`, held until it has closed.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// An admitted session as it waits: what the wait and the close need, and nothing else.
struct Live {
    session: Session,
    signals: SignalReceiver,
    /// Kept for the close (the Will).
    connect: Connect,
    keep_alive: u16,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

/// Serves one device connection to its end: TLS, CONNECT, the hub's admission, the session, its
/// close (and Will).
///
/// Every idle connection holds its task, and a task's future is as large as its largest state
/// with every value it ever held across an await (a moved-out value keeps its slot), so the
/// phases before the wait run in one boxed future that hands over only `Live`, and the close
/// runs boxed too (docs/decisions.md: memory per idle connection).
pub(crate) async fn run(accepted: Box<Accepted>) {
    let Some(mut live) = Box::pin(open(accepted)).await else {
        return;
    };
    let end = live
        .session
        .serve(live.keep_alive, &mut live.signals, &mut live.stop)
        .await;
    Box::pin(live.session.close(end, &live.connect)).await;
}

/// From accept to an admitted session: TLS, CONNECT, the hub's admission (or a provisioning
/// client's whole exchange), and the C2D messages a resumed session has waiting.
async fn open(accepted: Box<Accepted>) -> Option<Live> {
    let Accepted {
        stream,
        peer,
        tls,
        hub,
        limits,
        stop,
        permit,
    } = *accepted;
    let remote = peer.to_string();
    let (mut conn, chain) = accept_tls(stream, peer, tls, &hub, &limits).await?;
    let connect = read_connect(&mut conn, peer, &hub, &limits).await?;
    let username = connect.username.as_deref().unwrap_or_default();
    if iothub_mqtt::provisioning::is_provisioning_username(username) {
        Box::pin(crate::provisioning::run(
            conn, peer, hub, &limits, connect, chain, stop,
        ))
        .await;
        return None;
    }
    let admission = admit(&mut conn, peer, &remote, &hub, &connect, chain).await?;
    let keep_alive = connect.keep_alive.min(limits.max_keep_alive);
    let (mut session, signals) = Session::open(conn, hub, limits, admission, &connect, remote);
    // A resumed session was subscribed to C2D: what waits is delivered now, as after SUBSCRIBE.
    if session.state.c2d_subscribed {
        if let Err(e) = session.deliver_c2d().await {
            session.record_refusal(&e);
        }
    }
    Some(Live {
        session,
        signals,
        connect,
        keep_alive,
        stop,
        _permit: permit,
    })
}

/// Completes the TLS handshake (within the handshake timeout): the connection and the chain the
/// device presented (empty when none), or None once the failure is recorded.
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    hub: &Hub,
    limits: &GatewayLimits,
) -> Option<(Conn, Vec<Vec<u8>>)> {
    let tls = match tokio::time::timeout(limits.handshake_timeout, DeviceTls::accept(stream, tls))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            hub.tls_handshake_failed(peer, &format!("TLS handshake failed: {e}"));
            return None;
        }
        Err(_) => {
            hub.tls_handshake_failed(peer, "TLS handshake timed out");
            return None;
        }
    };
    let chain: Vec<Vec<u8>> = tls
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    let conn = Conn {
        stream: tls,
        buf: BytesMut::with_capacity(4096),
        max_packet: limits.max_message_bytes + 64 * 1024,
        max_message: limits.max_message_bytes,
    };
    Some((conn, chain))
}

/// Reads the CONNECT, which must come first, within the handshake timeout, at MQTT 3.1.1.
/// Anything else is recorded (answered CONNACK 1 for another protocol level) and None.
async fn read_connect(
    conn: &mut Conn,
    peer: SocketAddr,
    hub: &Hub,
    limits: &GatewayLimits,
) -> Option<Connect> {
    let connect = match tokio::time::timeout(limits.handshake_timeout, conn.read_packet()).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            hub.refuse_connection(
                "",
                peer,
                &format!("the first packet was {}, not CONNECT", other.name()),
            );
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            // An MQTT 5 (or other unknown level) CONNECT gets CONNACK 1 before the close.
            if let ReadError::Protocol(codec::DecodeError::InvalidProtocol { .. }) = &error {
                let _ = conn
                    .write_packet(&connack(codec::CONNACK_UNACCEPTABLE_PROTOCOL))
                    .await;
            }
            let reason = match &error {
                ReadError::Protocol(e) => protocol_error_text(e, conn.max_message),
                ReadError::Io(_) => error.to_string(),
            };
            hub.refuse_connection("", peer, &reason);
            return None;
        }
        Err(_) => {
            hub.refuse_connection("", peer, "no CONNECT within the timeout");
            return None;
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
            .write_packet(&connack(codec::CONNACK_UNACCEPTABLE_PROTOCOL))
            .await;
        return None;
    }
    Some(connect)
}

/// The hub judges the CONNECT, registers the session or records the refusal (one call); the
/// device gets CONNACK from its result. None: refused, or the CONNACK could not be sent.
async fn admit(
    conn: &mut Conn,
    peer: SocketAddr,
    remote: &str,
    hub: &Hub,
    connect: &Connect,
    chain: Vec<Vec<u8>>,
) -> Option<Admission> {
    let request = ConnectRequest {
        client_id: connect.client_id.clone(),
        username: connect.username.clone(),
        password: connect.password.clone(),
        chain,
        remote: remote.to_string(),
    };
    let Ok(admission) = hub.admit(request, peer, connect.clean_session).await else {
        let _ = conn
            .write_packet(&connack(codec::CONNACK_NOT_AUTHORIZED))
            .await;
        let _ = conn.stream.close().await;
        return None;
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
        return None;
    }
    Some(admission)
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

/// A device's message for the hub, its topic's property bag decoded here: a bag that does not
/// decode ends the session with this reason, before the hub is asked anything.
fn device_message<'a>(
    device_id: &'a str,
    bag: &str,
    body: &'a [u8],
    retain: bool,
    will: bool,
) -> Result<DeviceMessage<'a>, String> {
    let parsed =
        topics::parse_property_bag(bag).map_err(|e| format!("invalid property bag: {e}"))?;
    Ok(DeviceMessage {
        device_id,
        system: parsed.system,
        custom: parsed.custom,
        body,
        retain,
        will,
    })
}

/// The most read-buffer capacity an idle session keeps (see `Session::wait`).
const IDLE_BUFFER_BYTES: usize = 512;

/// What woke a session waiting with nothing buffered to decode.
enum Wake {
    /// Bytes arrived (Ok(0): the device closed the connection).
    Read(std::io::Result<usize>),
    /// The oldest pending message is stored: the loop's top acknowledges it.
    Stored,
    Signal(Option<SessionSignal>),
    Shutdown,
    KeepAliveExpired,
}

/// An admitted session: the connection, what the session knows, and the hub it asks.
struct Session {
    conn: Conn,
    hub: Hub,
    limits: Arc<GatewayLimits>,
    state: SessionState,
    /// The peer's address, recorded with the reason of a close for cause.
    remote: String,
}

impl Session {
    /// The session of an admission, with the subscriptions it resumed, and its signal channel.
    fn open(
        conn: Conn,
        hub: Hub,
        limits: Arc<GatewayLimits>,
        admission: Admission,
        connect: &Connect,
        remote: String,
    ) -> (Session, SignalReceiver) {
        let resumed = admission.resumed.unwrap_or_default();
        let state = SessionState {
            device_id: admission.device_id,
            session_id: admission.session_id,
            persistent: !connect.clean_session,
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
        let session = Session {
            conn,
            hub,
            limits,
            state,
            remote,
        };
        (session, admission.signals)
    }

    fn record_refusal(&self, reason: &str) {
        self.hub
            .record_refusal(&self.state.device_id, &self.remote, reason);
    }

    /// Serves packets and signals until the session ends, and says why.
    async fn serve(
        &mut self,
        keep_alive: u16,
        signals: &mut SignalReceiver,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        // MQTT 3.1.1: the server closes after 1.5 times the keep-alive without a packet.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = grace.map(|g| Instant::now() + g);
        loop {
            if let Err(e) = ack_stored(&mut self.conn, &mut self.state).await {
                return End::Cause(e);
            }
            // Packets already buffered are served before waiting on anything else.
            let packet = match codec::decode(&mut self.conn.buf, self.conn.max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    let wake = self.wait(deadline, signals, stop).await;
                    if let Err(end) = Box::pin(self.on_wake(wake, keep_alive)).await {
                        return end;
                    }
                    continue;
                }
                Err(e) => return End::Cause(protocol_error_text(&e, self.conn.max_message)),
            };
            deadline = grace.map(|g| Instant::now() + g);
            if let Err(end) = Box::pin(self.on_packet(packet)).await {
                return end;
            }
        }
    }

    /// Waits for bytes, a commit, a signal from the hub, shutdown or the keep-alive deadline.
    async fn wait(
        &mut self,
        deadline: Option<Instant>,
        signals: &mut SignalReceiver,
        stop: &mut watch::Receiver<bool>,
    ) -> Wake {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // An idle session holds no read buffer: a fleet is mostly idle, and 4 KB per idle
        // connection is a sixth of what one costs. The next read takes a small one and grows.
        if self.conn.buf.is_empty() && self.conn.buf.capacity() > IDLE_BUFFER_BYTES {
            self.conn.buf = BytesMut::new();
        }
        let oldest_stored = async {
            match self.state.unacked.front_mut() {
                Some((_, receipt)) => wait_stored(receipt).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = self.conn.stream.read_buf(&mut self.conn.buf) => Wake::Read(read),
            _ = oldest_stored => Wake::Stored,
            signal = signals.recv() => Wake::Signal(signal),
            _ = stop.changed() => Wake::Shutdown,
            _ = sleep => Wake::KeepAliveExpired,
        }
    }

    /// Acts on what woke the session; Err ends it.
    async fn on_wake(&mut self, wake: Wake, keep_alive: u16) -> Result<(), End> {
        match wake {
            Wake::Read(Ok(0)) => Err(End::Normal("the device closed the connection".into())),
            Wake::Read(Ok(_)) | Wake::Stored => Ok(()),
            Wake::Read(Err(e)) => Err(End::Normal(format!("connection lost: {e}"))),
            Wake::Signal(Some(signal)) => self.on_signal(signal).await,
            Wake::Signal(None) => Err(End::Cause("the hub ended the session".into())),
            Wake::Shutdown => Err(End::Normal("the hub is shutting down".into())),
            Wake::KeepAliveExpired => Err(End::Cause(format!(
                "keep-alive expired: no packet for 1.5 x {keep_alive} s"
            ))),
        }
    }

    /// A signal from the hub: close, C2D waiting, a desired patch or a method call to publish.
    async fn on_signal(&mut self, signal: SessionSignal) -> Result<(), End> {
        match signal {
            SessionSignal::Close(reason) => Err(End::Cause(reason)),
            SessionSignal::C2dAvailable => self.deliver_c2d().await.map_err(End::Cause),
            SessionSignal::DesiredPatch(patch) => {
                if !self.state.desired_subscribed {
                    return Ok(());
                }
                let version = serde_json::from_str::<serde_json::Value>(&patch)
                    .ok()
                    .and_then(|v| v["$version"].as_i64())
                    .unwrap_or_default();
                let topic = topics::desired_patch_topic(version);
                publish_qos0(&mut self.conn, topic, patch.into_bytes())
                    .await
                    .map_err(End::Normal)
            }
            SessionSignal::MethodRequest(call) => {
                let topic = topics::method_request_topic(&call.name, call.rid);
                publish_qos0(&mut self.conn, topic, call.payload)
                    .await
                    .map_err(End::Normal)
            }
        }
    }

    /// A packet from the device; Err ends the session.
    async fn on_packet(&mut self, packet: Packet) -> Result<(), End> {
        if self.state.last_touch.elapsed() > Duration::from_secs(10) {
            self.state.last_touch = Instant::now();
            let (hub, id) = (self.hub.clone(), self.state.device_id.clone());
            tokio::task::spawn_blocking(move || hub.touch_device(&id));
        }
        if !matches!(
            packet,
            Packet::Publish(_) | Packet::PubAck(_) | Packet::PingReq
        ) {
            ack_all_stored(&mut self.conn, &mut self.state)
                .await
                .map_err(End::Cause)?;
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p).await.map_err(End::Cause),
            Packet::PubAck(pkid) => self.on_c2d_ack(pkid).await.map_err(End::Cause),
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    self.set_subscribed(f, false);
                }
                report_subscriptions(&self.hub, &self.state).await;
                (self.conn.write_packet(&Packet::UnsubAck(u.pkid)).await).map_err(End::Normal)
            }
            Packet::PingReq => {
                (self.conn.write_packet(&Packet::PingResp).await).map_err(End::Normal)
            }
            Packet::Disconnect => Err(End::Normal("the device disconnected".into())),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(End::Cause(
                "QoS 2 is not supported: the hub grants QoS 0 and 1 only".into(),
            )),
            other => Err(End::Cause(format!(
                "unexpected {} from a device",
                other.name()
            ))),
        }
    }

    /// Marks the delivery a filter the device (un)subscribed names as on or off.
    fn set_subscribed(&mut self, filter: &str, on: bool) {
        let flag = match topics::Delivery::of_filter(filter) {
            Some(topics::Delivery::CloudToDevice) => &mut self.state.c2d_subscribed,
            Some(topics::Delivery::DesiredProperties) => &mut self.state.desired_subscribed,
            Some(topics::Delivery::Methods) => &mut self.state.methods_subscribed,
            None => return,
        };
        *flag = on;
    }

    /// SUBSCRIBE: every filter authorised (one refusal ends the session), granted at most QoS 1;
    /// C2D delivery starts once subscribed.
    async fn on_subscribe(&mut self, s: codec::Subscribe) -> Result<(), End> {
        let mut codes = Vec::with_capacity(s.filters.len());
        for (filter, qos) in &s.filters {
            if let Err(e) = topics::device_may_subscribe(&self.state.device_id, filter) {
                return Err(End::Cause(format!("subscription refused: {e}")));
            }
            self.set_subscribed(filter, true);
            codes.push((*qos).min(1));
        }
        report_subscriptions(&self.hub, &self.state).await;
        let suback = Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: codes,
        });
        self.conn.write_packet(&suback).await.map_err(End::Normal)?;
        if self.state.c2d_subscribed {
            self.deliver_c2d().await.map_err(End::Cause)?;
        }
        Ok(())
    }

    /// PUBACK of a C2D message: delivered; a freed in-flight slot sends what waited.
    async fn on_c2d_ack(&mut self, pkid: u16) -> Result<(), String> {
        let Some(id) = self.state.inflight.remove(&pkid) else {
            return Ok(());
        };
        let hub = self.hub.clone();
        let _ = tokio::task::spawn_blocking(move || hub.c2d_delivered(id)).await;
        if self.state.c2d_more {
            self.deliver_c2d().await?;
        }
        Ok(())
    }

    /// PUBLISH from the device: telemetry to the writer, twin and method traffic to the hub.
    async fn on_publish(&mut self, p: Publish) -> Result<(), String> {
        if p.qos == 2 {
            return Err("QoS 2 PUBLISH refused: the hub supports QoS 0 and 1".into());
        }
        if p.payload.len() > self.limits.max_message_bytes {
            return Err(format!(
                "the message is {} bytes; at most {} bytes are accepted",
                p.payload.len(),
                self.limits.max_message_bytes
            ));
        }
        let topic = topics::device_may_publish(&self.state.device_id, &p.topic)
            .map_err(|e| e.to_string())?;
        if !matches!(topic, DeviceTopic::Telemetry { .. }) {
            // Twin and method traffic is answered at once: earlier telemetry is acknowledged first.
            ack_all_stored(&mut self.conn, &mut self.state).await?;
        }
        match topic {
            DeviceTopic::Telemetry {
                bag,
                module_id: None,
                ..
            } => self.store_telemetry(&p, bag).await,
            DeviceTopic::Telemetry {
                module_id: Some(_), ..
            } => Err("module telemetry is not supported yet".into()),
            DeviceTopic::TwinGet { rid } => self.answer_twin_get(&p, rid).await,
            DeviceTopic::TwinPatchReported { rid } => self.answer_reported_patch(&p, rid).await,
            DeviceTopic::MethodResponse { status, rid } => {
                if let Ok(rid) = rid.parse::<u64>() {
                    let (hub, id, payload) = (
                        self.hub.clone(),
                        self.state.device_id.clone(),
                        p.payload.to_vec(),
                    );
                    let _ = tokio::task::spawn_blocking(move || {
                        hub.method_response(&id, rid, status, &payload)
                    })
                    .await;
                }
                ack(&mut self.conn, &p).await
            }
            DeviceTopic::Other => Err(format!("'{}' is not a topic of this hub", p.topic)),
        }
    }

    /// Telemetry: one hub call hands it to the writer; QoS 1 is acknowledged only once durable,
    /// and meanwhile the session reads on (see `SessionState::unacked`).
    async fn store_telemetry(&mut self, p: &Publish, bag: &str) -> Result<(), String> {
        let message = device_message(&self.state.device_id, bag, &p.payload, p.retain, false)?;
        let stored = self.hub.store_device_message(message);
        if p.qos == 1 {
            while self.state.unacked.len() >= self.state.max_unacked {
                if let Some((_, receipt)) = self.state.unacked.front_mut() {
                    wait_stored(receipt).await?;
                }
                ack_stored(&mut self.conn, &mut self.state).await?;
            }
            self.state.unacked.push_back((p.pkid, stored));
        }
        Ok(())
    }

    /// `$iothub/twin/GET`: the twin (200) or the hub's error status, on the device's `$rid`.
    async fn answer_twin_get(&mut self, p: &Publish, rid: &str) -> Result<(), String> {
        let (hub, id) = (self.hub.clone(), self.state.device_id.clone());
        let twin = tokio::task::spawn_blocking(move || hub.twin_for_device(&id))
            .await
            .map_err(|e| format!("twin task failed: {e}"))?;
        let (status, body) = match twin {
            Ok(v) => (200, v.to_string().into_bytes()),
            Err(e) => (e.code().status, Vec::new()),
        };
        ack(&mut self.conn, p).await?;
        let topic = topics::twin_response_topic(status, rid);
        publish_qos0(&mut self.conn, topic, body).await
    }

    /// A reported-properties patch: 204 with the new version, or the hub's error status.
    async fn answer_reported_patch(&mut self, p: &Publish, rid: &str) -> Result<(), String> {
        let outcome = match serde_json::from_slice::<serde_json::Value>(&p.payload) {
            Ok(patch) => {
                let (hub, id) = (self.hub.clone(), self.state.device_id.clone());
                tokio::task::spawn_blocking(move || hub.patch_reported(&id, &patch))
                    .await
                    .map_err(|e| format!("twin task failed: {e}"))?
            }
            Err(e) => Err(iothub_hub::HubError::TwinInvalid(format!(
                "the reported patch is not JSON: {e}"
            ))),
        };
        ack(&mut self.conn, p).await?;
        let topic = match outcome {
            Ok(version) => topics::twin_patched_topic(rid, version),
            Err(e) => topics::twin_response_topic(e.code().status, rid),
        };
        publish_qos0(&mut self.conn, topic, Vec::new()).await
    }

    /// Publishes queued cloud-to-device messages not yet in flight in this session.
    async fn deliver_c2d(&mut self) -> Result<(), String> {
        if !self.state.c2d_subscribed {
            return Ok(());
        }
        let pending = {
            let (hub, id) = (self.hub.clone(), self.state.device_id.clone());
            tokio::task::spawn_blocking(move || hub.c2d_deliveries(&id))
                .await
                .map_err(|e| format!("delivery task failed: {e}"))?
                .map_err(|e| format!("cannot read queued messages: {e}"))?
        };
        let state = &mut self.state;
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
            let topic =
                topics::c2d_delivery_topic(&m.device_id, &m.message_id, &m.system, &m.application);
            let publish = Packet::Publish(Publish {
                // Sent before (an earlier session, or a resumed one): MQTT-3.3.1-1 wants DUP set.
                dup: m.delivery_count > 0,
                qos: 1,
                retain: false,
                topic,
                pkid,
                payload: m.body.into(),
            });
            self.conn.write_packet(&publish).await?;
            state.inflight.insert(pkid, m.id);
            let hub = self.hub.clone();
            tokio::task::spawn_blocking(move || hub.c2d_attempted(m.id));
        }
        Ok(())
    }

    /// Closes the connection and the hub's session; a close for cause is recorded and sends the
    /// CONNECT's Will (if any) as telemetry, as the device asked for an unclean end.
    async fn close(mut self, end: End, connect: &Connect) {
        let _ = self.conn.stream.close().await;
        let (reason, cause) = match end {
            End::Normal(r) => (r, false),
            End::Cause(r) => (r, true),
        };
        if cause {
            self.record_refusal(&reason);
            if let Some(will) = &connect.will {
                self.send_will(will).await;
            }
        }
        // Memory only (the activity it records is written behind), so no blocking thread.
        self.hub
            .close_session(&self.state.device_id, self.state.session_id, &reason);
    }

    /// Stores the Will when its topic is the device's own telemetry; waits for its commit.
    async fn send_will(&self, will: &codec::Will) {
        let device_id = &self.state.device_id;
        let Ok(DeviceTopic::Telemetry { bag, .. }) =
            topics::device_may_publish(device_id, &will.topic)
        else {
            return;
        };
        if let Ok(message) = device_message(device_id, bag, &will.payload, will.retain, true) {
            let _ = self.hub.store_device_message(message).await;
        }
    }
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

fn next_pkid(state: &mut SessionState) -> u16 {
    loop {
        let id = state.next_pkid;
        state.next_pkid = state.next_pkid.checked_add(1).unwrap_or(1);
        if !state.inflight.contains_key(&id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, read from its type (no arguments needed).
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds its task's future: at 20,000 connections each kilobyte of it
    /// is 20 MB. It holds the session and its wait, not the handshake's or CONNECT's state
    /// (measured at 2,680 bytes in a release build; before `open` was boxed as one phase,
    /// 4,368, with the moved-out connection's slot kept beside the session's copy).
    #[test]
    fn the_task_of_an_idle_connection_holds_only_its_session_and_wait() {
        let run_size = future_size(run);
        let live = std::mem::size_of::<Live>();
        println!("run: {run_size} bytes, Live: {live} bytes");
        assert!(
            run_size <= live + 1200,
            "a connection's task is {run_size} bytes, its Live session {live}: the phases before \
             the wait must stay boxed"
        );
    }
}
