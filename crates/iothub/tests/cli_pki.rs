//! The CLI's one-step `cert prove` and the `pki` helpers: certificates they make are accepted by
//! `openssl verify`, and proof of possession works in one command for root and intermediate CAs of
//! every key kind, with the key never sent to the hub.

mod common;

use common::*;

#[test]
fn pki_outputs_pass_openssl_verify_and_prove_works_in_one_step() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["pki", "ca", "inter", "--parent", "root"]));
    ok(&hub.cli_in(&dir, &["pki", "ca", "rsaroot", "--rsa", "2048"]));
    ok(&hub.cli_in(&dir, &["pki", "ca", "edroot", "--ed25519"]));
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "device",
            "sensor-1",
            "--ca-cert",
            "inter.pem",
            "--ca-key",
            "inter.key",
        ],
    ));

    // openssl verify: roots self-verify; the intermediate chains to root; the device chains via inter.
    for root in ["root", "rsaroot", "edroot"] {
        let out = sh(
            &dir,
            "openssl",
            &[
                "verify",
                "-CAfile",
                &format!("{root}.pem"),
                &format!("{root}.pem"),
            ],
        );
        assert!(out.contains("OK"), "{out}");
    }
    sh(
        &dir,
        "openssl",
        &["x509", "-in", "inter.pem", "-out", "inter-only.pem"],
    );
    let out = sh(
        &dir,
        "openssl",
        &["verify", "-CAfile", "root.pem", "inter-only.pem"],
    );
    assert!(out.contains("OK"), "{out}");
    let out = sh(
        &dir,
        "openssl",
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter-only.pem",
            "-purpose",
            "sslclient",
            "sensor-1.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let subject = sh(
        &dir,
        "openssl",
        &["x509", "-in", "sensor-1.pem", "-noout", "-subject"],
    );
    assert!(subject.contains("CN = sensor-1"), "{subject}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("sensor-1.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // An offline verification certificate chains to its CA too.
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "verification-cert",
            "--ca-cert",
            "root.pem",
            "--ca-key",
            "root.key",
            "--code",
            "ABCDEF",
            "--out",
            "v.pem",
        ],
    ));
    let out = sh(&dir, "openssl", &["verify", "-CAfile", "root.pem", "v.pem"]);
    assert!(out.contains("OK"), "{out}");

    // One-step proof of possession for each CA (the intermediate uploaded alone).
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "inter", "inter-only.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "rsaroot", "rsaroot.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "edroot", "edroot.pem"]));
    for name in ["root", "inter", "rsaroot", "edroot"] {
        let out = ok(&hub.cli_in(
            &dir,
            &["cert", "prove", name, "--key", &format!("{name}.key")],
        ));
        assert!(out.contains(&format!("{name}: Verified")), "{out}");
    }

    // The wrong key is refused locally, before anything changes on the hub.
    ok(&hub.cli_in(&dir, &["pki", "ca", "other"]));
    ok(&hub.cli_in(&dir, &["pki", "ca", "fresh"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "fresh", "fresh.pem"]));
    let before = ok(&hub.cli_in(&dir, &["-o", "json", "cert", "show", "fresh"]));
    let out = hub.cli_in(&dir, &["cert", "prove", "fresh", "--key", "other.key"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not belong to the CA certificate"),
        "{err}"
    );
    assert_eq!(
        before,
        ok(&hub.cli_in(&dir, &["-o", "json", "cert", "show", "fresh"]))
    );

    // Existing files are not overwritten without --force.
    let out = hub.cli_in(&dir, &["pki", "ca", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn openssl_keys_in_every_format_work_with_prove() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    // PKCS#1 RSA key ("BEGIN RSA PRIVATE KEY"), SEC1 EC key ("BEGIN EC PRIVATE KEY"), PKCS#8.
    sh(
        &dir,
        "openssl",
        &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"],
    );
    sh(
        &dir,
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
    );
    sh(
        &dir,
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "pkcs8.key",
        ],
    );
    for (name, key) in [
        ("pkcs1", "pkcs1.key"),
        ("sec1", "sec1.key"),
        ("pkcs8", "pkcs8.key"),
    ] {
        let head = std::fs::read_to_string(dir.join(key)).unwrap();
        assert!(head.starts_with("-----BEGIN"), "{head}");
        sh(
            &dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                key,
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/O=Fabrikam/OU=Devices/CN={name} CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
        );
        ok(&hub.cli_in(&dir, &["cert", "add", name, &format!("{name}.pem")]));
        let out = ok(&hub.cli_in(&dir, &["cert", "prove", name, "--key", key]));
        assert!(out.contains(&format!("{name}: Verified")), "{out}");
    }
    assert!(std::fs::read_to_string(dir.join("pkcs1.key"))
        .unwrap()
        .contains("RSA PRIVATE KEY"));
    assert!(std::fs::read_to_string(dir.join("sec1.key"))
        .unwrap()
        .contains("EC PRIVATE KEY"));
}

#[test]
fn serve_creates_owner_credential_once_and_cli_needs_no_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &["--hostname", "hub.test"]);
    // The first start says where the owner connection string is; it never prints it (stdout is a
    // log under a supervisor: see limits_and_posture.rs).
    let first = hub.first_stdout.join("\n");
    let cs = hub.connection_string();
    assert!(cs.starts_with("HostName=hub.test:"), "{cs}");
    assert!(
        first.contains("owner connection string written to") && !first.contains(&cs),
        "{first}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(hub.data().join("connection-string"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let db_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(hub.data().join("iothub.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(db_mode & 0o077, 0, "the database holds keys: owner-only");
    // The server certificate carries the configured name and the loopback names.
    let sans = sh(
        tmp.path(),
        "openssl",
        &[
            "x509",
            "-in",
            "data/tls/server.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    for want in [
        "DNS:hub.test",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(sans.contains(want), "{want} missing from {sans}");
    }
    hub.kill9();
    // Second start: the key is kept, not printed again.
    let hub = TestHub::start_in(tmp.path(), &[]);
    assert!(!hub.first_stdout.join("\n").contains("SharedAccessKey="));
    let key = |s: &str| s.split("SharedAccessKey=").nth(1).unwrap().to_string();
    assert_eq!(key(&cs), key(&hub.connection_string()));
    // The CLI works with no flags beyond --data (which the harness passes), and `connection-string`
    // prints the stored one.
    assert_eq!(
        ok(&hub.cli(&["connection-string"])).trim(),
        hub.connection_string()
    );
    assert!(ok(&hub.cli(&["cert", "list"])).contains("no CA certificates"));
    // Without a reachable connection string the CLI says what to do.
    let out = std::process::Command::new(BIN)
        .args(["--data", "/nonexistent-iothub-data", "cert", "list"])
        .env_remove("IOTHUB_CONNECTION_STRING")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IOTHUB_CONNECTION_STRING"));
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .current_dir(tmp.path())
            .args(["--data", "data", "serve", "--https", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap()
    };
    for (args, expect) in [
        (vec!["--code-lifetime", "0"], "--code-lifetime"),
        (vec!["--code-lifetime", "5d"], "--code-lifetime"),
        (vec!["--ca-limit", "0"], "--ca-limit"),
        (
            vec!["--max-certificate-bytes", "10"],
            "--max-certificate-bytes",
        ),
        (vec!["--hostname", "bad host"], "--hostname"),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    std::fs::write(tmp.path().join("bad.toml"), "ca_limt = 5\n").unwrap();
    let out = run(&["--config", "bad.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca_limt"));
}
