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
//! - [`external_key`]: a verification certificate signed by a CA key kept elsewhere (PKCS#11, KMS).
//! - [`gen`]: certificate and key generation for test PKIs and the one-step `cert prove`.
//! - [`device_id`]: which device ids are valid (Azure's rule).
//! - [`thumbprint`]: certificate thumbprints in one canonical form.
//! - [`trust_index`]: the registered CAs by subject DER, a cheap-to-change immutable snapshot,
//!   and the [`trust_index::NameKey`]s that say which chains a CA change can affect.
//! - [`chain`]: whether a device's presented chain leads to a Verified CA, with a precise reason.
//! - [`chain_cache`]: verdicts on chains already validated against one trust snapshot.
//! - [`crl`]: certificate revocation lists uploaded for a CA: its issuer, signature, freshness.
//! - [`revocation`]: revoked certificates (CA and serial), serial spelling, RFC 5280 reasons.
//! - `sharded` (private): the copy-on-write sharded map the trust index is built on.

pub mod cert;
pub mod chain;
pub mod chain_cache;
pub mod crl;
pub mod device_id;
pub mod dn;
pub mod external_key;
pub mod gen;
pub mod input;
pub mod policy;
pub mod pop;
pub mod revocation;
pub mod sas;
mod sharded;
#[cfg(test)]
mod test_certs;
pub mod thumbprint;
pub mod trust_index;

pub use cert::{CertInfo, KeyAlgorithm};
pub use input::{parse_certificate_input, InputError, DEFAULT_MAX_CERTIFICATE_BYTES};
