//! TLS for devices. The client certificate is requested, not required (SAS devices send none), and
//! the handshake only proves that the client holds the key of the certificate it sent; the chain is
//! judged at CONNECT against the live trust snapshot, so that the refusal can carry a precise
//! reason (a TLS alert cannot) and so that trust changes apply to the very next connection.
//! Session resumption is on, with stateless tickets (no server memory per session): a resumed
//! session skips the verifier, but nothing is decided there; rustls hands the chain stored in the
//! ticket to CONNECT, which judges it against the trust snapshot of that moment exactly as after a
//! full handshake (and the device record too). A deleted or unverified CA therefore admits no
//! resumed session either; `tests/resumption.rs` holds this.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

#[derive(Debug)]
struct AskForClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AskForClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred: the chain is validated at MQTT CONNECT (see the module comment).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// aws-lc-rs with the server preferring AES-128-GCM with SHA-256 in TLS 1.3: the handshake's
/// other parts are at the 128-bit level (P-256, X25519), and SHA-384's key schedule costs far
/// more on CPUs without SHA-512 instructions (about a tenth of a resumed handshake). Every
/// default suite stays available to clients that offer only those.
fn device_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let preferred = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let mut suites = preferred.to_vec();
    suites.extend(
        provider
            .cipher_suites
            .iter()
            .filter(|s| !preferred.iter().any(|p| p.suite() == s.suite())),
    );
    provider.cipher_suites = suites;
    provider
}

/// The device-facing TLS configuration: TLS 1.2 and 1.3, the hub's server certificate, client
/// certificates requested, resumption by stateless tickets (see the module comment).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(device_provider());
    let verifier = Arc::new(AskForClientCertificate {
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Tickets, not a session cache: an idle connection costs no extra memory, and the ticket key
    // (random, in memory, rotated) dies with the process.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One ticket per connection (rustls sends two by default): a device resumes one session at
    // a time and each resumption brings a fresh ticket, so a second is encryption and bytes for
    // nothing.
    config.send_tls13_tickets = 1;
    // The server's suite order (see `device_provider`), not the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
