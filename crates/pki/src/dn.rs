//! RFC 4514 rendering of distinguished names.
//!
//! Why our own: x509-parser's `Display` lists attributes in encoding order joined by ", " without
//! escaping. Operators compare what we show with `openssl x509 -nameopt RFC2253` and with Azure's
//! portal, which use the RFC 4514 form: last RDN first, `,` between RDNs, `+` inside one, and special
//! characters escaped. Names are compared elsewhere by their raw DER bytes, never by this text.

use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Renders a name as an RFC 4514 string, e.g. `CN=Contoso Root,O=Contoso,C=US`.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(render_attribute)
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// The text of a string-valued attribute (UTF8String, PrintableString, IA5String, T61String,
/// BMPString, UniversalString), or None for other encodings or invalid text.
pub fn attribute_text(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    let value = attr.attr_value();
    match value.header.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::T61String => {
            std::str::from_utf8(value.data).ok().map(str::to_owned)
        }
        Tag::BmpString => decode_utf16be(value.data),
        Tag::UniversalString => decode_utf32be(value.data),
        _ => None,
    }
}

fn decode_utf32be(data: &[u8]) -> Option<String> {
    if data.len() % 4 != 0 {
        return None;
    }
    data.chunks_exact(4)
        .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

fn render_attribute(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let value = attr.attr_value();
    let text = attribute_text(attr);
    match (short_name(&oid), text) {
        (Some(short), Some(text)) => format!("{short}={}", escape_value(&text)),
        (short, _) => {
            // RFC 4514 2.4: unknown types or non-string values as the dotted OID and #hex of the DER.
            let key = short.map(str::to_owned).unwrap_or(oid);
            let mut der = Vec::with_capacity(value.data.len() + 4);
            der.push(value.header.tag().0 as u8);
            push_der_length(&mut der, value.data.len());
            der.extend_from_slice(value.data);
            format!("{key}=#{}", hex::encode(der))
        }
    }
}

fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn decode_utf16be(data: &[u8]) -> Option<String> {
    if data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// Escapes an attribute value as RFC 4514 section 2.4 requires.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let needs = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
        } else if needs {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_specials_and_edges() {
        assert_eq!(escape_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_value(" lead"), "\\ lead");
        assert_eq!(escape_value("trail "), "trail\\ ");
        assert_eq!(escape_value("#hash"), "\\#hash");
        assert_eq!(escape_value("mid#dle"), "mid#dle");
        assert_eq!(escape_value("q\"<>;\\"), "q\\\"\\<\\>\\;\\\\");
        assert_eq!(escape_value(""), "");
    }

    #[test]
    fn der_length_forms() {
        let mut v = Vec::new();
        push_der_length(&mut v, 5);
        assert_eq!(v, [5]);
        v.clear();
        push_der_length(&mut v, 300);
        assert_eq!(v, [0x82, 0x01, 0x2c]);
    }
}
