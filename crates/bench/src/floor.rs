//! `floor`: the crypto a server-side mutual-TLS 1.3 handshake cannot avoid, timed in a hot loop
//! with the provider iothub ships, to set each broker's CPU per connect against.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

/// Median seconds per call of `f`, over batches run for about `seconds`.
fn time_per_call(seconds: f64, mut f: impl FnMut()) -> f64 {
    let mut per_call = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t0 = Instant::now();
        for _ in 0..100 {
            f();
        }
        per_call.push(t0.elapsed().as_secs_f64() / 100.0);
    }
    per_call.sort_by(|a, b| a.total_cmp(b));
    per_call[per_call.len() / 2]
}

/// `floor`: times each primitive for `seconds` and prints the floor as JSON.
pub(crate) fn floor(seconds: f64) -> Result<()> {
    use aws_lc_rs::{agreement, rand, signature};
    use signature::KeyPair;
    if !(0.05..=60.0).contains(&seconds) {
        bail!("--seconds is {seconds}; expected 0.05 to 60");
    }
    let rng = rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
    let key = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
    )
    .map_err(|_| anyhow::anyhow!("cannot load the P-256 key"))?;
    // What TLS 1.3 signs: 64 spaces, a context string, a zero byte, a SHA-256 transcript hash.
    let message = [0x20u8; 130];
    let sig = key
        .sign(&rng, &message)
        .map_err(|_| anyhow::anyhow!("cannot sign"))?;
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    public
        .verify(&message, sig.as_ref())
        .map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
    let sign = time_per_call(seconds, || {
        let _ = std::hint::black_box(key.sign(&rng, &message));
    });
    let verify = time_per_call(seconds, || {
        let _ = std::hint::black_box(public.verify(&message, sig.as_ref()));
    });
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .and_then(|k| k.compute_public_key())
        .map_err(|_| anyhow::anyhow!("cannot make an X25519 key"))?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer.as_ref().to_vec());
    // The server's part of the key exchange: a fresh key pair, its public half, the agreement.
    let x25519 = time_per_call(seconds, || {
        let Ok(own) = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng) else {
            return;
        };
        let _ = std::hint::black_box(own.compute_public_key());
        let _ = agreement::agree_ephemeral(own, &peer, (), |secret| {
            std::hint::black_box(secret.len());
            Ok(())
        });
    });
    let floor = sign + 3.0 * verify + x25519;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "provider": "aws-lc-rs",
            "sign_us": sign * 1e6,
            "verify_us": verify * 1e6,
            "x25519_us": x25519 * 1e6,
            "floor_ms": floor * 1000.0,
            "handshakes_per_core_second": 1.0 / floor,
            "what": "1 ECDSA P-256 sign (CertificateVerify) + 3 verifies (leaf, intermediate, client CertificateVerify) + 1 X25519 key exchange",
        }))?
    );
    Ok(())
}
