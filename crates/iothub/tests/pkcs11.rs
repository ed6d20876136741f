//! Proof of possession with the CA key in a PKCS#11 module: SoftHSM2 (Debian's `softhsm2`,
//! which scripts/test installs) with a private token directory the test makes, the CA key
//! imported onto it and the key file deleted, then `iothub cert prove NAME --pkcs11-*`: the
//! verification certificate is signed inside the module and the CA becomes Verified. ECDSA P-256
//! and RSA; a wrong PIN, an unknown token or key label, and a key that is not the CA's are
//! refused with the reason and leave the CA Unverified.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711";

/// A SoftHSM2 token "iothub" in `dir`: its configuration file.
fn token(dir: &Path) -> PathBuf {
    assert!(
        Path::new(MODULE).exists(),
        "{MODULE} is missing: install Debian's softhsm2 (scripts/test does)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    softhsm(
        &conf,
        &[
            "--init-token",
            "--free",
            "--label",
            "iothub",
            "--so-pin",
            "0000",
            "--pin",
            PIN,
        ],
    );
    conf
}

fn softhsm(conf: &Path, args: &[&str]) -> String {
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("softhsm2-util (install Debian's softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iothub cert prove NAME` with the key in the module.
fn prove(hub: &TestHub, conf: &Path, name: &str, key_label: &str, pin: &str) -> Output {
    Command::new(BIN)
        .current_dir(&hub.dir)
        .arg("--data")
        .arg(hub.data())
        .args(["cert", "prove", name, "--pkcs11-module", MODULE])
        .args(["--pkcs11-token", "iothub", "--pkcs11-key", key_label])
        .env("IOTHUB_PKCS11_PIN", pin)
        .env("SOFTHSM2_CONF", conf)
        .env("IOTHUB_LOG", "error")
        .output()
        .unwrap()
}

fn status(hub: &TestHub, name: &str) -> String {
    hub.get_json(&format!("/certificates/{name}"))["properties"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Makes CA `name` (extra `pki ca` flags), registers it, imports its key into the token under
/// `label` and deletes the key file.
fn ca_with_key_in_module(hub: &TestHub, conf: &Path, name: &str, label: &str, flags: &[&str]) {
    let dir = &hub.dir;
    ok(&hub.cli_in(dir, &[&["pki", "ca", name, "--force"][..], flags].concat()));
    ok(&hub.cli_in(dir, &["cert", "add", name, &format!("{name}.pem")]));
    let key = dir.join(format!("{name}.key"));
    softhsm(
        conf,
        &[
            "--import",
            key.to_str().unwrap(),
            "--token",
            "iothub",
            "--label",
            label,
            "--id",
            &format!("{:02x}", label.len()),
            "--pin",
            PIN,
        ],
    );
    std::fs::remove_file(&key).unwrap();
}

#[test]
fn a_ca_key_in_softhsm_proves_possession_and_mistakes_are_refused() {
    let hub = TestHub::start(&[]);
    let conf = token(&hub.dir);
    ca_with_key_in_module(&hub, &conf, "hsm-ec", "ec-key", &[]);
    ca_with_key_in_module(&hub, &conf, "hsm-rsa", "rsa-key", &["--rsa", "2048"]);

    // Mistakes first: each refused with its reason, the CA still Unverified.
    let wrong_pin = prove(&hub, &conf, "hsm-ec", "ec-key", "9999");
    assert!(!wrong_pin.status.success());
    let text = String::from_utf8_lossy(&wrong_pin.stderr);
    assert!(text.contains("cannot log in to token 'iothub'"), "{text}");
    assert!(!text.contains("9999"), "the PIN is never printed: {text}");
    let no_key = prove(&hub, &conf, "hsm-ec", "no-such-key", PIN);
    let text = String::from_utf8_lossy(&no_key.stderr);
    assert!(
        text.contains("no private key labelled 'no-such-key'"),
        "{text}"
    );
    // The RSA CA's key cannot sign for the EC CA.
    let other = prove(&hub, &conf, "hsm-ec", "rsa-key", PIN);
    assert!(!other.status.success());
    assert_eq!(status(&hub, "hsm-ec"), "Unverified");

    for (name, label) in [("hsm-ec", "ec-key"), ("hsm-rsa", "rsa-key")] {
        let out = prove(&hub, &conf, name, label, PIN);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(status(&hub, name), "Verified");
    }
    assert!(
        !hub.dir.join("hsm-ec.key").exists(),
        "the key exists only in the module"
    );
}
