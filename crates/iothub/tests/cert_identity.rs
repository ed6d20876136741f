//! Security review, issue 16, finding 7, over the real binary: a device certificate from a
//! Verified CA whose CN is not a text string (the bytes DE AD, which read as "DEAD" before) is
//! refused at CONNECT with CONNACK 5 and a reason that says so, and a CA upload carrying its
//! private key is refused with 400077 without echoing the key.

mod common;

use common::*;

/// (header length, content length) of the TLV at the start of `d` (DER: definite lengths).
fn header(d: &[u8]) -> (usize, usize) {
    let first = d[1] as usize;
    if first < 0x80 {
        (2, first)
    } else {
        let n = first & 0x7f;
        (
            2 + n,
            d[2..2 + n]
                .iter()
                .fold(0, |acc, b| (acc << 8) | *b as usize),
        )
    }
}

fn items(mut d: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let (h, l) = header(d);
        out.push(d[..h + l].to_vec());
        d = &d[h + l..];
    }
    out
}

fn content(d: &[u8]) -> &[u8] {
    let (h, l) = header(d);
    &d[h..h + l]
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

/// `cert` with the subject `subject` (DER), signed again by the CA key `ca_key_pem` (the
/// algorithms as they were: the CA key made the original signature).
fn with_subject(cert: &[u8], subject: Vec<u8>, ca_key_pem: &str) -> Vec<u8> {
    use rcgen::SigningKey;
    let outer = items(content(cert));
    let mut fields = items(content(&outer[0]));
    fields[5] = subject;
    let tbs = tlv(0x30, &fields.concat());
    let key = rcgen::KeyPair::from_pem(ca_key_pem).expect("CA key");
    let mut bits = vec![0u8];
    bits.extend_from_slice(&key.sign(&tbs).expect("signs"));
    tlv(0x30, &[tbs, outer[1].clone(), tlv(0x03, &bits)].concat())
}

#[test]
fn a_device_cn_that_is_not_text_is_refused_at_connect() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["DEAD"]);
    let dir = &hub.dir;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let leaf = pem_der(&read("DEAD.pem"));
    // CN = OCTET STRING DE AD.
    let octet_cn = tlv(
        0x30,
        &tlv(
            0x31,
            &tlv(
                0x30,
                &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(0x04, &[0xde, 0xad])].concat(),
            ),
        ),
    );
    let forged = with_subject(&leaf, octet_cn, &read("root.key"));
    std::fs::write(
        dir.join("DEAD-octet.pem"),
        iothub_pki::input::der_to_pem(&forged),
    )
    .unwrap();

    let (_, code) = RawDevice::connect(
        &hub,
        &dir.join("DEAD-octet.pem"),
        &dir.join("DEAD.key"),
        "DEAD",
    )
    .expect("TLS completes; the decision is at CONNECT");
    assert_eq!(code, 5, "a CN of bytes DE AD must not connect as DEAD");
    let reason = latest_refusal(&hub, "DEAD");
    assert!(
        reason.contains("the leaf certificate's CN is an OCTET STRING, not a text string"),
        "{reason}"
    );

    // The genuine certificate (CN "DEAD" as text) connects.
    let (device, code) =
        RawDevice::connect(&hub, &dir.join("DEAD.pem"), &dir.join("DEAD.key"), "DEAD").unwrap();
    assert_eq!(code, 0);
    device.disconnect();
}

#[test]
fn a_ca_upload_with_its_private_key_is_400077() {
    let hub = TestHub::start(&[]);
    let dir = &hub.dir;
    ok(&hub.cli_in(dir, &["pki", "ca", "bundled", "--force"]));
    let key = std::fs::read_to_string(dir.join("bundled.key")).unwrap();
    let bundle = format!(
        "{}{key}",
        std::fs::read_to_string(dir.join("bundled.pem")).unwrap()
    );
    std::fs::write(dir.join("bundle.pem"), &bundle).unwrap();
    let out = hub.cli_in(dir, &["cert", "add", "bundled", "bundle.pem"]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        (text.contains("400077") || text.contains("CertificatePrivateKeyIncluded"))
            && text.contains("must never leave"),
        "{text}"
    );
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!text.contains(line), "the key is echoed: {text}");
    }
    let audit = hub.get_json("/audit");
    assert!(!audit.to_string().contains(key.lines().nth(1).unwrap()));
    // Nothing was registered.
    let list = hub.get_json("/certificates");
    assert!(!list.to_string().contains("bundled"), "{list}");
}
