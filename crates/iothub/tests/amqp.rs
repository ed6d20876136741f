//! The AMQP endpoint's refusals and limits, end to end over real TLS with an AMQP client
//! (`fe2o3-amqp`'s): a connection without a token is closed at `--amqp-auth-timeout`; links and
//! sessions past `--amqp-max-links` / `--amqp-max-sessions` are refused with
//! `amqp:resource-limit-exceeded` (sessions also by the channel-max the open announces); put-token answers 200 for a good token and 401 for a wrong key
//! or an expired one; a cloud-to-device message is Accepted and queued, Rejected for an unknown
//! device (with the hub's code), and refused without a token; `--amqp off` listens nowhere. The
//! official SDKs' view is tests/sdk/test_amqp.py.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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

#[test]
fn a_good_token_sends_cloud_to_device_messages_and_an_unknown_device_is_rejected_with_its_code() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "amqp-1", "--auth", "sas"]));
    let owner = hub.owner_token();
    runtime().block_on(async {
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

#[test]
fn wrong_and_expired_tokens_are_answered_401_and_a_link_without_a_token_is_refused() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "amqp-2", "--auth", "sas"]));
    let wrong = hub.token("iothubowner", &"A".repeat(44), 3600);
    let key = hub.policy_key("iothubowner");
    let expired = hub.token("iothubowner", &key, -10);
    runtime().block_on(async {
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

#[test]
fn a_connection_without_a_token_is_closed_at_the_auth_timeout() {
    let hub = TestHub::start(&["--amqp-auth-timeout", "2s"]);
    runtime().block_on(async {
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

#[test]
fn links_and_sessions_past_their_limits_are_refused() {
    let hub = TestHub::start(&["--amqp-max-links", "3", "--amqp-max-sessions", "2"]);
    runtime().block_on(async {
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
    runtime().block_on(async {
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
