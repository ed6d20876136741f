//! Proof of possession in two steps, for a CA key behind a KMS without PKCS#11, against a real
//! `iothub serve`: `cert verification-tbs` writes the to-be-signed bytes for a fresh code, the key
//! signs them elsewhere (here `openssl dgst -sign`, as a KMS's command line would), and
//! `cert verification-finish` puts the signature in and verifies. ECDSA (DER signature, and the
//! same in base64) and RSA; a signature by another key is refused before anything is sent, and
//! the CA stays Unverified.

mod common;

use common::*;

fn status(hub: &TestHub, name: &str) -> bool {
    hub.get_json(&format!("/certificates/{name}"))["properties"]["isVerified"]
        .as_bool()
        .unwrap()
}

fn begin(hub: &TestHub, name: &str, flags: &[&str]) {
    let mut args = vec!["pki", "ca", name];
    args.extend_from_slice(flags);
    ok(&hub.cli_in(&hub.dir, &args));
    ok(&hub.cli_in(&hub.dir, &["cert", "add", name, &format!("{name}.pem")]));
    let out = ok(&hub.cli_in(&hub.dir, &["cert", "verification-tbs", name]));
    assert!(out.contains(&format!("wrote {name}.tbs")), "{out}");
    assert!(
        out.contains(&format!(
            "iothub cert verification-finish {name} --tbs {name}.tbs --signature {name}.sig"
        )),
        "{out}"
    );
}

fn sign(hub: &TestHub, key: &str, tbs: &str, out: &str) {
    sh(
        &hub.dir,
        "openssl",
        &["dgst", "-sha256", "-sign", key, "-out", out, tbs],
    );
}

fn finish(hub: &TestHub, name: &str, signature: &str) -> std::process::Output {
    hub.cli_in(
        &hub.dir,
        &[
            "cert",
            "verification-finish",
            name,
            "--tbs",
            &format!("{name}.tbs"),
            "--signature",
            signature,
        ],
    )
}

#[test]
fn a_signature_made_elsewhere_proves_possession() {
    let hub = TestHub::start(&[]);
    // ECDSA P-256, the signature in DER.
    begin(&hub, "kms-ec", &[]);
    sign(&hub, "kms-ec.key", "kms-ec.tbs", "kms-ec.sig");
    let out = ok(&finish(&hub, "kms-ec", "kms-ec.sig"));
    assert!(out.contains("kms-ec: Verified"), "{out}");
    assert!(status(&hub, "kms-ec"));

    // The same in base64 text, as a KMS's command line prints it.
    begin(&hub, "kms-b64", &[]);
    sign(&hub, "kms-b64.key", "kms-b64.tbs", "kms-b64.der");
    let der = std::fs::read(hub.dir.join("kms-b64.der")).unwrap();
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    std::fs::write(hub.dir.join("kms-b64.sig"), format!("{text}\n")).unwrap();
    ok(&finish(&hub, "kms-b64", "kms-b64.sig"));
    assert!(status(&hub, "kms-b64"));

    // RSA.
    begin(&hub, "kms-rsa", &["--rsa", "2048"]);
    sign(&hub, "kms-rsa.key", "kms-rsa.tbs", "kms-rsa.sig");
    ok(&finish(&hub, "kms-rsa", "kms-rsa.sig"));
    assert!(status(&hub, "kms-rsa"));
}

#[test]
fn another_keys_signature_is_refused_and_changes_nothing() {
    let hub = TestHub::start(&[]);
    begin(&hub, "kms-a", &[]);
    ok(&hub.cli_in(&hub.dir, &["pki", "ca", "other"]));
    sign(&hub, "other.key", "kms-a.tbs", "kms-a.sig");
    let out = finish(&hub, "kms-a", "kms-a.sig");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not make a verification certificate the hub accepts"),
        "{err}"
    );
    assert!(!status(&hub, "kms-a"));
    // A file that is no signature at all.
    std::fs::write(hub.dir.join("junk.sig"), [7u8; 10]).unwrap();
    let out = finish(&hub, "kms-a", "junk.sig");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DER or 64 raw bytes"), "{err}");
    assert!(!status(&hub, "kms-a"));
}
