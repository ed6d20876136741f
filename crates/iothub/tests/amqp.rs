//! The AMQP endpoint end to end over real TLS with an AMQP client (`fe2o3-amqp`'s): put-token
//! answers 200 for a good token and 401 for a wrong key or an expired one; a cloud-to-device
//! message is Accepted and queued, Rejected for an unknown device (with the hub's code) or under a
//! policy without ServiceConnect, and refused without a token; a connection without a token is
//! closed at `--amqp-auth-timeout`, and one with `--amqp-token-refusals` tokens refused; links and sessions past `--amqp-max-links` /
//! `--amqp-max-sessions` are refused with `amqp:resource-limit-exceeded` (sessions also by the
//! channel-max the open announces); the open announces `--amqp-max-frame-bytes`, a larger frame
//! closes the connection and a larger message arrives in fragments; `--amqp-credit` is the credit
//! the hub grants, and more messages than it are all accepted in order; an Event Hubs reader gets
//! a device's telemetry from where its selector filter says, and a bad selector or an unknown
//! partition, consumer group or event hub detaches it with the problem named; `--amqp off`
//! listens nowhere. The official SDKs' view is tests/sdk/test_amqp.py.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, DeleteOnClose, Message, MessageId, Outcome,
    Properties, Source,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(20);
/// The most a test's whole AMQP exchange may take.
const BOUND: Duration = Duration::from_secs(90);

/// Runs a test's client side on its own runtime, bounded: a hub that stops answering fails the
/// test after [`BOUND`] instead of hanging it.
fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(BOUND, test).await })
        .expect("the test's AMQP exchange finishes in time")
}

/// TLS to the hub's AMQP port, trusting the hub's CA.
async fn tls_to(hub: &TestHub) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let port = hub.amqp_port.expect("the hub serves AMQP");
    let ca = std::fs::read(hub.data().join("tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS with the hub's AMQP port")
}

/// TLS to the hub's AMQP port, then an AMQP connection with SASL ANONYMOUS (the token comes on
/// `$cbs`, as Azure's clients do).
async fn open(hub: &TestHub) -> ConnectionHandle<()> {
    let tls = tls_to(hub).await;
    Connection::builder()
        .container_id("amqp-test")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Anonymous)
        .open_with_stream(tls)
        .await
        .expect("AMQP open")
}

/// Puts `token` on `$cbs`; the answer's status code.
async fn put_token(session: &mut SessionHandle<()>, token: &str) -> i32 {
    let mut requests = Sender::attach(session, "cbs-requests", "$cbs")
        .await
        .unwrap();
    let mut answers = Receiver::builder()
        .name("cbs-answers")
        .source("$cbs")
        .target("cbs-reply")
        .attach(session)
        .await
        .unwrap();
    let mut properties = Properties::builder().build();
    properties.message_id = Some(MessageId::String("put-1".into()));
    properties.reply_to = Some("cbs-reply".into());
    let request = Message::builder()
        .properties(properties)
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert(
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                )
                .insert("name", SimpleValue::String("amqps://localhost".into()))
                .build(),
        )
        .value(token.to_string())
        .build();
    requests.send(request).await.unwrap();
    let answer = tokio::time::timeout(WAIT, answers.recv::<Body<Value>>())
        .await
        .expect("an answer on the reply link")
        .unwrap();
    answers.accept(&answer).await.unwrap();
    let message = answer.message();
    assert_eq!(
        message.properties.as_ref().unwrap().correlation_id,
        Some(MessageId::String("put-1".into()))
    );
    match message
        .application_properties
        .as_ref()
        .unwrap()
        .0
        .get("status-code")
    {
        Some(SimpleValue::Int(code)) => *code,
        other => panic!("status-code: {other:?}"),
    }
}

fn c2d(device: &str, id: &str) -> Message<Body<Value>> {
    let mut properties = Properties::builder().build();
    properties.message_id = Some(MessageId::String(id.into()));
    properties.to = Some(format!("/devices/{device}/messages/devicebound"));
    Message::builder()
        .properties(properties)
        .body(Body::Value(AmqpValue(Value::String("hello".into()))))
        .build()
}

fn queued(hub: &TestHub, device: &str) -> Vec<String> {
    hub.get_json(&format!("/devices/{device}/messages/devicebound"))["value"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["messageId"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A put-token with the owner key is answered 200 (correlated to the request); a cloud-to-device
/// message to a registered device is then Accepted and queued for it, one to an unknown device is
/// Rejected with `amqp:not-found` and the hub's code (`404001 DeviceNotFound`), one with a
/// malformed `to` Rejected naming the expected address.
#[test]
fn a_good_token_sends_cloud_to_device_messages_and_an_unknown_device_is_rejected_with_its_code() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "amqp-1", "--auth", "sas"]));
    let owner = hub.owner_token();
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut sender = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .unwrap();
        let outcome = sender.send(c2d("amqp-1", "m-1")).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        match sender.send(c2d("nobody", "m-2")).await.unwrap() {
            Outcome::Rejected(r) => {
                let e = r.error.expect("an error");
                assert!(format!("{e:?}").contains("NotFound"), "{e:?}");
                let text = e.description.unwrap_or_default();
                assert!(text.starts_with("404001 DeviceNotFound"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        match sender.send(c2d("bad/id", "m-3")).await.unwrap() {
            Outcome::Rejected(r) => {
                let text = r.error.unwrap().description.unwrap_or_default();
                assert!(
                    text.contains("/devices/{deviceId}/messages/devicebound"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let _ = connection.close().await;
    });
    assert_eq!(queued(&hub, "amqp-1"), ["m-1"]);
}

/// A token signed with a wrong key and one already expired are both answered 401 on `$cbs`; a
/// connection with no good token has its `/messages/devicebound` link detached at once with
/// `amqp:unauthorized-access`, and nothing is queued.
#[test]
fn wrong_and_expired_tokens_are_answered_401_and_a_link_without_a_token_is_refused() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "amqp-2", "--auth", "sas"]));
    let wrong = hub.token("iothubowner", &"A".repeat(44), 3600);
    let key = hub.policy_key("iothubowner");
    let expired = hub.token("iothubowner", &key, -10);
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &wrong).await, 401);
        let mut second = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut second, &expired).await, 401);
        // No good token on this connection: the link to the queue is detached at once.
        let mut sender = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .unwrap();
        let detached = tokio::time::timeout(WAIT, sender.on_detach())
            .await
            .expect("detached");
        assert!(
            format!("{detached:?}").contains("UnauthorizedAccess"),
            "{detached:?}"
        );
        let _ = connection.close().await;
    });
    assert!(queued(&hub, "amqp-2").is_empty());
}

/// `--amqp-auth-timeout 2s`: a connection that never puts a token is closed by the hub with
/// `amqp:unauthorized-access` naming the deadline, not before ~2 s (and within [`WAIT`]).
#[test]
fn a_connection_without_a_token_is_closed_at_the_auth_timeout() {
    let hub = TestHub::start(&["--amqp-auth-timeout", "2s"]);
    bounded(async {
        let mut connection = open(&hub).await;
        let started = Instant::now();
        let closed = tokio::time::timeout(WAIT, connection.on_close())
            .await
            .expect("the hub closes the connection");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(1500),
            "closed after {after:?}"
        );
        let text = format!("{closed:?}");
        assert!(
            text.contains("UnauthorizedAccess") && text.contains("within 2 s"),
            "{text}"
        );
    });
}

/// `--amqp-max-links 3`: a fourth link is detached with `amqp:resource-limit-exceeded` naming the
/// setting, and a link given back makes room for another; `--amqp-max-sessions 2`: the open
/// announces channel-max 1, so a third session is refused (fe2o3 refuses it itself).
#[test]
fn links_and_sessions_past_their_limits_are_refused() {
    let hub = TestHub::start(&["--amqp-max-links", "3", "--amqp-max-sessions", "2"]);
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        // Links to $cbs need no token; three are at the limit and stay served.
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(
                Sender::attach(&mut session, format!("cbs-{i}"), "$cbs")
                    .await
                    .unwrap(),
            );
        }
        let mut fourth = Sender::attach(&mut session, "cbs-3", "$cbs").await.unwrap();
        let detached = tokio::time::timeout(WAIT, fourth.on_detach())
            .await
            .expect("the fourth link is detached");
        let text = format!("{detached:?}");
        assert!(
            text.contains("ResourceLimitExceeded") && text.contains("--amqp-max-links"),
            "{text}"
        );
        // A link given back makes room for another.
        drop(fourth);
        let _ = held.pop().unwrap().close().await;
        let mut again = Sender::attach(&mut session, "cbs-4", "$cbs").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), again.on_detach())
                .await
                .is_err(),
            "the link after one was closed is served"
        );
        // The open announced channel-max 1 (two sessions): a third is refused by a client that
        // honours it, and ended with resource-limit-exceeded by the hub for one that does not.
        let _second = Session::begin(&mut connection).await.unwrap();
        let third = Session::begin(&mut connection).await;
        assert!(
            format!("{:?}", third.as_ref().err()).contains("ChannelMax"),
            "{:?}",
            third.err()
        );
        let _ = connection.close().await;
    });
}

/// `--amqp off`: the hub prints no `amqp listening` line and serves no AMQP port.
#[test]
fn amqp_off_listens_nowhere() {
    let hub = TestHub::start(&["--amqp", "off"]);
    assert_eq!(hub.amqp_port, None);
    assert!(!hub
        .first_stdout
        .iter()
        .any(|l| l.starts_with("amqp listening")));
}

/// The frame limit is what the hub's open announces (read from the bytes: a client learns it
/// nowhere else), and a client sending a frame past it is closed; the credit a client sending
/// to the hub gets is `--amqp-credit`.
#[test]
fn the_open_announces_the_frame_limit_and_a_larger_frame_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start(&["--amqp-max-frame-bytes", "600", "--amqp-credit", "7"]);
    bounded(async {
        let mut tls = tls_to(&hub).await;
        // SASL: header, then init ANONYMOUS; the hub sends its header, mechanisms, outcome.
        tls.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
        let mut init = vec![
            0, 0, 0, 25, 2, 1, 0, 0, 0x00, 0x53, 0x41, 0xc0, 0x0c, 0x01, 0xa3, 9,
        ];
        init.extend_from_slice(b"ANONYMOUS");
        tls.write_all(&init).await.unwrap();
        let mut header = [0u8; 8];
        tls.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x03\x01\x00\x00");
        for _ in 0..2 {
            read_frame(&mut tls).await; // mechanisms, outcome
        }
        // AMQP: header, then an open with container id "x"; the hub answers with its open.
        tls.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        tls.write_all(&[
            0, 0, 0, 17, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 1, b'x',
        ])
        .await
        .unwrap();
        tls.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x01\x00\x00");
        let open = read_frame(&mut tls).await;
        assert_eq!(&open[..3], &[0x00, 0x53, 0x10], "an open performative");
        assert_eq!(max_frame_size_of_open(&open), 600);
        // A begin whose properties hold a short string is answered with the hub's begin...
        tls.write_all(&begin_frame(0, 10)).await.unwrap();
        let reply = read_frame(&mut tls).await;
        assert_eq!(&reply[..3], &[0x00, 0x53, 0x11], "a begin answers a begin");
        // A link to $cbs (no token needed for it) is given the configured credit.
        tls.write_all(&attach_sender_frame("$cbs")).await.unwrap();
        // fe2o3-amqp's acceptor grants its own 200 with the attach; the hub's flow right after
        // sets the configured credit (docs/decisions.md).
        let mut seen = Vec::new();
        let mut credits = Vec::new();
        while credits.len() < 2 {
            let frame = tokio::time::timeout(WAIT, read_frame(&mut tls))
                .await
                .unwrap_or_else(|_| panic!("no flow; performatives seen: {seen:x?}"));
            if frame[..3] == [0x00, 0x53, 0x13] {
                credits.push(flow_link_credit(&frame));
            }
            seen.push(frame[2]);
        }
        assert_eq!(credits, [Some(200), Some(7)], "--amqp-credit");
        // ...the same begin padded past 600 bytes is not.
        let frame = begin_frame(1, 700);
        assert!(frame.len() > 600);
        tls.write_all(&frame).await.unwrap();
        // The hub ends the connection (a close frame, then EOF, or EOF at once).
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection is closed");
    });
}

/// A begin on `channel` whose properties map holds one string of `padding` bytes.
fn begin_frame(channel: u16, padding: usize) -> Vec<u8> {
    // remote-channel null, next-outgoing-id 0, incoming-window and outgoing-window 4096,
    // handle-max, offered and desired capabilities null, then the properties map.
    let mut fields = vec![
        0x40, 0x43, 0x70, 0, 0, 0x10, 0, 0x70, 0, 0, 0x10, 0, 0x40, 0x40, 0x40, 0xd1,
    ];
    let mut map = vec![0xa3, 1, b'k', 0xb1];
    map.extend_from_slice(&(padding as u32).to_be_bytes());
    map.extend(std::iter::repeat_n(b'p', padding));
    fields.extend_from_slice(&((map.len() + 4) as u32).to_be_bytes());
    fields.extend_from_slice(&2u32.to_be_bytes());
    fields.extend_from_slice(&map);
    let mut body = vec![0x00, 0x53, 0x11, 0xd0];
    body.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    body.extend_from_slice(&8u32.to_be_bytes());
    body.extend_from_slice(&fields);
    let mut frame = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 0]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// An attach on channel 0, handle 0, of a sender (the client) to `address`.
fn attach_sender_frame(address: &str) -> Vec<u8> {
    let terminus = |descriptor: u8, address: &str| {
        let mut t = vec![
            0x00,
            0x53,
            descriptor,
            0xc0,
            (address.len() + 3) as u8,
            1,
            0xa1,
        ];
        t.push(address.len() as u8);
        t.extend_from_slice(address.as_bytes());
        t
    };
    let source = terminus(0x28, "client");
    let target = terminus(0x29, address);
    // name "l", handle 0, role sender, settle modes null, source, target, unsettled and
    // incomplete-unsettled null, initial-delivery-count 0.
    let mut fields = vec![0xa1, 1, b'l', 0x43, 0x42, 0x40, 0x40];
    fields.extend_from_slice(&source);
    fields.extend_from_slice(&target);
    fields.extend_from_slice(&[0x40, 0x40, 0x43]);
    let mut body = vec![0x00, 0x53, 0x12, 0xd0];
    body.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    body.extend_from_slice(&10u32.to_be_bytes());
    body.extend_from_slice(&fields);
    let mut frame = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 0, 0, 0]);
    frame.extend_from_slice(&body);
    frame
}

/// The link-credit of a flow performative's body (its seventh field), if the flow has one.
fn flow_link_credit(flow: &[u8]) -> Option<u32> {
    let (mut at, count) = match flow[3] {
        0xc0 => (6, flow[5] as usize),
        0xd0 => (
            12,
            u32::from_be_bytes(flow[8..12].try_into().unwrap()) as usize,
        ),
        other => panic!("list constructor {other:#x}"),
    };
    let mut values = Vec::new();
    for _ in 0..count.min(7) {
        let (value, width) = match flow[at] {
            0x40 => (None, 1),
            0x43 => (Some(0), 1),
            0x52 => (Some(u32::from(flow[at + 1])), 2),
            0x70 => (
                Some(u32::from_be_bytes(flow[at + 1..at + 5].try_into().unwrap())),
                5,
            ),
            other => panic!("uint or null expected, found {other:#x}"),
        };
        values.push(value);
        at += width;
    }
    values.get(6).copied().flatten()
}

/// One frame's body (after its 8-byte header).
async fn read_frame(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await.unwrap();
    let size = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let doff = head[4] as usize * 4;
    let mut rest = vec![0u8; size - 8];
    stream.read_exact(&mut rest).await.unwrap();
    rest.split_off(doff - 8)
}

/// The max-frame-size field of an open performative's body: its list's third field, after the
/// container id (a string) and the host name (null or a string).
fn max_frame_size_of_open(open: &[u8]) -> u32 {
    let mut at = match open[3] {
        0xc0 => 6,
        0xd0 => 12,
        other => panic!("list constructor {other:#x}"),
    };
    for _ in 0..2 {
        at += match open[at] {
            0x40 => 1,
            0xa1 => 2 + open[at + 1] as usize,
            0xb1 => 5 + u32::from_be_bytes(open[at + 1..at + 5].try_into().unwrap()) as usize,
            other => panic!("string or null expected, found {other:#x}"),
        };
    }
    match open[at] {
        0x70 => u32::from_be_bytes(open[at + 1..at + 5].try_into().unwrap()),
        0x52 => u32::from(open[at + 1]),
        0x43 => 0,
        other => panic!("uint expected, found {other:#x}"),
    }
}

/// A token of a policy without ServiceConnect (`registryRead`) is a good token (put-token 200),
/// but under it a cloud-to-device message is Rejected with `amqp:unauthorized-access` and a 403
/// naming ServiceConnect (nothing queued), and an Event Hubs reader's link is detached likewise.
#[test]
fn a_policy_without_service_connect_puts_its_token_but_neither_sends_nor_reads() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "amqp-3", "--auth", "sas"]));
    let key = hub.policy_key("registryRead");
    let token = hub.token("registryRead", &key, 3600);
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &token).await, 200);
        let mut sender = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .unwrap();
        match sender.send(c2d("amqp-3", "m-1")).await.unwrap() {
            Outcome::Rejected(r) => {
                let e = r.error.expect("an error");
                assert!(
                    format!("{:?}", e.condition).contains("UnauthorizedAccess"),
                    "{e:?}"
                );
                let text = e.description.unwrap_or_default();
                assert!(
                    text.starts_with("403") && text.contains("ServiceConnect"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let refused = reader_refusal(
            &mut session,
            "reader",
            "iothub/ConsumerGroups/$Default/Partitions/0",
            Some("amqp.annotation.x-opt-offset > '-1'"),
        )
        .await;
        assert!(
            refused.contains("UnauthorizedAccess") && refused.contains("ServiceConnect"),
            "{refused}"
        );
        let _ = connection.close().await;
    });
    assert!(queued(&hub, "amqp-3").is_empty());
}

/// `--amqp-max-frame-bytes 512`: a cloud-to-device message of 4000 bytes, which the client must
/// split over several transfer frames of at most 512 bytes, is reassembled by the hub, Accepted,
/// and queued whole.
#[test]
fn a_message_larger_than_the_frame_limit_arrives_in_fragments() {
    let hub = TestHub::start(&["--amqp-max-frame-bytes", "512"]);
    ok(&hub.cli(&["device", "add", "amqp-4", "--auth", "sas"]));
    let owner = hub.owner_token();
    let body: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut sender = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .unwrap();
        let mut message = c2d("amqp-4", "big");
        message.body = Body::Data(vec![Data(Binary::from(body.clone()))].into());
        let outcome = tokio::time::timeout(WAIT, sender.send(message))
            .await
            .expect("settled")
            .unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let _ = connection.close().await;
    });
    let listed = hub.get_json("/devices/amqp-4/messages/devicebound");
    let queued = &listed["value"][0];
    assert_eq!(queued["messageId"], "big");
    assert_eq!(
        queued["body"].as_str().map(str::as_bytes),
        Some(&body[..]),
        "the whole body is queued"
    );
}

/// `--amqp-credit 5`: ten cloud-to-device messages sent without waiting for their settlements (the
/// client may have only as many in flight as the hub's credit allows, and the hub renews it as it
/// settles them) are all Accepted, and queued in the order sent.
#[test]
fn more_messages_than_the_credit_are_all_accepted_in_order() {
    let hub = TestHub::start(&["--amqp-credit", "5"]);
    ok(&hub.cli(&["device", "add", "amqp-5", "--auth", "sas"]));
    let owner = hub.owner_token();
    let ids: Vec<String> = (0..10).map(|i| format!("m-{i}")).collect();
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut sender = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .unwrap();
        let mut pending = Vec::new();
        for id in &ids {
            let sent = tokio::time::timeout(WAIT, sender.send_batchable(c2d("amqp-5", id)))
                .await
                .unwrap_or_else(|_| panic!("no credit to send {id}"))
                .unwrap();
            pending.push(sent);
        }
        for (id, settlement) in ids.iter().zip(pending) {
            let outcome = tokio::time::timeout(WAIT, settlement)
                .await
                .unwrap_or_else(|_| panic!("{id} not settled"))
                .unwrap();
            assert!(matches!(outcome, Outcome::Accepted(_)), "{id}: {outcome:?}");
        }
        let _ = connection.close().await;
    });
    // The queue is listed newest first: its ids, oldest first, are those sent, in that order.
    let mut oldest_first = queued(&hub, "amqp-5");
    oldest_first.reverse();
    assert_eq!(oldest_first, ids);
}

/// An Event Hubs reader (a receiver from `iothub/ConsumerGroups/$Default/Partitions/{p}` with the
/// selector filter, a value described by `apache.org:selector-filter:string`) gets the telemetry a
/// device published over MQTT: from the start with `x-opt-offset > '-1'`, from after a sequence
/// number with `x-opt-sequence-number > 'n'`, and then live; each event carries the device's body,
/// message id and properties, and the annotations `x-opt-sequence-number` (the log's),
/// `x-opt-offset` and `iothub-connection-device-id`. A bad selector, an unknown partition,
/// consumer group or event hub each detach the reader's link with an error naming the problem.
#[test]
fn an_event_hubs_reader_receives_telemetry_from_the_position_its_selector_names() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["eh-1"]);
    let (mut device, code) = RawDevice::connect(
        &hub,
        &hub.dir.join("eh-1.pem"),
        &hub.dir.join("eh-1.key"),
        "eh-1",
    )
    .unwrap();
    assert_eq!(code, 0, "CONNACK");
    device
        .publish(
            "devices/eh-1/messages/events/%24.mid=t-1&alert=hot",
            b"reading-1",
            1,
        )
        .unwrap();
    device
        .publish("devices/eh-1/messages/events/", b"reading-2", 2)
        .unwrap();
    let logged = hub.get_json("/messages?from=1")["value"].clone();
    let logged = logged.as_array().expect("the telemetry log");
    assert_eq!(logged.len(), 2, "{logged:?}");
    let partition = logged[0]["partition"].as_u64().unwrap();
    let sequences: Vec<i64> = logged
        .iter()
        .map(|m| m["sequenceNumber"].as_i64().unwrap())
        .collect();
    let owner = hub.owner_token();
    let address = format!("iothub/ConsumerGroups/$Default/Partitions/{partition}");
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut all = reader(
            &mut session,
            "from-start",
            &address,
            Some("amqp.annotation.x-opt-offset > '-1'"),
        )
        .await
        .expect("the reader is attached");
        let first = next_event(&mut all).await;
        assert_eq!(first.body, b"reading-1");
        assert_eq!(first.sequence, sequences[0]);
        assert_eq!(first.offset, sequences[0].to_string());
        assert_eq!(first.device.as_deref(), Some("eh-1"));
        assert_eq!(first.message_id.as_deref(), Some("t-1"));
        assert_eq!(first.alert.as_deref(), Some("hot"));
        let second = next_event(&mut all).await;
        assert_eq!(second.body, b"reading-2");
        assert_eq!(second.sequence, sequences[1]);
        assert_eq!(second.device.as_deref(), Some("eh-1"));
        // A second reader of the group (readers without an owner level share a partition),
        // starting after the first event.
        let mut later = reader(
            &mut session,
            "after-first",
            &address,
            Some(&format!(
                "amqp.annotation.x-opt-sequence-number > '{}'",
                sequences[0]
            )),
        )
        .await
        .expect("the second reader is attached");
        assert_eq!(next_event(&mut later).await.body, b"reading-2");
        // Live: an event published now reaches both readers.
        device
            .publish("devices/eh-1/messages/events/", b"reading-3", 3)
            .unwrap();
        let third = next_event(&mut all).await;
        assert_eq!(third.body, b"reading-3");
        assert_eq!(third.sequence, sequences[1] + 1);
        assert_eq!(next_event(&mut later).await.body, b"reading-3");
        let from_start = Some("amqp.annotation.x-opt-offset > '-1'");
        for (name, address, selector, condition, expected) in [
            (
                "bad-selector",
                address.as_str(),
                Some("amqp.annotation.x-opt-partition-key > '1'"),
                "AmqpError(InvalidField)",
                "400004 ArgumentInvalid: the selector filter is not understood",
            ),
            (
                "no-partition",
                "iothub/ConsumerGroups/$Default/Partitions/99",
                from_start,
                "AmqpError(InvalidField)",
                "partition '99' does not exist; this hub's partitions are 0 to 3",
            ),
            (
                "no-group",
                "iothub/ConsumerGroups/nobody/Partitions/0",
                from_start,
                "AmqpError(NotFound)",
                "404054 ConsumerGroupNotFound: consumer group 'nobody' does not exist",
            ),
            (
                "no-hub",
                "other/ConsumerGroups/$Default/Partitions/0",
                from_start,
                // Any condition: the text names the problem.
                "RemoteClosedWithError",
                "no event hub named 'other'; this hub's is 'iothub'",
            ),
        ] {
            let refused = reader_refusal(&mut session, name, address, selector).await;
            assert!(
                refused.contains(condition) && refused.contains(expected),
                "{name}: {refused}"
            );
        }
        let _ = connection.close().await;
    });
    device.disconnect();
}

/// The name of the selector filter Event Hubs readers send.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

/// The selector filter's value: `text` described by [`SELECTOR_FILTER`]. fe2o3-amqp does not
/// re-export serde_amqp's `Described`/`Descriptor`, so a described value is taken from a type
/// that converts into one and its descriptor replaced by one deserialized as the symbol's.
fn selector_filter(text: &str) -> Value {
    use serde::de::value::{Error, MapAccessDeserializer, MapDeserializer};
    use serde::Deserialize;
    let Value::Described(mut described) = Value::from(DeleteOnClose::new()) else {
        unreachable!("a lifetime policy is a described value")
    };
    // A descriptor is an enum whose variant is picked by the format code: 0xa3 is sym8.
    let name = MapDeserializer::<_, Error>::new(std::iter::once((0xa3u8, SELECTOR_FILTER)));
    described.descriptor = Deserialize::deserialize(MapAccessDeserializer::new(name))
        .expect("a descriptor named by a symbol");
    described.value = Value::String(text.to_string());
    Value::Described(described)
}

/// Attaches an Event Hubs reader named `name` from `address`, with `selector` as its filter.
async fn reader(
    session: &mut SessionHandle<()>,
    name: &str,
    address: &str,
    selector: Option<&str>,
) -> Result<Receiver, String> {
    let mut source = Source::builder().address(address.to_string());
    if let Some(selector) = selector {
        source =
            source.add_to_filter_using_legacy_format(SELECTOR_FILTER, selector_filter(selector));
    }
    tokio::time::timeout(
        WAIT,
        Receiver::builder()
            .name(name)
            .source(source.build())
            .target(format!("{name}-here"))
            .attach(session),
    )
    .await
    .expect("the attach is answered")
    .map_err(|e| format!("{e:?}"))
}

/// Why the hub refused a reader: the attach's error, or the error its link was detached with.
async fn reader_refusal(
    session: &mut SessionHandle<()>,
    name: &str,
    address: &str,
    selector: Option<&str>,
) -> String {
    let mut receiver = match reader(session, name, address, selector).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    match tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>()).await {
        Ok(Err(e)) => format!("{e:?}"),
        Ok(Ok(d)) => panic!("{name}: the reader got an event: {:?}", d.message()),
        Err(_) => panic!("{name}: the reader's link stays attached"),
    }
}

/// What a test reads of one event.
struct Event {
    body: Vec<u8>,
    sequence: i64,
    offset: String,
    device: Option<String>,
    message_id: Option<String>,
    alert: Option<String>,
}

/// The next event on a reader's link, accepted.
async fn next_event(receiver: &mut Receiver) -> Event {
    let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .expect("an event")
        .unwrap();
    receiver.accept(&delivery).await.unwrap();
    let message = delivery.message();
    let body = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        other => panic!("the body is data: {other:?}"),
    };
    let annotations = message
        .message_annotations
        .as_ref()
        .expect("message annotations");
    let annotation = |name: &str| {
        annotations
            .0
            .get(&OwnedKey::Symbol(Symbol::from(name)))
            .cloned()
    };
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let sequence = match annotation("x-opt-sequence-number") {
        Some(Value::Long(n)) => n,
        other => panic!("x-opt-sequence-number: {other:?}"),
    };
    Event {
        body,
        sequence,
        offset: text(annotation("x-opt-offset")).expect("x-opt-offset"),
        device: text(annotation("iothub-connection-device-id")),
        message_id: match message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone())
        {
            Some(MessageId::String(s)) => Some(s),
            _ => None,
        },
        alert: match message
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get("alert"))
        {
            Some(SimpleValue::String(s)) => Some(s.clone()),
            _ => None,
        },
    }
}

/// A feedback receiver that grants no credit holds nothing up: the batch the hub took for it is
/// given back uncounted before its lock runs out (`--c2d-feedback-lock 5s`), and once credit
/// comes the batch arrives as a first delivery; the receiver's Accepted completes it.
#[test]
fn a_feedback_receiver_without_credit_gets_its_batch_uncounted_once_credit_comes() {
    use fe2o3_amqp::link::receiver::CreditMode;
    let hub = TestHub::start(&["--c2d-feedback-lock", "5s"]);
    ok(&hub.cli(&["device", "add", "fb-1", "--auth", "sas"]));
    ok(&hub.cli(&[
        "c2d",
        "send",
        "fb-1",
        "never taken",
        "--message-id",
        "fb-m1",
        "--ack",
        "negative",
        "--ttl",
        "1",
    ]));
    std::thread::sleep(Duration::from_millis(1100));
    let owner = hub.owner_token();
    bounded(async {
        let mut connection = open(&hub).await;
        let mut session = Session::begin(&mut connection).await.unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut receiver = Receiver::builder()
            .name("feedback")
            .source("/messages/serviceBound/feedback")
            .target("feedback-here")
            .credit_mode(CreditMode::Manual)
            .attach(&mut session)
            .await
            .unwrap();
        // Past one lock: the hub had to give the batch back at least once.
        tokio::time::sleep(Duration::from_secs(7)).await;
        receiver.set_credit(1).await.unwrap();
        let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
            .await
            .expect("the batch once credit comes")
            .unwrap();
        let message = delivery.message();
        let count = message.message_annotations.as_ref().and_then(|a| {
            a.0.get(&OwnedKey::Symbol(Symbol::from("iothub-deliverycount")))
                .cloned()
        });
        assert_eq!(
            count,
            Some(Value::Long(1)),
            "released takes are not counted"
        );
        let body: Vec<u8> = match &message.body {
            Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
            other => panic!("{other:?}"),
        };
        let records: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(records[0]["originalMessageId"], "fb-m1");
        assert_eq!(records[0]["statusCode"], "Expired");
        receiver.accept(&delivery).await.unwrap();
        let _ = connection.close().await;
    });
    // Accepted: completed, so HTTPS finds nothing.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = hub
            .client()
            .get(format!("{}/messages/serviceBound/feedback", hub.base()))
            .header("Authorization", hub.owner_token())
            .send()
            .unwrap()
            .status()
            .as_u16();
        if status == 204 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the accepted batch is still queued"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--amqp-token-refusals 3`: each wrong token is answered 401 with its reason, and the third
/// closes the connection with `amqp:unauthorized-access` naming the setting.
#[test]
fn a_connection_that_has_too_many_tokens_refused_is_closed() {
    let hub = TestHub::start(&["--amqp-token-refusals", "3"]);
    let wrong = hub.token("iothubowner", &"A".repeat(44), 3600);
    bounded(async {
        let mut connection = open(&hub).await;
        // put_token attaches its links under fixed names: one session per attempt.
        for _ in 0..2 {
            let mut session = Session::begin(&mut connection).await.unwrap();
            assert_eq!(put_token(&mut session, &wrong).await, 401);
        }
        // The third refusal is answered, then the connection closes.
        let mut third = Session::begin(&mut connection).await.unwrap();
        let _ = tokio::time::timeout(WAIT, put_token(&mut third, &wrong)).await;
        let closed = tokio::time::timeout(WAIT, connection.on_close())
            .await
            .expect("the hub closes the connection");
        let text = format!("{closed:?}");
        assert!(
            text.contains("UnauthorizedAccess") && text.contains("--amqp-token-refusals"),
            "{text}"
        );
    });
}
