//! The pure, I/O-free core of iothub: everything about X.509 certificates and shared access
//! signatures that can be decided from bytes, a clock reading and a key, with no storage or network.
//!
//! Why a crate of its own: these rules are the security boundary of the hub. Keeping them free of
//! I/O lets them be tested exhaustively and fuzzed, and lets every adapter (HTTPS API, portal,
//! MQTT gateway, CLI) call the very same code.
//!
//! - [`input`]: turn what an operator uploads (PEM, DER, base64) into exactly one DER certificate.
//! - [`cert`]: read the facts of a certificate (names, thumbprints, validity, key, extensions).
//! - [`dn`]: render distinguished names as RFC 4514 strings.
//! - [`pop`]: proof-of-possession rules: upload checks, verification codes, the ordered verify check.
//! - [`sas`]: SharedAccessSignature tokens, signed and checked exactly as Azure IoT Hub does.
//! - [`policy`]: shared access policy names, rights lists and key slots as operators write them.
//! - [`gen`]: certificate and key generation for test PKIs and the one-step `cert prove`.

pub mod cert;
pub mod chain_cache;
pub mod device;
pub mod dn;
pub mod gen;
pub mod input;
pub mod policy;
pub mod pop;
pub mod sas;

pub use cert::{CertInfo, KeyAlgorithm};
pub use input::{parse_certificate_input, InputError, DEFAULT_MAX_CERTIFICATE_BYTES};
