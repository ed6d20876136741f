//! RFC 4514 rendering of distinguished names.
//!
//! Why our own: x509-parser's `Display` lists attributes in encoding order joined by ", " without
//! escaping. Operators compare what we show with `openssl x509 -nameopt RFC2253` and with Azure's
//! portal, which use the RFC 4514 form: last RDN first, `,` between RDNs, `+` inside one, and special
//! characters escaped. Names are compared elsewhere by their raw DER bytes, never by this text.

use x509_parser::der_parser::asn1_rs::{Class, Tag};
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
/// BMPString, UniversalString), or None for other encodings or invalid text. See
/// [`attribute_value_text`].
pub fn attribute_text(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    attribute_value_text(attr).ok()
}

/// The text of an attribute, or what its value is instead (e.g. `an OCTET STRING`, `a UTF8String
/// that is not valid UTF-8`), for messages.
///
/// Text strings are UTF8String (valid UTF-8), BMPString (valid UTF-16BE), UniversalString (valid
/// UTF-32BE), and PrintableString, IA5String and TeletexString holding ASCII only: they are 7-bit
/// types, or (T.61) a character set whose non-ASCII bytes do not mean what UTF-8 says. Everything
/// else (an OCTET STRING, a SEQUENCE, a NumericString, ...) is not text: a CN like that names no
/// device and holds no code, and is never read as the hex of its bytes
/// (docs/certificate-names.md).
pub fn attribute_value_text(attr: &AttributeTypeAndValue<'_>) -> Result<String, String> {
    let value = attr.attr_value();
    let tag = value.header.tag();
    let ascii = |name: &str| {
        if value.data.is_ascii() {
            // ASCII is valid UTF-8.
            Ok(String::from_utf8_lossy(value.data).into_owned())
        } else {
            Err(format!("{name} that is not ASCII"))
        }
    };
    match tag {
        Tag::Utf8String => std::str::from_utf8(value.data)
            .map(str::to_owned)
            .map_err(|_| "a UTF8String that is not valid UTF-8".to_string()),
        Tag::PrintableString => ascii("a PrintableString"),
        Tag::Ia5String => ascii("an IA5String"),
        Tag::T61String => ascii("a TeletexString"),
        Tag::BmpString => decode_utf16be(value.data)
            .ok_or_else(|| "a BMPString that is not valid UTF-16".to_string()),
        Tag::UniversalString => decode_utf32be(value.data)
            .ok_or_else(|| "a UniversalString that is not valid UTF-32".to_string()),
        _ => Err(describe_value(value.header.class(), tag)),
    }
}

/// What a value that is not text is, in words: `an OCTET STRING`, `a SEQUENCE`, ...
fn describe_value(class: Class, tag: Tag) -> String {
    if class != Class::Universal {
        return format!("a value of {class:?} class tag [{}]", tag.0);
    }
    let known = match tag {
        Tag::Boolean => "a BOOLEAN",
        Tag::Integer => "an INTEGER",
        Tag::BitString => "a BIT STRING",
        Tag::OctetString => "an OCTET STRING",
        Tag::Null => "a NULL",
        Tag::Oid => "an OBJECT IDENTIFIER",
        Tag::Enumerated => "an ENUMERATED",
        Tag::Sequence => "a SEQUENCE",
        Tag::Set => "a SET",
        Tag::NumericString => "a NumericString",
        Tag::VideotexString => "a VideotexString",
        Tag::UtcTime => "a UTCTime",
        Tag::GeneralizedTime => "a GeneralizedTime",
        Tag::GraphicString => "a GraphicString",
        Tag::VisibleString => "a VisibleString",
        Tag::GeneralString => "a GeneralString",
        _ => return format!("a value of universal tag {}", tag.0),
    };
    known.to_string()
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
