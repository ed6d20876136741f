//! Forged verification certificates, made with openssl, each refused with its code: the code in
//! OU (with another CN), the code only in a SAN (no CN), a same-subject rogue CA's signature under
//! an AKI that names the real CA, and the right certificate made after the code expired.

mod common;

use common::*;
use serde_json::Value;

fn verify(hub: &TestHub, name: &str, pem: &str) -> (u16, Value) {
    let r = hub
        .client()
        .post(format!("{}/certificates/{name}/verify", hub.base()))
        .header("Authorization", hub.owner_token())
        .json(&serde_json::json!({ "certificate": pem }))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn forged_verification_certificates_are_refused() {
    let hub = TestHub::start(&["--code-lifetime", "2s"]);
    let dir = hub.dir.clone();
    let o = |args: &[&str]| sh(&dir, "openssl", args);
    o(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "root.key",
    ]);
    o(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Forgery Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "subjectKeyIdentifier=hash",
    ]);
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    let code = ok(&hub.cli_in(&dir, &["cert", "code", "root"]))
        .trim()
        .to_string();
    let leaf = |name: &str, subject: &str, ext: &str, ca: &str| -> String {
        o(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{name}.key"),
        ]);
        o(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        o(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
        ]);
        std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap()
    };
    let plain = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";

    // The code in OU, with another CN.
    let ou = leaf("ou", &format!("/OU={code}/CN=not-the-code"), plain, "root");
    let (status, e) = verify(&hub, "root", &ou);
    assert_eq!((status, e["code"].as_str()), (400, Some("400055")), "{e}");
    // The code only in a SAN, no CN at all.
    let san = leaf(
        "san",
        "/O=Forgery",
        &format!("{plain}subjectAltName=DNS:{code}\n"),
        "root",
    );
    let (status, e) = verify(&hub, "root", &san);
    assert_eq!((status, e["code"].as_str()), (400, Some("400062")), "{e}");
    // A rogue CA with the same subject signs, claiming the real CA's key identifier.
    let ski = sh(
        &dir,
        "openssl",
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
        ],
    );
    let ski = ski.lines().nth(1).unwrap().trim().to_string();
    o(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "rogue.key",
    ]);
    o(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "rogue.key",
        "-out",
        "rogue.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Forgery Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        &format!("subjectKeyIdentifier={ski}"),
    ]);
    let spoof = leaf(
        "spoof",
        &format!("/CN={code}"),
        &format!("{plain}authorityKeyIdentifier=keyid:always\n"),
        "rogue",
    );
    let aki = sh(
        &dir,
        "openssl",
        &[
            "x509",
            "-in",
            "spoof.pem",
            "-noout",
            "-ext",
            "authorityKeyIdentifier",
        ],
    );
    assert!(
        aki.contains(&ski),
        "the forgery names the real CA's key id: {aki}"
    );
    let (status, e) = verify(&hub, "root", &spoof);
    assert_eq!((status, e["code"].as_str()), (400, Some("400054")), "{e}");
    // The genuine certificate, but after the code expired: refused, the CA stays Unverified.
    let late = leaf("late", &format!("/CN={code}"), plain, "root");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (status, e) = verify(&hub, "root", &late);
    assert_eq!((status, e["code"].as_str()), (400, Some("400057")), "{e}");
    let v: Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "cert", "show", "root"]))).unwrap();
    assert_eq!(v["properties"]["isVerified"], false);
}
