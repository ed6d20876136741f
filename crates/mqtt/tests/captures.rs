//! Bytes captured from real clients on loopback, decoded as the gateway will see them.
//!
//! Captured with a plain TCP listener on 127.0.0.1 (a fake broker answering CONNACK 0, PUBACK and
//! SUBACK): paho-mqtt 1.6.1 configured exactly as azure-iot-device 2.14.0 configures it
//! (`docs/azure-wire.md#mqtt-connect`: client id `dev1`, CleanSession 0, keep-alive 60, the SDK's
//! username, no password; TLS left out, it does not change the MQTT bytes), and mosquitto_pub /
//! mosquitto_sub 2.0.11.

use bytes::{Bytes, BytesMut};
use iothub_mqtt::codec::{decode, encode, Connect, Packet, Publish, Subscribe, Will};
use iothub_mqtt::topics::{device_may_publish, device_may_subscribe, DeviceTopic};

const MAX: usize = 256 * 1024 + 64 * 1024;

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Decodes every packet of `bytes`, checks nothing is left, and checks that re-encoding the packets
/// gives back the captured bytes.
fn decode_stream(hex: &str) -> Vec<Packet> {
    let bytes = unhex(hex);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut packets = Vec::new();
    while let Some(p) = decode(&mut buf, MAX).unwrap() {
        packets.push(p);
    }
    assert!(buf.is_empty(), "undecoded bytes left");
    let mut out = BytesMut::new();
    for p in &packets {
        encode(p, &mut out).unwrap();
    }
    assert_eq!(&out[..], &bytes[..], "re-encoding differs from the capture");
    packets
}

const AZURE_IOT_DEVICE_CONNECT: &str = "10a40100044d5154540480003c00046465763100926c6f63616c686f73742f646576312f3f6170692d76657273696f6e3d323031392d31302d303126446576696365436c69656e74547970653d617a7572652d696f742d6465766963652d696f746875622d7079253246322e31342e30253238507974686f6e253230332e31312e392533424c696e7578253230362e312e302d31382d616d6436342533427838365f3634253239";

#[test]
fn azure_iot_device_connect() {
    let packets = decode_stream(AZURE_IOT_DEVICE_CONNECT);
    assert_eq!(
        packets,
        vec![Packet::Connect(Connect {
            protocol_level: 4,
            client_id: "dev1".into(),
            clean_session: false,
            keep_alive: 60,
            username: Some(
                "localhost/dev1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%28Python%203.11.9%3BLinux%206.1.0-18-amd64%3Bx86_64%29".into()
            ),
            password: None,
            will: None,
        })]
    );
}

#[test]
fn mosquitto_pub_default_connect() {
    // mosquitto_pub with no client id: an empty id, clean session, keep-alive 60.
    let packets = decode_stream("100c00044d5154540402003c0000");
    assert_eq!(
        packets,
        vec![Packet::Connect(Connect {
            protocol_level: 4,
            client_id: String::new(),
            clean_session: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
        })]
    );
}

#[test]
fn mosquitto_pub_connect_with_will_and_credentials() {
    // mosquitto_pub -i dev1 -u ... -P secret --will-topic devices/dev1/messages/events/
    //   --will-payload bye --will-qos 1 -k 30
    let packets = decode_stream("106400044d51545404ce001e000464657631001d646576696365732f646576312f6d657373616765732f6576656e74732f000362796500266c6f63616c686f73742f646576312f3f6170692d76657273696f6e3d323031392d31302d30310006736563726574");
    assert_eq!(
        packets,
        vec![Packet::Connect(Connect {
            protocol_level: 4,
            client_id: "dev1".into(),
            clean_session: true,
            keep_alive: 30,
            username: Some("localhost/dev1/?api-version=2019-10-01".into()),
            password: Some(b"secret".to_vec()),
            will: Some(Will {
                topic: "devices/dev1/messages/events/".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: false,
            }),
        })]
    );
}

#[test]
fn mosquitto_pub_mqtt_3_1_connect() {
    // mosquitto_pub -V mqttv31: decoded, so that the gateway can answer CONNACK 1.
    let packets = decode_stream("101200064d51497364700302003c000464657631");
    let [Packet::Connect(c)] = &packets[..] else {
        panic!("expected one CONNECT: {packets:?}");
    };
    assert_eq!((c.protocol_level, c.client_id.as_str()), (3, "dev1"));
}

#[test]
fn mosquitto_pub_qos1_session() {
    // CONNECT, PUBLISH QoS 1 (after the fake broker's CONNACK), DISCONNECT (after its PUBACK).
    let packets = decode_stream("101000044d5154540402003c00046465763132440036646576696365732f646576312f6d657373616765732f6576656e74732f2532342e63743d6170706c69636174696f6e2532466a736f6e00017b2274223a32312e357de000");
    assert_eq!(packets.len(), 3);
    assert_eq!(
        packets[1],
        Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: "devices/dev1/messages/events/%24.ct=application%2Fjson".into(),
            pkid: 1,
            payload: Bytes::from_static(b"{\"t\":21.5}"),
        })
    );
    assert_eq!(packets[2], Packet::Disconnect);
    let Packet::Publish(p) = &packets[1] else {
        unreachable!()
    };
    assert_eq!(
        device_may_publish("dev1", &p.topic),
        Ok(DeviceTopic::Telemetry {
            device_id: "dev1",
            module_id: None,
            bag: "%24.ct=application%2Fjson"
        })
    );
}

#[test]
fn mosquitto_sub_subscribe_session() {
    // mosquitto_sub -c -q 1 -t devices/dev1/messages/devicebound/# -t '$iothub/twin/res/#'
    let packets = decode_stream("101000044d5154540400003c000464657631823d00010023646576696365732f646576312f6d657373616765732f646576696365626f756e642f2301001224696f746875622f7477696e2f7265732f2301e000");
    assert_eq!(
        packets[1],
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![
                ("devices/dev1/messages/devicebound/#".into(), 1),
                ("$iothub/twin/res/#".into(), 1),
            ],
        })
    );
    let Packet::Subscribe(s) = &packets[1] else {
        unreachable!()
    };
    for (filter, _) in &s.filters {
        assert_eq!(device_may_subscribe("dev1", filter), Ok(()));
        assert!(device_may_subscribe("dev2", filter).is_err() || filter.starts_with('$'));
    }
}
