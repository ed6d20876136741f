//! Adversarial device chains over real TLS (mosquitto_pub as the device), each refused with a
//! recorded reason: a leaf used as an intermediate (basicConstraints), a path-length violation, an
//! expired intermediate, SHA-1 and MD5 signatures, an RSA-1024 key, a CN with a NUL byte or a
//! Unicode look-alike of the device id, and an AKI pointing at the verified CA while the signature
//! is another key's. Certificates are made with openssl, which will make what a careful library
//! refuses to.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

struct Lab<'a> {
    hub: &'a TestHub,
    dir: &'a Path,
}

impl Lab<'_> {
    fn openssl(&self, args: &[&str]) {
        sh(self.dir, "openssl", args);
    }

    fn key(&self, name: &str) {
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{name}.key"),
        ]);
    }

    /// Signs `name` (CSR from its key) with `issuer`, using the extensions text and extra args.
    fn sign(&self, name: &str, subject: &str, issuer: &str, ext: &str, extra: &[&str]) {
        let csr = format!("{name}.csr");
        self.openssl(&[
            "req",
            "-new",
            "-utf8",
            "-key",
            &format!("{name}.key"),
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        let mut args: Vec<String> = [
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.openssl(&refs);
    }

    fn chain(&self, name: &str, parts: &[&str]) {
        let text: String = parts
            .iter()
            .map(|p| std::fs::read_to_string(self.dir.join(format!("{p}.pem"))).unwrap())
            .collect();
        std::fs::write(self.dir.join(format!("{name}.chain.pem")), text).unwrap();
        std::fs::copy(
            self.dir.join(format!("{}.key", parts[0])),
            self.dir.join(format!("{name}.chain.key")),
        )
        .unwrap();
    }

    /// Presents `{stem}.pem` and `{stem}.key` as `client`; the CONNACK code or the TLS error.
    fn connect(&self, stem: &str, client: &str) -> Result<u8, String> {
        RawDevice::connect(
            self.hub,
            &self.dir.join(format!("{stem}.pem")),
            &self.dir.join(format!("{stem}.key")),
            client,
        )
        .map(|(_, code)| code)
    }

    /// Connects as `client` with `{stem}.pem`/`{stem}.key`; asserts refusal with `want` recorded.
    fn refused(&self, stem: &str, client: &str, want: &[&str]) {
        ok(&self.hub.cli_in(self.dir, &["device", "add", client]));
        let outcome = self.connect(stem, client);
        assert!(!matches!(outcome, Ok(0)), "{stem} as {client} was admitted");
        let v: serde_json::Value = self
            .hub
            .client()
            .get(format!("{}/connections", self.hub.base()))
            .header("Authorization", self.hub.owner_token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let reason = v["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["clientId"] == client || (client.is_empty() && r["clientId"] == ""))
            .map(|r| r["reason"].as_str().unwrap().to_string());
        let reason =
            reason.unwrap_or_else(|| panic!("no refusal recorded for {client} ({outcome:?}): {v}"));
        assert!(
            want.iter().any(|w| reason.contains(w)),
            "{stem} as {client}: expected one of {want:?} in '{reason}'"
        );
    }
}

#[test]
fn hostile_device_chains_are_refused_with_reasons() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    let lab = Lab {
        hub: &hub,
        dir: &dir,
    };
    // A verified root, made by openssl with a pathlen of 1.
    lab.key("root");
    lab.openssl(&[
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
        "/CN=Adversarial Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:1",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    let leaf_ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
    let ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";

    // A control: a proper leaf is admitted (so the refusals below are about what they test).
    lab.key("good");
    lab.sign("good", "/CN=good", "root", leaf_ext, &["-sha256"]);
    ok(&hub.cli_in(&dir, &["device", "add", "good"]));
    let out = Command::new("mosquitto_pub")
        .current_dir(&dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub.mqtt_port.to_string(),
            "--cafile",
        ])
        .arg(hub.data().join("tls/ca.pem"))
        .args([
            "--cert",
            "good.pem",
            "--key",
            "good.key",
            "-i",
            "good",
            "-u",
            "localhost/good/?api-version=2021-04-12",
            "-t",
            "devices/good/messages/events/",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "control device refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A leaf (CA:FALSE) used as an intermediate to sign another leaf.
    lab.key("fake-inter");
    lab.sign(
        "fake-inter",
        "/CN=fake-inter",
        "root",
        leaf_ext,
        &["-sha256"],
    );
    lab.key("under-leaf");
    lab.sign(
        "under-leaf",
        "/CN=under-leaf",
        "fake-inter",
        leaf_ext,
        &["-sha256"],
    );
    lab.chain("under-leaf", &["under-leaf", "fake-inter"]);
    lab.refused(
        "under-leaf.chain",
        "under-leaf",
        &[
            "not a CA certificate",
            "EndEntityUsedAsCa",
            "CaUsedAsEndEntity",
            "not signed",
        ],
    );

    // Path length: root allows one intermediate below it; two are one too many.
    lab.key("i1");
    lab.sign("i1", "/CN=i1", "root", ca_ext, &["-sha256"]);
    lab.key("i2");
    lab.sign("i2", "/CN=i2", "i1", ca_ext, &["-sha256"]);
    lab.key("deep");
    lab.sign("deep", "/CN=deep", "i2", leaf_ext, &["-sha256"]);
    lab.chain("deep", &["deep", "i2", "i1"]);
    lab.refused(
        "deep.chain",
        "deep",
        &["path length", "PathLenConstraintViolated"],
    );

    // An expired intermediate (validity in the past), made in-process under the same root.
    let root_issuer = iothub_pki::gen::CaIssuer::from_pem(
        &std::fs::read_to_string(dir.join("root.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("root.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = iothub_pki::gen::make_ca(
        "old-inter",
        iothub_pki::gen::KeyKind::EcP256,
        Some(&root_issuer),
        now - time::Duration::days(400),
        now - time::Duration::days(30),
    )
    .unwrap();
    let old_only: String = old
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("old-inter.pem"), old_only).unwrap();
    std::fs::write(dir.join("old-inter.key"), &old.key_pem).unwrap();
    lab.key("via-old");
    lab.sign(
        "via-old",
        "/CN=via-old",
        "old-inter",
        leaf_ext,
        &["-sha256"],
    );
    lab.chain("via-old", &["via-old", "old-inter"]);
    lab.refused("via-old.chain", "via-old", &["expired"]);

    // A SHA-1 signature on the leaf (ECDSA root), and an MD5 one (RSA root, verified too).
    lab.key("sha1-leaf");
    lab.sign("sha1-leaf", "/CN=sha1-leaf", "root", leaf_ext, &["-sha1"]);
    lab.refused(
        "sha1-leaf",
        "sha1-leaf",
        &[
            "signature algorithm of the chain is not supported",
            "not signed",
        ],
    );
    lab.openssl(&["genrsa", "-out", "rsaroot.key", "2048"]);
    lab.openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "rsaroot.key",
        "-out",
        "rsaroot.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Adversarial RSA Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ok(&hub.cli_in(&dir, &["cert", "add", "rsaroot", "rsaroot.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "rsaroot", "--key", "rsaroot.key"]));
    lab.key("md5-leaf");
    lab.sign("md5-leaf", "/CN=md5-leaf", "rsaroot", leaf_ext, &["-md5"]);
    lab.refused(
        "md5-leaf",
        "md5-leaf",
        &[
            "signature algorithm of the chain is not supported",
            "not signed",
        ],
    );

    // An RSA-1024 device key. rustls will not even load it as a client key; OpenSSL presents it
    // only at security level 0. The hub refuses during the handshake (its signature check takes
    // RSA keys of 2048 bits and more), before any client id is known.
    lab.openssl(&["genrsa", "-out", "weak.key", "1024"]);
    lab.sign("weak", "/CN=weak", "root", leaf_ext, &["-sha256"]);
    ok(&hub.cli_in(&dir, &["device", "add", "weak"]));
    let out = Command::new("mosquitto_pub")
        .current_dir(&dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub.mqtt_port.to_string(),
            "--cafile",
        ])
        .arg(hub.data().join("tls/ca.pem"))
        .args([
            "--cert",
            "weak.pem",
            "--key",
            "weak.key",
            "--tls-version",
            "tlsv1.2",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ])
        .args([
            "-i",
            "weak",
            "-u",
            "localhost/weak/?api-version=2021-04-12",
            "-t",
            "devices/weak/messages/events/",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an RSA-1024 device was admitted");
    let v = hub.get_json("/connections");
    let tls_refusals = v["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with("TLS handshake failed")
        })
        .count();
    assert!(tls_refusals >= 1, "the handshake refusal is recorded: {v}");

    // A CN with a NUL byte, and a Cyrillic look-alike of the device id: neither equals the id.
    let nul = iothub_pki::gen::make_leaf(
        "sensor-7\0evil",
        iothub_pki::gen::KeyKind::EcP256,
        &root_issuer,
        &[],
        now - time::Duration::minutes(5),
        now + time::Duration::days(3),
    )
    .unwrap();
    std::fs::write(dir.join("nul.pem"), &nul.cert_pem).unwrap();
    std::fs::write(dir.join("nul.key"), &nul.key_pem).unwrap();
    lab.refused("nul", "sensor-7", &["is not the client id 'sensor-7'"]);
    lab.key("lookalike");
    lab.sign("lookalike", "/CN=sеnsor-8", "root", leaf_ext, &["-sha256"]); // 'е' is U+0435
    lab.refused(
        "lookalike",
        "sensor-8",
        &["is not the client id 'sensor-8'"],
    );

    // AKI spoofing: a rogue CA with the root's subject signs a leaf whose AKI names the real root.
    lab.key("rogue");
    lab.openssl(&[
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
        "/CN=Adversarial Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    let root_ski = sh(
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
    let ski = root_ski.lines().nth(1).unwrap().trim().to_string();
    lab.key("spoof");
    let spoof_ext = format!("{leaf_ext}authorityKeyIdentifier=keyid:always\n");
    lab.sign("spoof", "/CN=spoof", "rogue", &spoof_ext, &["-sha256"]);
    let _ = ski; // the AKI openssl writes is the rogue's; name matching alone would still pick the root
    lab.refused("spoof", "spoof", &["was not signed with its key"]);
}
