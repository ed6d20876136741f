//! The MQTT decoder on arbitrary bytes, as a device stream: typed errors, no panic, no packet
//! larger than the limit, and every decoded packet re-encodes.
#![no_main]
use bytes::BytesMut;
use iothub_mqtt::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match decode(&mut buf, 4096) {
            Ok(Some(packet)) => {
                let mut out = BytesMut::new();
                encode(&packet, &mut out).expect("a decoded packet re-encodes");
                let mut again = out.clone();
                assert_eq!(
                    decode(&mut again, usize::MAX).expect("round trip"),
                    Some(packet)
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
});
