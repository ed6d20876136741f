//! Shared fixtures of the iothub-pki integration tests.
//!
//! - Real CAs generated once per test binary with the crate's own `gen` module (so every test works
//!   on certificates exactly as the hub makes them), plus "impostor" CAs with the same subject name
//!   but another key.
//! - rcgen helpers to shape verification certificates the crate's generator never makes (no CN, two
//!   CNs, any validity window).
//! - A tiny DER toolkit to rewrite a certificate's TBS and re-sign it, and independent SHA-1 and RSA
//!   (PKCS#1 v1.5) implementations, so that tests can build genuinely SHA-1-signed certificates
//!   that rcgen and aws-lc-rs refuse to make.
#![allow(dead_code)]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
pub use base64::Engine;
use iothub_pki::gen::{self, CaIssuer, Generated, KeyKind};
use iothub_pki::pop::CodeState;
use iothub_pki::CertInfo;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The fixed "now" of every test: 2025-06-15T15:06:40Z.
pub const NOW: i64 = 1_750_000_000;
pub const NOW_TEXT: &str = "2025-06-15T15:06:40Z";
pub const DAY: i64 = 86_400;
pub const MAX: usize = iothub_pki::DEFAULT_MAX_CERTIFICATE_BYTES;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn t(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("unix time in range")
}

/// Unix seconds as RFC 3339 UTC text, e.g. `2025-06-15T15:06:40Z`.
pub fn rfc3339(unix: i64) -> String {
    t(unix)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}

/// A CA made by `iothub_pki::gen::make_ca`, with everything a test needs about it.
pub struct Ca {
    /// The PEM `make_ca` wrote (an intermediate is followed by its parent).
    pub chain_pem: String,
    /// The CA certificate alone.
    pub der: Vec<u8>,
    pub key_pem: String,
    pub info: CertInfo,
    pub issuer: CaIssuer,
}

impl Ca {
    pub fn from_generated(g: Generated) -> Ca {
        let der = first_der(&g.cert_pem);
        let info = CertInfo::from_der(&der).expect("generated CA parses");
        let issuer =
            CaIssuer::from_pem(&g.cert_pem, &g.key_pem).expect("generated CA loads as an issuer");
        Ca {
            chain_pem: g.cert_pem,
            der,
            key_pem: g.key_pem,
            info,
            issuer,
        }
    }

    /// The CA certificate alone, as PEM.
    pub fn pem(&self) -> String {
        pem_text(&self.der, "\n")
    }

    pub fn key(&self) -> KeyPair {
        KeyPair::from_pem(&self.key_pem).expect("CA key parses")
    }

    /// Signs `params` (subject key `subject_key`) with this CA through rcgen directly.
    pub fn sign(&self, params: &CertificateParams, subject_key: &KeyPair) -> Vec<u8> {
        let issuer = Issuer::from_ca_cert_der(&self.der.clone().into(), self.key())
            .expect("CA usable as an rcgen issuer");
        params
            .signed_by(subject_key, &issuer)
            .expect("rcgen signs")
            .der()
            .to_vec()
    }

    /// A well-formed verification certificate: subject CN = `cn`, valid NOW-300 .. NOW+3600.
    pub fn verification(&self, cn: &str) -> Vec<u8> {
        self.sign(&leaf_params(dn_cn(cn), NOW - 300, NOW + 3600), &p256_key())
    }

    /// Like [`Ca::verification`] with an explicit validity window.
    pub fn verification_valid(&self, cn: &str, not_before: i64, not_after: i64) -> Vec<u8> {
        self.sign(&leaf_params(dn_cn(cn), not_before, not_after), &p256_key())
    }
}

/// A root CA valid from 30 days before NOW to a year after.
pub fn root(cn: &str, kind: KeyKind) -> Ca {
    let g =
        gen::make_ca(cn, kind, None, t(NOW - 30 * DAY), t(NOW + 365 * DAY)).expect("make_ca root");
    Ca::from_generated(g)
}

/// An intermediate CA under `parent`, valid from 10 days before NOW to 200 days after.
pub fn intermediate(cn: &str, kind: KeyKind, parent: &Ca) -> Ca {
    let g = gen::make_ca(
        cn,
        kind,
        Some(&parent.issuer),
        t(NOW - 10 * DAY),
        t(NOW + 200 * DAY),
    )
    .expect("make_ca intermediate");
    Ca::from_generated(g)
}

pub const KINDS: [KeyKind; 4] = [
    KeyKind::EcP256,
    KeyKind::EcP384,
    KeyKind::Ed25519,
    KeyKind::Rsa(2048),
];

pub fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::EcP256 => "EC P-256",
        KeyKind::EcP384 => "EC P-384",
        KeyKind::Ed25519 => "Ed25519",
        KeyKind::Rsa(2048) => "RSA 2048",
        KeyKind::Rsa(_) => "RSA",
    }
}

fn slot(kind: KeyKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("a shared fixture exists for this key kind")
}

/// A root CA with subject `CN=root`, one per key kind, generated once per test binary.
pub fn shared_root(kind: KeyKind) -> &'static Ca {
    static ROOTS: [OnceLock<Ca>; 4] = [const { OnceLock::new() }; 4];
    ROOTS[slot(kind)].get_or_init(|| root("root", kind))
}

/// Another root CA with the very same subject `CN=root` (same DER bytes) but its own key.
pub fn impostor_root(kind: KeyKind) -> &'static Ca {
    static ROOTS: [OnceLock<Ca>; 4] = [const { OnceLock::new() }; 4];
    ROOTS[slot(kind)].get_or_init(|| root("root", kind))
}

/// An EC P-256 intermediate `CN=intermediate` under the shared EC P-256 root.
pub fn shared_intermediate() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        intermediate(
            "intermediate",
            KeyKind::EcP256,
            shared_root(KeyKind::EcP256),
        )
    })
}

pub fn p256_key() -> KeyPair {
    gen::generate_key(KeyKind::EcP256).expect("P-256 key")
}

pub fn dn_cn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// End-entity parameters as a verification certificate has them.
pub fn leaf_params(
    subject: DistinguishedName,
    not_before: i64,
    not_after: i64,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.not_before = t(not_before);
    p.not_after = t(not_after);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p
}

pub fn new_code() -> String {
    iothub_pki::pop::generate_code().expect("system random source")
}

/// A live code expiring an hour after NOW.
pub fn live(code: &str) -> CodeState {
    CodeState::Live {
        code: code.to_string(),
        expires_at: NOW + 3600,
    }
}

// ---------------------------------------------------------------------------------------------
// PEM / base64, written independently of `iothub_pki::input`.

/// PEM text of one DER certificate, 64 columns, with the given line end.
pub fn pem_text(der: &[u8], eol: &str) -> String {
    pem_block("CERTIFICATE", der, eol)
}

pub fn pem_block(label: &str, der: &[u8], eol: &str) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----{eol}");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str(eol);
    }
    out.push_str(&format!("-----END {label}-----{eol}"));
    out
}

/// Every CERTIFICATE block of a PEM text, decoded.
pub fn all_ders(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b = body.take().expect("END after BEGIN");
            out.push(B64.decode(b).expect("PEM body is base64"));
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

pub fn first_der(pem: &str) -> Vec<u8> {
    all_ders(pem)
        .into_iter()
        .next()
        .expect("a CERTIFICATE block")
}

pub fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

// ---------------------------------------------------------------------------------------------
// A tiny DER toolkit (definite lengths only, which is all DER has).

/// (tag, header length, content length) of the TLV at the start of `d`.
pub fn tlv_header(d: &[u8]) -> (u8, usize, usize) {
    let first = d[1] as usize;
    if first < 0x80 {
        (d[0], 2, first)
    } else {
        let n = first & 0x7f;
        let len = d[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (d[0], 2 + n, len)
    }
}

/// The content of the TLV at the start of `d`.
pub fn content(d: &[u8]) -> &[u8] {
    let (_, h, l) = tlv_header(d);
    &d[h..h + l]
}

/// The consecutive TLVs (complete, header included) of `d`.
pub fn tlv_items(mut d: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let (_, h, l) = tlv_header(d);
        out.push(&d[..h + l]);
        d = &d[h + l..];
    }
    out
}

pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
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

pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// Indexes of the TBSCertificate fields of a v3 certificate (explicit version first).
pub const TBS_SIGNATURE: usize = 2;
pub const TBS_ISSUER: usize = 3;
pub const TBS_VALIDITY: usize = 4;
pub const TBS_SUBJECT: usize = 5;

/// The TBSCertificate fields of a certificate, each a complete TLV.
pub fn tbs_items(cert: &[u8]) -> Vec<Vec<u8>> {
    let outer = tlv_items(content(cert));
    tlv_items(content(outer[0]))
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

/// The TBSCertificate of a certificate, as the complete TLV that is signed.
pub fn tbs_der(cert: &[u8]) -> Vec<u8> {
    tlv_items(content(cert))[0].to_vec()
}

/// Rebuilds `cert` with signature algorithm `alg` (in the TBS and outside it), the TBS fields
/// changed by `edit`, and the signature `sign(tbs)`.
pub fn rebuild(
    cert: &[u8],
    alg: &[u8],
    edit: impl FnOnce(&mut Vec<Vec<u8>>),
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    rebuild_with_algorithms(cert, alg, alg, edit, sign)
}

/// Like [`rebuild`], with `inner` as the signature algorithm inside the TBS (the signed one) and
/// `outer` as the certificate's signatureAlgorithm field, which RFC 5280 requires to be equal.
pub fn rebuild_with_algorithms(
    cert: &[u8],
    inner: &[u8],
    outer: &[u8],
    edit: impl FnOnce(&mut Vec<Vec<u8>>),
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut items = tbs_items(cert);
    items[TBS_SIGNATURE] = inner.to_vec();
    edit(&mut items);
    let tbs = seq(&items);
    let signature = sign(&tbs);
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    seq(&[tbs, outer.to_vec(), tlv(0x03, &bits)])
}

/// AlgorithmIdentifiers, DER.
pub const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// ecdsa-with-SHA384, 1.2.840.10045.4.3.3.
pub const ALG_ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
/// ecdsa-with-SHA256 with an explicit NULL parameter (the same OID, other bytes).
pub const ALG_ECDSA_SHA256_NULL: &[u8] = &[
    0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x05, 0x00,
];
/// sha1WithRSAEncryption, 1.2.840.113549.1.1.5.
pub const ALG_SHA1_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
];
/// sha1WithRSA (OIW), 1.3.14.3.2.29.
pub const ALG_SHA1_RSA_OIW: &[u8] = &[
    0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1d, 0x05, 0x00,
];
/// ecdsa-with-SHA1, 1.2.840.10045.4.1.
pub const ALG_ECDSA_SHA1: &[u8] = &[
    0x30, 0x09, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01,
];
/// dsa-with-sha1, 1.2.840.10040.4.3.
pub const ALG_DSA_SHA1: &[u8] = &[
    0x30, 0x09, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03,
];

/// Attribute type OIDs (content bytes) and string tags for [`name`].
pub const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
pub const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];
pub const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
pub const OID_DC: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19];
pub const UTF8: u8 = 0x0c;
pub const PRINTABLE: u8 = 0x13;
pub const IA5: u8 = 0x16;

/// A Name, DER: one SET per RDN, each holding the given (type, string tag, value) attributes.
pub fn name(rdns: &[&[(&[u8], u8, &str)]]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = rdns
        .iter()
        .map(|rdn| {
            let atvs: Vec<Vec<u8>> = rdn
                .iter()
                .map(|(oid, tag, value)| seq(&[tlv(0x06, oid), tlv(*tag, value.as_bytes())]))
                .collect();
            tlv(0x31, &atvs.concat())
        })
        .collect();
    seq(&rdns)
}

/// A Name, DER, with one RDN per attribute, each value given as its raw tag and content bytes:
/// for values no string type can hold (an OCTET STRING, a SEQUENCE, invalid text).
pub fn name_raw(attributes: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = attributes
        .iter()
        .map(|(oid, tag, value)| tlv(0x31, &seq(&[tlv(0x06, oid), tlv(*tag, value)])))
        .collect();
    seq(&rdns)
}

/// ASN.1 tags of CN values that are not text strings, and of the other string types.
pub const OCTET_STRING: u8 = 0x04;
pub const SEQUENCE: u8 = 0x30;
pub const INTEGER: u8 = 0x02;
pub const BMP: u8 = 0x1e;
pub const UNIVERSAL: u8 = 0x1c;
pub const TELETEX: u8 = 0x14;
pub const VISIBLE: u8 = 0x1a;
pub const NUMERIC: u8 = 0x12;

/// Hex text to bytes (test input only: panics on bad hex).
pub fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A verification-shaped certificate signed by the EC P-256 CA `ca` whose subject is the Name
/// `subject` (DER), made by rewriting a generated one and signing it again.
pub fn p256_signed_with_subject(ca: &Ca, subject: Vec<u8>) -> Vec<u8> {
    let pkcs8 = ca.key().serialize_der();
    rebuild(
        &ca.verification("placeholder"),
        ALG_ECDSA_SHA256,
        |items| items[TBS_SUBJECT] = subject,
        p256_signer(&pkcs8),
    )
}

/// A signer for [`rebuild`]: ECDSA P-256 with SHA-256 by the PKCS#8 key `pkcs8`.
pub fn p256_signer(pkcs8: &[u8]) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
    move |tbs| {
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
            .expect("P-256 PKCS#8 key");
        kp.sign(&SystemRandom::new(), tbs)
            .expect("ECDSA signs")
            .as_ref()
            .to_vec()
    }
}

/// A self-signed EC P-256 CA certificate whose subject and issuer are the Name `subject` (DER),
/// made from a `make_ca` root by rewriting its names and signing it again. Returns (DER, key PEM).
pub fn p256_ca_with_subject(subject: &[u8]) -> (Vec<u8>, String) {
    let base = root("placeholder", KeyKind::EcP256);
    let pkcs8 = base.key().serialize_der();
    let der = rebuild(
        &base.der,
        ALG_ECDSA_SHA256,
        |items| {
            items[TBS_ISSUER] = subject.to_vec();
            items[TBS_SUBJECT] = subject.to_vec();
        },
        p256_signer(&pkcs8),
    );
    (der, base.key_pem)
}

// ---------------------------------------------------------------------------------------------
// SHA-1 (FIPS 180-4), written here so that thumbprints are checked against an independent
// implementation and SHA-1 signatures can be made.

pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let temp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = temp;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RSA PKCS#1 v1.5 signing with SHA-1 (aws-lc-rs only signs with SHA-256 and up): the private key
// operation m^d mod n with Montgomery multiplication on 64-bit limbs.

fn strip_zeros(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|x| **x == 0).count();
    &b[skip..]
}

fn limbs_from_be(bytes: &[u8], limbs: usize) -> Vec<u64> {
    let mut out = vec![0u64; limbs];
    for (i, b) in strip_zeros(bytes).iter().rev().enumerate() {
        out[i / 8] |= (*b as u64) << (8 * (i % 8));
    }
    out
}

fn limbs_to_be(x: &[u64], len: usize) -> Vec<u8> {
    (0..len)
        .rev()
        .map(|i| (x[i / 8] >> (8 * (i % 8))) as u8)
        .collect()
}

fn geq(a: &[u64], b: &[u64]) -> bool {
    for i in (0..a.len()).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

fn sub_in_place(a: &mut [u64], b: &[u64]) {
    let mut borrow = false;
    for (x, y) in a.iter_mut().zip(b) {
        let (d1, b1) = x.overflowing_sub(*y);
        let (d2, b2) = d1.overflowing_sub(borrow as u64);
        *x = d2;
        borrow = b1 || b2;
    }
}

fn double_mod(a: &mut [u64], n: &[u64]) {
    let mut carry = 0u64;
    for limb in a.iter_mut() {
        let next = *limb >> 63;
        *limb = (*limb << 1) | carry;
        carry = next;
    }
    if carry == 1 || geq(a, n) {
        sub_in_place(a, n);
    }
}

fn mont_mul(a: &[u64], b: &[u64], n: &[u64], n0inv: u64) -> Vec<u64> {
    let s = n.len();
    let mut t = vec![0u64; s + 2];
    for &bi in b {
        let mut c: u128 = 0;
        for j in 0..s {
            let x = t[j] as u128 + a[j] as u128 * bi as u128 + c;
            t[j] = x as u64;
            c = x >> 64;
        }
        let x = t[s] as u128 + c;
        t[s] = x as u64;
        t[s + 1] = (x >> 64) as u64;
        let m = t[0].wrapping_mul(n0inv);
        let x = t[0] as u128 + m as u128 * n[0] as u128;
        let mut c = x >> 64;
        for j in 1..s {
            let x = t[j] as u128 + m as u128 * n[j] as u128 + c;
            t[j - 1] = x as u64;
            c = x >> 64;
        }
        let x = t[s] as u128 + c;
        t[s - 1] = x as u64;
        t[s] = t[s + 1] + (x >> 64) as u64;
        t[s + 1] = 0;
    }
    let mut r = t[..s].to_vec();
    if t[s] != 0 || geq(&r, n) {
        sub_in_place(&mut r, n);
    }
    r
}

/// base^exp mod modulus, all big-endian byte strings; the result has the modulus' length.
pub fn modpow(base: &[u8], exp: &[u8], modulus: &[u8]) -> Vec<u8> {
    let modulus = strip_zeros(modulus);
    let k = modulus.len();
    let s = k.div_ceil(8);
    let n = limbs_from_be(modulus, s);
    let mut inv = 1u64;
    for _ in 0..7 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inv)));
    }
    let n0inv = inv.wrapping_neg();
    let mut r = vec![0u64; s];
    r[0] = 1;
    for _ in 0..64 * s {
        double_mod(&mut r, &n); // R mod n
    }
    let mut r2 = r.clone();
    for _ in 0..64 * s {
        double_mod(&mut r2, &n); // R^2 mod n
    }
    let xm = mont_mul(&limbs_from_be(base, s), &r2, &n, n0inv);
    let mut acc = r;
    for byte in strip_zeros(exp) {
        for bit in (0..8).rev() {
            acc = mont_mul(&acc, &acc, &n, n0inv);
            if (byte >> bit) & 1 == 1 {
                acc = mont_mul(&acc, &xm, &n, n0inv);
            }
        }
    }
    let mut one = vec![0u64; s];
    one[0] = 1;
    limbs_to_be(&mont_mul(&acc, &one, &n, n0inv), k)
}

/// An RSASSA-PKCS1-v1_5 signature with SHA-1 of `msg` by the RSA key `pkcs8` (PKCS#8 DER).
pub fn rsa_sha1_sign(pkcs8: &[u8], msg: &[u8]) -> Vec<u8> {
    let outer = tlv_items(content(pkcs8)); // version, algorithm, privateKey
    let rsa = tlv_items(content(content(outer[2]))); // version, n, e, d, p, q, dp, dq, qinv
    let (n, d) = (content(rsa[1]), content(rsa[3]));
    let k = strip_zeros(n).len();
    let mut t = vec![
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];
    t.extend_from_slice(&sha1(msg));
    let mut em = vec![0x00, 0x01];
    em.resize(k - t.len() - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(&t);
    modpow(&em, d, n)
}
