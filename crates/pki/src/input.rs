//! Certificate input: operators and SDKs send a certificate in several shapes (Azure's CLI sends a
//! `.pem` file's text as is, a binary `.cer` as bare base64 of DER; the DPS SDK sends base64 of PEM
//! text). This module turns any of them into the DER bytes of exactly one certificate, or says
//! precisely what was wrong. It never panics and never allocates more than the input size allows.

use base64::Engine;

/// The largest certificate input accepted unless configured otherwise (64 KiB).
pub const DEFAULT_MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

/// Why an input is not exactly one certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the certificate is empty; expected one X.509 certificate as PEM text, base64 of DER, or DER bytes")]
    Empty,
    #[error("the certificate input is {len} bytes; at most {max} bytes are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("expected exactly one certificate, found {count} in the PEM input")]
    MultipleCertificates { count: usize },
    #[error("the PEM block is '{label}', expected 'CERTIFICATE'")]
    WrongPemLabel { label: String },
    #[error("the PEM input is malformed: {detail}")]
    BadPem { detail: String },
    #[error("the input is not an X.509 certificate: {detail}")]
    NotACertificate { detail: String },
    #[error("the certificate is followed by {extra} unexpected bytes; expected exactly one DER certificate")]
    TrailingData { extra: usize },
    /// `what` names the kind of key found (a PEM label or a DER structure), never its content.
    #[error("the upload holds a private key ({what}), and iothub refuses it: a private key, a CA's above all, must never leave your machine; upload the certificate alone (only its CERTIFICATE block) and keep the key where it is")]
    PrivateKeyIncluded { what: String },
}

impl InputError {
    /// The stable name of this error, used in API error codes and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::Empty => "CertificateEmpty",
            InputError::TooLarge { .. } => "CertificateTooLarge",
            InputError::MultipleCertificates { .. } => "CertificateCountInvalid",
            InputError::WrongPemLabel { .. } | InputError::BadPem { .. } => "CertificatePemInvalid",
            InputError::NotACertificate { .. } | InputError::TrailingData { .. } => {
                "CertificateUnparsable"
            }
            InputError::PrivateKeyIncluded { .. } => "CertificatePrivateKeyIncluded",
        }
    }
}

/// Parses an uploaded certificate given in any accepted shape and returns its DER bytes.
///
/// Accepted: PEM text (LF or CRLF line ends, surrounding white space), bare base64 of DER (white
/// space allowed), base64 of PEM text, raw DER bytes. Exactly one certificate, at most `max_len`
/// bytes of input. An input that holds a private key anywhere (a PEM block labelled `... PRIVATE
/// KEY`, or a DER private key alone or after the certificate) is refused as such, whatever else it
/// holds: the key is never decoded, and the error names only its kind.
pub fn parse_certificate_input(input: &[u8], max_len: usize) -> Result<Vec<u8>, InputError> {
    if input.len() > max_len {
        return Err(InputError::TooLarge {
            len: input.len(),
            max: max_len,
        });
    }
    parse_inner(input, 0)
}

fn parse_inner(input: &[u8], depth: u8) -> Result<Vec<u8>, InputError> {
    // DER: a certificate is a SEQUENCE (0x30). It is recognised before any trimming: its last
    // bytes (a signature) may well be 0x09-0x0D or 0x20, which are white space to text. PEM and
    // base64 text never start with 0x30 ('0' is 0x30 too, but base64 of DER starts with 'M').
    if input.first() == Some(&0x30) && !looks_like_text(input) {
        return parse_der_exact(input);
    }
    let trimmed = trim_ascii(input);
    if trimmed.is_empty() {
        return Err(InputError::Empty);
    }
    let text = std::str::from_utf8(trimmed).map_err(|_| InputError::NotACertificate {
        detail: "neither DER (it does not start with an ASN.1 SEQUENCE) nor UTF-8 text".into(),
    })?;
    if text.contains("-----BEGIN") {
        return parse_pem(text);
    }
    // Bare base64: of DER, or (one level) of PEM text.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| InputError::NotACertificate {
            detail: format!("not PEM (no '-----BEGIN CERTIFICATE-----' line) and not base64 ({e})"),
        })?;
    if decoded.first() == Some(&0x30) {
        return parse_der_exact(&decoded);
    }
    if depth == 0 && decoded.windows(10).any(|w| w == b"-----BEGIN") {
        return parse_inner(&decoded, depth + 1);
    }
    Err(InputError::NotACertificate {
        detail: "the base64 text decodes to neither DER nor PEM".into(),
    })
}

fn looks_like_text(bytes: &[u8]) -> bool {
    // "0" followed only by base64 alphabet would be text; DER's second byte is a length (0x82 for
    // any real certificate), which is not printable ASCII.
    bytes.len() > 1 && bytes[1].is_ascii_graphic() && bytes.iter().all(|b| b.is_ascii())
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// The label of the first PEM BEGIN line that announces a private key (`PRIVATE KEY`, `RSA PRIVATE
/// KEY`, `EC PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`, `OPENSSH PRIVATE KEY`, `PGP PRIVATE KEY BLOCK`:
/// any label holding PRIVATE, in any case), looked for anywhere in the text so that no layout (one
/// line, a missing END line) hides it.
fn private_key_label(text: &str) -> Option<String> {
    text.match_indices("-----BEGIN ").find_map(|(at, begin)| {
        let rest = &text[at + begin.len()..];
        let label = rest[..rest.find("-----").unwrap_or(rest.len())].trim();
        label.to_ascii_uppercase().contains("PRIVATE").then(|| {
            // A label is not key material, but only a short, plain one is worth repeating.
            let plain = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ');
            if label.len() <= 40 && plain {
                format!("a PEM block labelled '{label}'")
            } else {
                "a PEM block labelled as a private key".to_string()
            }
        })
    })
}

/// What kind of private key `der` is, if its structure is one: PKCS#8 (RFC 5958), encrypted
/// PKCS#8, SEC 1 EC (RFC 5915) or PKCS#1 RSA (RFC 8017). A certificate (SEQUENCE, SEQUENCE,
/// BIT STRING) matches none of them.
fn der_private_key_kind(der: &[u8]) -> Option<&'static str> {
    use x509_parser::der_parser::asn1_rs::{Any, FromDer, Tag};
    let (_, outer) = Any::from_der(der).ok()?;
    if outer.tag() != Tag::Sequence {
        return None;
    }
    let mut items: Vec<Any<'_>> = Vec::new();
    let mut rest = outer.data;
    while !rest.is_empty() && items.len() < 10 {
        let (next, item) = Any::from_der(rest).ok()?;
        items.push(item);
        rest = next;
    }
    let tags: Vec<Tag> = items.iter().map(|i| i.tag()).collect();
    let small_int = |i: &Any<'_>, values: &[u8]| {
        i.tag() == Tag::Integer && i.data.len() == 1 && values.contains(&i.data[0])
    };
    match tags.as_slice() {
        [Tag::Integer, Tag::Sequence, Tag::OctetString, ..] if small_int(&items[0], &[0, 1]) => {
            Some("a PKCS#8 private key in DER")
        }
        [Tag::Sequence, Tag::OctetString] => Some("an encrypted PKCS#8 private key in DER"),
        [Tag::Integer, Tag::OctetString, ..] if small_int(&items[0], &[1]) => {
            Some("an EC private key (SEC 1) in DER")
        }
        [Tag::Integer, more @ ..]
            if small_int(&items[0], &[0, 1])
                && more.len() >= 8
                && more.iter().all(|t| *t == Tag::Integer) =>
        {
            Some("an RSA private key (PKCS#1) in DER")
        }
        _ => None,
    }
}

fn private_key_included(what: impl Into<String>) -> InputError {
    InputError::PrivateKeyIncluded { what: what.into() }
}

fn parse_pem(text: &str) -> Result<Vec<u8>, InputError> {
    if let Some(what) = private_key_label(text) {
        return Err(private_key_included(what));
    }
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let label = rest
                .strip_suffix("-----")
                .ok_or_else(|| InputError::BadPem {
                    detail: format!("malformed BEGIN line '{line}'"),
                })?;
            if current.is_some() {
                return Err(InputError::BadPem {
                    detail: "a BEGIN line inside another PEM block".into(),
                });
            }
            current = Some((label.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("-----END ") {
            let label = rest.strip_suffix("-----").unwrap_or(rest);
            match current.take() {
                Some((begin, body)) if begin == label => blocks.push((begin, body)),
                Some((begin, _)) => {
                    return Err(InputError::BadPem {
                        detail: format!("BEGIN '{begin}' closed by END '{label}'"),
                    })
                }
                None => {
                    return Err(InputError::BadPem {
                        detail: "an END line without a BEGIN line".into(),
                    })
                }
            }
        } else if let Some((_, body)) = current.as_mut() {
            // Skip RFC 1421 headers such as "Proc-Type:"; they never occur in certificates.
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    if current.is_some() {
        return Err(InputError::BadPem {
            detail: "a BEGIN line without its END line".into(),
        });
    }
    let certs: Vec<&(String, String)> = blocks
        .iter()
        .filter(|(label, _)| label == "CERTIFICATE" || label == "X509 CERTIFICATE")
        .collect();
    match certs.len() {
        0 => match blocks.first() {
            Some((label, _)) => Err(InputError::WrongPemLabel {
                label: label.clone(),
            }),
            None => Err(InputError::BadPem {
                detail: "no PEM block found".into(),
            }),
        },
        1 => {
            let der = base64::engine::general_purpose::STANDARD
                .decode(certs[0].1.as_bytes())
                .map_err(|e| InputError::BadPem {
                    detail: format!("the CERTIFICATE block is not valid base64 ({e})"),
                })?;
            parse_der_exact(&der)
        }
        n => Err(InputError::MultipleCertificates { count: n }),
    }
}

fn parse_der_exact(der: &[u8]) -> Result<Vec<u8>, InputError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(der.to_vec()),
        Ok((rest, _)) => {
            if let Some(what) = der_private_key_kind(rest) {
                return Err(private_key_included(what));
            }
            // A second DER certificate appended is "two certificates", anything else is trailing data.
            if rest.first() == Some(&0x30) && x509_parser::parse_x509_certificate(rest).is_ok() {
                Err(InputError::MultipleCertificates { count: 2 })
            } else {
                Err(InputError::TrailingData { extra: rest.len() })
            }
        }
        Err(e) => match der_private_key_kind(der) {
            Some(what) => Err(private_key_included(what)),
            None => Err(InputError::NotACertificate {
                detail: e.to_string(),
            }),
        },
    }
}

/// Encodes DER certificate bytes as PEM text with LF line ends.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
