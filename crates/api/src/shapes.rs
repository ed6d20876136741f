//! JSON shapes of the API, matching Azure IoT Hub's CertificateDescription (docs/azure-wire.md#certificate-description)
//! with iothub's extra fields, and RFC 1123 dates (the only date format the Azure SDKs accept).

use iothub_hub::CaView;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// Formats Unix seconds as RFC 1123, e.g. `Sat, 31 Dec 2039 23:59:59 GMT`.
pub fn rfc1123(unix: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// A CertificateDescription. `id` is the resource path the caller used (native or ARM).
pub fn certificate_description(view: &CaView, id: &str) -> Value {
    let info = &view.info;
    json!({
        "id": id,
        "name": view.name,
        "type": "Microsoft.Devices/IotHubs/Certificates",
        "etag": view.etag,
        "properties": {
            "subject": info.subject,
            "expiry": rfc1123(info.not_after),
            "thumbprint": info.thumbprint_sha1,
            "isVerified": view.is_verified,
            "created": rfc1123(view.created),
            "updated": rfc1123(view.updated),
            "certificate": info.pem(),
            "issuer": info.issuer,
            "thumbprintSha256": info.thumbprint_sha256,
            "status": view.status(),
            "verificationCodeExpiry": view.verification_code_expiry.map(rfc1123),
            "notBefore": rfc1123(info.not_before),
            "keyAlgorithm": info.key.to_string(),
            "isRoot": info.is_self_issued(),
            "pathLengthConstraint": info.ca.flatten(),
            "serialNumber": info.serial,
            "subjectKeyIdentifier": info.subject_key_id,
            "authorityKeyIdentifier": info.authority_key_id,
        }
    })
}

/// The body of a create-or-replace: the current shape `{"properties": {...}}` or the legacy 2017
/// shape with the same fields at top level (both are sent by azure-mgmt-iothub).
#[derive(Debug, Deserialize)]
pub struct PutBody {
    pub properties: Option<PutFields>,
    #[serde(flatten)]
    pub legacy: PutFields,
}

#[derive(Debug, Default, Deserialize)]
pub struct PutFields {
    pub certificate: Option<String>,
    #[serde(rename = "isVerified")]
    pub is_verified: Option<bool>,
}

/// The body of a verify: `{"certificate": "<PEM or base64>"}`.
#[derive(Debug, Deserialize)]
pub struct VerifyBody {
    pub certificate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1123_format() {
        assert_eq!(rfc1123(2208988799), "Sat, 31 Dec 2039 23:59:59 GMT");
        assert_eq!(rfc1123(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
