//! A CA made once per fuzzing process ("CN=fuzz-signing-ca", EC P-256) that signs fuzzed
//! TBSCertificates, so a target reaches the checks that come after the signature: without it,
//! every mutated certificate fails the signature check first. Shared by `verify_proof` and
//! `device_chain` (included with `#[path]`).
use std::sync::OnceLock;

use iothub_pki::gen::{self, KeyKind};
use iothub_pki::CertInfo;
use rcgen::SigningKey;

pub struct Signer {
    pub ca: CertInfo,
    key: rcgen::KeyPair,
}

pub fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let from = time::OffsetDateTime::from_unix_timestamp(946_684_800).expect("2000");
        let to = time::OffsetDateTime::from_unix_timestamp(4_102_444_800).expect("2100");
        let g = gen::make_ca("fuzz-signing-ca", KeyKind::EcP256, None, from, to).expect("CA");
        let der = iothub_pki::parse_certificate_input(g.cert_pem.as_bytes(), usize::MAX)
            .expect("generated CA");
        Signer {
            ca: CertInfo::from_der(&der).expect("generated CA"),
            key: rcgen::KeyPair::from_pem(&g.key_pem).expect("generated key"),
        }
    })
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
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
}

/// ecdsa-with-SHA256, the algorithm the signature below is always made with.
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

impl Signer {
    /// A Certificate: `tbs` as given (any bytes), the outer signatureAlgorithm ecdsa-with-SHA256,
    /// and an ECDSA P-256 SHA-256 signature of `tbs` by this CA.
    pub fn certificate(&self, tbs: &[u8]) -> Vec<u8> {
        let signature = self.key.sign(tbs).expect("signs");
        let mut bits = vec![0u8];
        bits.extend_from_slice(&signature);
        let mut body = tbs.to_vec();
        body.extend_from_slice(ECDSA_SHA256);
        push_tlv(&mut body, 0x03, &bits);
        let mut out = Vec::with_capacity(body.len() + 4);
        push_tlv(&mut out, 0x30, &body);
        out
    }
}
