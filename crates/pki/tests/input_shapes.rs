//! Certificate input: every accepted shape returns the exact DER, every malformed shape its
//! precise error, the size limit is exact, and arbitrary bytes never panic.

mod common;

use common::*;
use iothub_pki::gen::KeyKind;
use iothub_pki::input::{der_to_pem, parse_certificate_input, InputError};
use iothub_pki::pop::{verify_proof, ProofError};
use iothub_pki::CertInfo;

fn parse(input: &[u8]) -> Result<Vec<u8>, InputError> {
    parse_certificate_input(input, MAX)
}

/// Certificates whose DER does not end in an ASCII white-space byte (see the finding at the end
/// of this file), so that raw DER shapes are accepted as they should be. Candidates are tried
/// lazily; the chance that all of them end in white space is negligible.
fn usable(candidates: &[fn() -> &'static Ca], not: &[u8]) -> &'static [u8] {
    candidates
        .iter()
        .map(|f| &f().der[..])
        .find(|d| !d[d.len() - 1].is_ascii_whitespace() && *d != not)
        .expect("a usable certificate")
}

fn der() -> &'static [u8] {
    usable(
        &[
            || shared_root(KeyKind::EcP256),
            || shared_root(KeyKind::EcP384),
            || impostor_root(KeyKind::EcP256),
        ],
        &[],
    )
}

fn other_der() -> &'static [u8] {
    usable(
        &[
            shared_intermediate,
            || impostor_root(KeyKind::EcP384),
            || shared_root(KeyKind::EcP384),
        ],
        der(),
    )
}

fn err_kind(input: &[u8]) -> &'static str {
    parse(input).expect_err("must be refused").kind()
}

// ---------------------------------------------------------------------------------------------
// Accepted shapes.

#[test]
fn pem_with_lf_line_ends() {
    assert_eq!(parse(pem_text(der(), "\n").as_bytes()).unwrap(), der());
}

#[test]
fn pem_with_crlf_line_ends() {
    assert_eq!(parse(pem_text(der(), "\r\n").as_bytes()).unwrap(), der());
}

#[test]
fn pem_surrounded_by_white_space() {
    for (before, after) in [
        (" ", " "),
        ("\n\n", "\n\n"),
        ("\t \r\n", " \r\n\t\x0c"),
        ("", "   "),
    ] {
        let input = format!("{before}{}{after}", pem_text(der(), "\n"));
        assert_eq!(
            parse(input.as_bytes()).unwrap(),
            der(),
            "{before:?} {after:?}"
        );
    }
    // Without the final line end, and with indented lines.
    let trimmed = pem_text(der(), "\n").trim_end().to_string();
    assert_eq!(parse(trimmed.as_bytes()).unwrap(), der());
    let indented: String = pem_text(der(), "\n")
        .lines()
        .map(|l| format!("  {l}  \n"))
        .collect();
    assert_eq!(parse(indented.as_bytes()).unwrap(), der());
}

#[test]
fn pem_line_width_does_not_matter() {
    let b64 = B64.encode(der());
    let one_line = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
    assert_eq!(parse(one_line.as_bytes()).unwrap(), der());
    let wrapped_76: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\r\n{wrapped_76}-----END CERTIFICATE-----\r\n");
    assert_eq!(parse(pem.as_bytes()).unwrap(), der());
}

#[test]
fn pem_with_the_legacy_x509_certificate_label() {
    let pem = pem_block("X509 CERTIFICATE", der(), "\n");
    assert_eq!(parse(pem.as_bytes()).unwrap(), der());
}

#[test]
fn der_to_pem_round_trips() {
    let pem = der_to_pem(der());
    assert_eq!(pem, pem_text(der(), "\n"));
    assert_eq!(parse(pem.as_bytes()).unwrap(), der());
}

#[test]
fn bare_base64_of_der() {
    let b64 = B64.encode(der());
    assert!(b64.starts_with('M'));
    assert_eq!(parse(b64.as_bytes()).unwrap(), der());
    // With line breaks (LF, CRLF) and surrounding white space.
    for eol in ["\n", "\r\n"] {
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}{eol}", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(parse(wrapped.as_bytes()).unwrap(), der(), "{eol:?}");
        let spaced = format!("  \n{wrapped}\n\t ");
        assert_eq!(parse(spaced.as_bytes()).unwrap(), der(), "{eol:?}");
    }
    // Spaces inside the text are white space too.
    let spaced: String = b64
        .as_bytes()
        .chunks(4)
        .map(|c| format!("{} ", std::str::from_utf8(c).unwrap()))
        .collect();
    assert_eq!(parse(spaced.as_bytes()).unwrap(), der());
}

#[test]
fn base64_of_pem_text() {
    for eol in ["\n", "\r\n"] {
        let b64 = B64.encode(pem_text(der(), eol));
        assert!(b64.starts_with("LS0t"));
        assert_eq!(parse(b64.as_bytes()).unwrap(), der(), "{eol:?}");
        let wrapped: String = b64
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(parse(wrapped.as_bytes()).unwrap(), der(), "{eol:?}");
    }
}

#[test]
fn raw_der() {
    assert_eq!(parse(der()).unwrap(), der());
    assert_eq!(parse(other_der()).unwrap(), other_der());
}

// ---------------------------------------------------------------------------------------------
// Refused shapes.

#[test]
fn der_with_trailing_bytes() {
    let mut input = der().to_vec();
    input.extend_from_slice(&[0x00, 0xff, 0x01]);
    assert_eq!(parse(&input), Err(InputError::TrailingData { extra: 3 }));
    assert_eq!(err_kind(&input), "CertificateUnparsable");
    // The same, delivered as base64.
    assert_eq!(
        parse(B64.encode(&input).as_bytes()),
        Err(InputError::TrailingData { extra: 3 })
    );
    // A trailing SEQUENCE that is not a certificate is trailing data, not a second certificate.
    let mut input = der().to_vec();
    input.extend_from_slice(&[0x30, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(parse(&input), Err(InputError::TrailingData { extra: 5 }));
}

#[test]
fn two_der_certificates_concatenated() {
    let input = [der(), other_der()].concat();
    assert_eq!(
        parse(&input),
        Err(InputError::MultipleCertificates { count: 2 })
    );
    assert_eq!(err_kind(&input), "CertificateCountInvalid");
    assert_eq!(
        parse(B64.encode(&input).as_bytes()),
        Err(InputError::MultipleCertificates { count: 2 })
    );
}

#[test]
fn several_certificates_in_one_pem() {
    let two = format!("{}{}", pem_text(der(), "\n"), pem_text(other_der(), "\n"));
    assert_eq!(
        parse(two.as_bytes()),
        Err(InputError::MultipleCertificates { count: 2 })
    );
    let three = format!("{two}{}", pem_text(der(), "\r\n"));
    assert_eq!(
        parse(three.as_bytes()),
        Err(InputError::MultipleCertificates { count: 3 })
    );
    assert_eq!(
        parse(B64.encode(&two).as_bytes()),
        Err(InputError::MultipleCertificates { count: 2 })
    );
    // The chain make_ca writes for an intermediate is two certificates.
    assert_eq!(
        parse(shared_intermediate().chain_pem.as_bytes()),
        Err(InputError::MultipleCertificates { count: 2 })
    );
}

#[test]
fn a_private_key_block_alone() {
    // A private key is refused for what it is (see the finding tests at the end of this file);
    // other blocks that are not certificates are a wrong label.
    let key = shared_root(KeyKind::EcP256).key().serialize_pem();
    assert_eq!(err_kind(key.as_bytes()), "CertificatePrivateKeyIncluded");
    for label in ["CERTIFICATE REQUEST", "PUBLIC KEY", "TRUSTED CERTIFICATE"] {
        let pem = pem_block(label, der(), "\n");
        assert_eq!(
            parse(pem.as_bytes()),
            Err(InputError::WrongPemLabel {
                label: label.into()
            }),
            "{label}"
        );
    }
}

#[test]
fn malformed_pem_structure() {
    let pem = pem_text(der(), "\n");
    let without_end = pem.replace("-----END CERTIFICATE-----\n", "");
    let end_first = format!("-----END CERTIFICATE-----\n{pem}");
    let mismatched = pem.replace("END CERTIFICATE", "END PRIVATE KEY");
    let nested = format!("-----BEGIN CERTIFICATE-----\n{pem}");
    let bad_begin = pem.replace("-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATE");
    for (what, input) in [
        ("BEGIN without END", without_end),
        ("END before any BEGIN", end_first),
        ("mismatched labels", mismatched),
        ("nested BEGIN", nested),
        ("malformed BEGIN line", bad_begin),
    ] {
        let e = parse(input.as_bytes()).expect_err(what);
        assert!(matches!(e, InputError::BadPem { .. }), "{what}: {e:?}");
        assert_eq!(e.kind(), "CertificatePemInvalid", "{what}");
    }
    // With no BEGIN line at all the text is not PEM; it is then read as base64, which it is not.
    let without_begin = pem.replace("-----BEGIN CERTIFICATE-----\n", "");
    let e = parse(without_begin.as_bytes()).unwrap_err();
    assert!(matches!(e, InputError::NotACertificate { .. }), "{e:?}");
}

#[test]
fn pem_body_that_is_not_base64() {
    let pem = pem_text(der(), "\n");
    let lines: Vec<&str> = pem.lines().collect();
    let broken = format!("{}\n{}!!{}\n", lines[0], lines[1], lines[2..].join("\n"));
    let e = parse(broken.as_bytes()).unwrap_err();
    assert!(matches!(e, InputError::BadPem { .. }), "{e:?}");
}

#[test]
fn pem_body_that_is_not_a_certificate() {
    for body in [
        &b"hello world"[..],
        &[0x30, 0x03, 0x02, 0x01, 0x00],
        &der()[..100],
        &[],
    ] {
        let pem = pem_block("CERTIFICATE", body, "\n");
        let e = parse(pem.as_bytes()).unwrap_err();
        assert!(matches!(e, InputError::NotACertificate { .. }), "{e:?}");
        assert_eq!(e.kind(), "CertificateUnparsable");
    }
}

#[test]
fn empty_and_white_space_only() {
    for input in [&b""[..], b" ", b"\n", b"\r\n\r\n", b" \t\n\r\x0c "] {
        assert_eq!(parse(input), Err(InputError::Empty), "{input:?}");
        assert_eq!(err_kind(input), "CertificateEmpty");
    }
}

#[test]
fn bytes_that_are_not_a_certificate() {
    let b64_of_b64 = B64.encode(B64.encode(der()));
    let b64_of_b64_of_pem = B64.encode(B64.encode(pem_text(der(), "\n")));
    let cases: Vec<Vec<u8>> = vec![
        vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x80],
        vec![0x30, 0x82, 0x01, 0x00, 0xff, 0xfe],
        vec![0x30],
        b"hello world".to_vec(),
        b"0".to_vec(),
        b"0123".to_vec(),
        B64.encode(b"hello").into_bytes(),
        B64.encode([0x30, 0x03, 0x02, 0x01, 0x00]).into_bytes(),
        b64_of_b64.into_bytes(),
        b64_of_b64_of_pem.into_bytes(),
        der()[..der().len() - 1].to_vec(),
        der()[1..].to_vec(),
    ];
    for input in cases {
        let e = parse(&input).expect_err("not a certificate");
        assert!(
            matches!(e, InputError::NotACertificate { .. }),
            "{:?}: {e:?}",
            String::from_utf8_lossy(&input[..input.len().min(20)])
        );
        assert_eq!(e.kind(), "CertificateUnparsable");
    }
}

#[test]
fn size_limit_is_exact() {
    let pem = pem_text(der(), "\n");
    let padded = |len: usize| {
        let mut v = pem.clone().into_bytes();
        v.resize(len, b'\n');
        v
    };
    assert_eq!(parse(&padded(MAX)).unwrap(), der());
    assert_eq!(
        parse(&padded(MAX + 1)),
        Err(InputError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );
    let e = parse(&padded(65 * 1024)).unwrap_err();
    assert_eq!(
        e,
        InputError::TooLarge {
            len: 66_560,
            max: 65_536
        }
    );
    assert_eq!(e.kind(), "CertificateTooLarge");
    assert!(e.to_string().contains("at most 65536 bytes"), "{e}");
    // The limit applies to the input as given, before anything is decoded or trimmed.
    let n = der().len();
    assert_eq!(parse_certificate_input(der(), n).unwrap(), der());
    assert_eq!(
        parse_certificate_input(der(), n - 1),
        Err(InputError::TooLarge { len: n, max: n - 1 })
    );
    assert_eq!(
        parse_certificate_input(b"   ", 2),
        Err(InputError::TooLarge { len: 3, max: 2 })
    );
    // Garbage over the limit is "too large", not "not a certificate".
    assert_eq!(
        parse(&vec![0xffu8; MAX + 1]),
        Err(InputError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );
}

#[test]
fn error_kinds_are_stable() {
    let cases = [
        (InputError::Empty, "CertificateEmpty"),
        (
            InputError::TooLarge { len: 2, max: 1 },
            "CertificateTooLarge",
        ),
        (
            InputError::MultipleCertificates { count: 2 },
            "CertificateCountInvalid",
        ),
        (
            InputError::WrongPemLabel { label: "X".into() },
            "CertificatePemInvalid",
        ),
        (
            InputError::BadPem { detail: "x".into() },
            "CertificatePemInvalid",
        ),
        (
            InputError::NotACertificate { detail: "x".into() },
            "CertificateUnparsable",
        ),
        (
            InputError::TrailingData { extra: 1 },
            "CertificateUnparsable",
        ),
    ];
    for (e, kind) in cases {
        assert_eq!(e.kind(), kind);
        assert_eq!(ProofError::Input(e).kind(), kind);
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness: deterministic pseudo-random inputs, truncations and bit flips.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses twice (must agree), and checks what an Ok result means: the DER is a certificate whose
/// facts can be read.
fn parse_checked(input: &[u8]) -> Result<Vec<u8>, InputError> {
    let first = parse(input);
    assert_eq!(first, parse(input), "parsing is not deterministic");
    match &first {
        Ok(der) => {
            CertInfo::from_der(der).expect("accepted input must be a readable certificate");
        }
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
    first
}

#[test]
fn pseudo_random_inputs_never_panic_and_are_refused() {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n ";
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..2000 {
        let len = rng.below(700);
        let mut bytes: Vec<u8> = match i % 4 {
            0 => (0..len).map(|_| rng.next() as u8).collect(),
            1 => (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect(),
            2 => {
                let body: String = (0..len)
                    .map(|_| ALPHABET[rng.below(ALPHABET.len() - 2)] as char)
                    .collect();
                format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
                    .into_bytes()
            }
            _ => {
                let mut v = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
                v.extend((0..len).map(|_| rng.next() as u8));
                v
            }
        };
        if i % 7 == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        assert!(parse_checked(&bytes).is_err(), "input {i} accepted");
        let proof = verify_proof("ca", &ca.info, &live(&code), &bytes, MAX, NOW);
        assert!(
            matches!(proof, Err(ProofError::Input(_))),
            "input {i}: {proof:?}"
        );
    }
}

#[test]
fn every_truncation_of_a_certificate_is_refused() {
    for der in [der(), other_der()] {
        let pem = pem_text(der, "\n");
        for len in 0..der.len() {
            assert!(
                parse_checked(&der[..len]).is_err(),
                "DER prefix of {len} bytes"
            );
            let b64 = B64.encode(&der[..len]);
            assert!(
                parse_checked(b64.as_bytes()).is_err(),
                "base64 prefix {len}"
            );
        }
        for len in 0..pem.len() {
            // A PEM text cut before its END line loses part of the body or the END line: refused.
            // Cut inside the END line, the whole body is there: accepted or not (the END line's
            // closing dashes are not required), never a different certificate.
            let cut = &pem.as_bytes()[..len];
            match parse_checked(cut) {
                Ok(out) => {
                    assert!(pem[..len].contains("-----END CERTIFICATE"), "prefix {len}");
                    assert_eq!(out, der, "PEM prefix of {len} bytes");
                }
                Err(_) => assert!(
                    !pem[..len].contains("-----END CERTIFICATE-----"),
                    "complete PEM prefix of {len} bytes refused"
                ),
            }
        }
    }
}

#[test]
fn every_bit_flip_of_a_certificate_is_handled() {
    let der = der();
    let mut accepted = 0;
    for i in 0..der.len() {
        for bit in 0..8 {
            let mut flipped = der.to_vec();
            flipped[i] ^= 1 << bit;
            if let Ok(out) = parse_checked(&flipped) {
                assert_eq!(out, flipped, "byte {i} bit {bit}: returned DER differs");
                accepted += 1;
            }
            let _ = parse_checked(B64.encode(&flipped).as_bytes());
        }
    }
    // Flips inside values (names, keys, signature bits) still parse; structural ones do not.
    assert!(accepted > 0 && accepted < der.len() * 8, "{accepted}");
}

// ---------------------------------------------------------------------------------------------
// Finding: raw DER ending in an ASCII white-space byte.

/// A certificate signed by `ca` whose DER ends in `last`.
fn cert_ending_in(ca: &Ca, last: &[u8]) -> Vec<u8> {
    (0..20_000)
        .map(|_| ca.verification("x"))
        .find(|d| last.contains(&d[d.len() - 1]))
        .expect("found within 20,000 tries")
}

#[test]
fn ed25519_signed_der_often_ends_in_a_white_space_byte() {
    // Why the finding below matters: an Ed25519 signature ends with the most significant byte of
    // its scalar S < l (about 2^252), i.e. 0x00..=0x10, and 0x09, 0x0a, 0x0c, 0x0d lie in that
    // range: about one Ed25519-signed certificate in four ends in a byte that
    // `is_ascii_whitespace`.
    let ca = shared_root(KeyKind::Ed25519);
    let mut ws = 0;
    for _ in 0..400 {
        let d = ca.verification("x");
        assert!(d[d.len() - 1] <= 0x10);
        if d[d.len() - 1].is_ascii_whitespace() {
            ws += 1;
        }
    }
    assert!(ws > 10, "{ws} of 400");
}

#[test]
fn raw_der_ending_in_a_white_space_byte_is_accepted() {
    for (ca, name) in [
        (shared_root(KeyKind::Ed25519), "Ed25519"),
        (shared_root(KeyKind::EcP256), "EC P-256"),
    ] {
        let der = cert_ending_in(ca, b"\t\n\x0c\r ");
        // The same certificate as PEM or base64 is accepted: only raw DER is hit.
        assert_eq!(parse(pem_text(&der, "\n").as_bytes()).unwrap(), der);
        assert_eq!(parse(B64.encode(&der).as_bytes()).unwrap(), der);
        let raw = parse(&der);
        assert!(
            raw.as_ref() == Ok(&der),
            "{name}: raw DER ending in {:#04x} refused: {:?}",
            der[der.len() - 1],
            raw.err()
        );
    }
}

#[test]
fn verify_proof_accepts_raw_der_ending_in_a_white_space_byte() {
    let ca = shared_root(KeyKind::Ed25519);
    let code = new_code();
    let der = (0..20_000)
        .map(|_| ca.verification(&code))
        .find(|d| d[d.len() - 1].is_ascii_whitespace())
        .expect("found");
    verify_proof("ca", &ca.info, &live(&code), &der, MAX, NOW).expect("raw DER proof");
}

// ---------------------------------------------------------------------------------------------
// Security review, issue 16, finding 7: an upload that carries a private key.

/// The base64 lines of every PEM block of `pem` (what must never be echoed).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `input` is refused because it carries a private key, with a message that says
/// so, tells the operator to upload the certificate alone, and shows none of `secret`.
fn assert_key_refused(input: &[u8], secret: &[String], what: &str) {
    let e = parse(input).expect_err(what);
    assert_eq!(e.kind(), "CertificatePrivateKeyIncluded", "{what}: {e:?}");
    let text = e.to_string();
    assert!(
        text.contains("private key")
            && text.contains("must never leave")
            && text.contains("upload the certificate alone"),
        "{what}: {text}"
    );
    let debug = format!("{e:?}");
    for line in secret {
        // Any 16 characters of the key's base64 would be a leak.
        for start in (0..line.len().saturating_sub(16)).step_by(8) {
            let piece = &line[start..start + 16];
            assert!(
                !text.contains(piece),
                "{what}: the message shows key material"
            );
            assert!(
                !debug.contains(piece),
                "{what}: the error shows key material"
            );
        }
    }
}

#[test]
fn a_certificate_uploaded_with_its_private_key_is_refused_in_every_shape() {
    let ca = shared_root(KeyKind::EcP256);
    let cert = pem_text(der(), "\n");
    let pkcs8 = ca.key().serialize_der();
    let pkcs8_pem = ca.key().serialize_pem();
    // The body of a key block is never decoded, so any body stands for the key here.
    let blocks = [
        ("PRIVATE KEY", pkcs8_pem.clone()),
        (
            "RSA PRIVATE KEY",
            pem_block("RSA PRIVATE KEY", &pkcs8, "\n"),
        ),
        ("EC PRIVATE KEY", pem_block("EC PRIVATE KEY", &pkcs8, "\n")),
        (
            "ENCRYPTED PRIVATE KEY",
            pem_block("ENCRYPTED PRIVATE KEY", &pkcs8, "\n"),
        ),
        (
            "OPENSSH PRIVATE KEY",
            pem_block("OPENSSH PRIVATE KEY", &pkcs8, "\n"),
        ),
        (
            "PGP PRIVATE KEY BLOCK",
            pem_block("PGP PRIVATE KEY BLOCK", &pkcs8, "\n"),
        ),
        ("private key", pem_block("private key", &pkcs8, "\n")),
    ];
    for (label, key) in &blocks {
        let secret = pem_body_lines(key);
        for (shape, input) in [
            ("key after the certificate", format!("{cert}{key}")),
            ("key before the certificate", format!("{key}{cert}")),
            ("CRLF", format!("{cert}{key}").replace('\n', "\r\n")),
            ("key alone", key.clone()),
            (
                "key without its END line",
                format!(
                    "{cert}{}",
                    key.lines().take(2).collect::<Vec<_>>().join("\n")
                ),
            ),
        ] {
            let what = format!("{label}, {shape}");
            assert_key_refused(input.as_bytes(), &secret, &what);
            // Base64 of the PEM text, as the DPS SDK sends certificates.
            let b64 = B64.encode(input.as_bytes());
            let mut b64_secret = secret.clone();
            b64_secret.push(b64.clone());
            assert_key_refused(b64.as_bytes(), &b64_secret, &format!("{what}, base64"));
        }
    }
}

#[test]
fn a_der_private_key_is_refused_alone_or_after_a_der_certificate() {
    let ca = shared_root(KeyKind::EcP256);
    let pkcs8 = ca.key().serialize_der();
    let secret = vec![B64.encode(&pkcs8)];
    let mut both = der().to_vec();
    both.extend_from_slice(&pkcs8);
    for (what, input) in [
        ("DER key alone", pkcs8.clone()),
        ("DER certificate + DER key", both),
    ] {
        assert_key_refused(&input, &secret, what);
        assert_key_refused(
            B64.encode(&input).as_bytes(),
            &[B64.encode(&input)],
            &format!("{what}, base64"),
        );
    }
}

#[test]
fn a_proof_uploaded_with_the_private_key_is_refused() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let key = p256_key().serialize_pem();
    let input = format!("{}{key}", pem_text(&ca.verification(&code), "\n"));
    let e = verify_proof("root", &ca.info, &live(&code), input.as_bytes(), MAX, NOW)
        .expect_err("a key in the proof upload");
    assert_eq!(e.kind(), "CertificatePrivateKeyIncluded", "{e}");
}
