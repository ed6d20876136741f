//! The seed tutorial end to end against a running `iothub serve` over real HTTPS: add a CA, generate
//! a code, make the verification certificate with the openssl CLI exactly as steps 8-9 do, verify.
//! For RSA and ECDSA CAs, root and intermediate, made with openssl (as operators make them).

mod common;

use common::*;
use std::path::Path;

/// Makes a root CA with openssl: `kind` is "rsa" or "ec".
fn openssl_root(dir: &Path, name: &str, kind: &str) {
    let key = format!("{name}.key");
    match kind {
        "rsa" => sh(dir, "openssl", &["genrsa", "-out", &key, "2048"]),
        _ => sh(
            dir,
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        ),
    };
    sh(
        dir,
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/C=US/O=Contoso/CN={name} Root"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// Makes an intermediate CA signed by `parent` with openssl.
fn openssl_intermediate(dir: &Path, name: &str, parent: &str, kind: &str) {
    let key = format!("{name}.key");
    match kind {
        "rsa" => sh(dir, "openssl", &["genrsa", "-out", &key, "2048"]),
        _ => sh(
            dir,
            "openssl",
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        ),
    };
    let csr = format!("{name}.csr");
    sh(
        dir,
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/O=Contoso/CN={name} Intermediate"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    sh(
        dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{parent}.pem"),
            "-CAkey",
            &format!("{parent}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn seed_flow(hub: &TestHub, dir: &Path, name: &str) {
    // Steps 1-4: add; listed as Unverified.
    let out = ok(&hub.cli_in(dir, &["cert", "add", name, &format!("{name}.pem")]));
    assert!(out.contains(&format!("{name}: Unverified")), "{out}");
    let listed = ok(&hub.cli_in(dir, &["-o", "json", "cert", "show", name]));
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["properties"]["isVerified"], false);
    assert_eq!(v["properties"]["thumbprint"].as_str().unwrap().len(), 40);

    // Steps 5-7: generate the code (alone on stdout).
    let code = ok(&hub.cli_in(dir, &["cert", "code", name]))
        .trim()
        .to_string();
    assert_eq!(code.len(), 48, "{code}");
    assert!(code
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));

    // Steps 8-9: openssl req + openssl ca -extensions client_ext.
    let conf = openssl_ca_config(dir, &format!("{name}.pem"), &format!("{name}.key"));
    let pop = openssl_verification_cert(dir, &conf, &code, &format!("{name}-pop.crt"));

    // Steps 10-11: upload and Verify.
    let out = ok(&hub.cli_in(dir, &["cert", "verify", name, &pop]));
    assert!(out.contains(&format!("{name}: Verified")), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&hub.cli_in(dir, &["-o", "json", "cert", "show", name]))).unwrap();
    assert_eq!(v["properties"]["isVerified"], true);
    assert_eq!(v["properties"]["status"], "Verified");
}

#[test]
fn seed_flow_rsa_and_ecdsa_root_and_intermediate() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    openssl_root(&dir, "rsaroot", "rsa");
    openssl_root(&dir, "ecroot", "ec");
    openssl_intermediate(&dir, "rsainter", "rsaroot", "rsa");
    openssl_intermediate(&dir, "ecinter", "ecroot", "ec");
    for name in ["rsaroot", "ecroot", "rsainter", "ecinter"] {
        seed_flow(&hub, &dir, name);
    }
    let list = ok(&hub.cli(&["cert", "list"]));
    assert_eq!(list.matches("Verified").count(), 4, "{list}");
}

#[test]
fn seed_flow_accepts_der_and_verification_by_api_with_etags() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    openssl_root(&dir, "derroot", "ec");
    // A binary .cer upload (the CLI sends base64 of DER, as Azure's CLI does).
    sh(
        &dir,
        "openssl",
        &[
            "x509",
            "-in",
            "derroot.pem",
            "-outform",
            "DER",
            "-out",
            "derroot.cer",
        ],
    );
    ok(&hub.cli_in(&dir, &["cert", "add", "derroot", "derroot.cer"]));
    let http = hub.client();
    let auth = hub.owner_token();
    let url = format!("{}/certificates/derroot", hub.base());
    let v: serde_json::Value = http
        .get(&url)
        .header("Authorization", &auth)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let etag1 = v["etag"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{url}/generateVerificationCode"))
        .header("Authorization", &auth)
        .header("If-Match", &etag1)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    let etag2 = v["etag"].as_str().unwrap().to_string();
    assert_ne!(etag1, etag2);
    let code = v["properties"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let conf = openssl_ca_config(&dir, "derroot.pem", "derroot.key");
    let pop = openssl_verification_cert(&dir, &conf, &code, "pop.crt");
    let pem = std::fs::read_to_string(dir.join(pop)).unwrap();
    // The stale etag (from before the code) is refused with 412, changing nothing.
    let r = http
        .post(format!("{url}/verify"))
        .header("Authorization", &auth)
        .header("If-Match", &etag1)
        .json(&serde_json::json!({ "certificate": pem }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 412);
    let e: serde_json::Value = r.json().unwrap();
    assert_eq!(e["code"], "412001");
    // The current etag, quoted as the service SDK sends it, is accepted.
    let r = http
        .post(format!("{url}/verify"))
        .header("Authorization", &auth)
        .header("If-Match", format!("\"{etag2}\""))
        .json(&serde_json::json!({ "certificate": pem }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["properties"]["isVerified"], true);
    assert_ne!(v["etag"].as_str().unwrap(), etag2);
    assert!(v["properties"]["expiry"]
        .as_str()
        .unwrap()
        .ends_with(" GMT"));
}
