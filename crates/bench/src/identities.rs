//! The device identities every run connects with: `identities` makes a test PKI and N device
//! leaves once, and each run loads them, so every broker is measured with the same certificates.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// One device: its id, the chain it presents (leaf + intermediate) and its key, as PEM.
pub(crate) struct Identity {
    pub(crate) id: String,
    pub(crate) chain: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

/// The first `n` identities made in `dir` by `identities`.
pub(crate) fn load_identities(dir: &Path, n: usize) -> Result<Vec<Identity>> {
    let list: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("devices.json"))
            .context("devices.json (run iothub-bench identities)")?,
    )?;
    list.iter()
        .take(n)
        .map(|d| {
            let id = d["deviceId"].as_str().unwrap_or_default().to_string();
            Ok(Identity {
                chain: std::fs::read(dir.join(format!("devices/{id}.pem")))?,
                key: std::fs::read(dir.join(format!("devices/{id}.key")))?,
                id,
            })
        })
        .collect()
}

/// `identities`: the test PKI and `count` device identities in `dir`.
pub(crate) fn identities(dir: &Path, count: usize, rsa: bool) -> Result<()> {
    use iothub_pki::gen::{self, CaIssuer, KeyKind};
    if count == 0 || count > 200_000 {
        bail!("--count is {count}; expected 1 to 200000");
    }
    let kind = if rsa {
        KeyKind::Rsa(2048)
    } else {
        KeyKind::EcP256
    };
    std::fs::create_dir_all(dir.join("devices"))?;
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    );
    let root = gen::make_ca("bench-root", kind, None, from, to)?;
    let root_issuer = CaIssuer::from_pem(&root.cert_pem, &root.key_pem)?;
    let inter = gen::make_ca("bench-intermediate", kind, Some(&root_issuer), from, to)?;
    let inter_issuer = CaIssuer::from_pem(&inter.cert_pem, &inter.key_pem)?;
    std::fs::write(dir.join("root.pem"), &root.cert_pem)?;
    std::fs::write(dir.join("root.key"), &root.key_pem)?;
    std::fs::write(dir.join("intermediate.pem"), &inter.cert_pem)?;
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bench-{i:06}");
        let leaf = gen::make_leaf(&id, kind, &inter_issuer, &[], from, to)?;
        // Leaf then intermediate: what a device sends (the root is the broker's trust anchor).
        let chain: String = leaf
            .cert_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .take(2)
            .collect();
        std::fs::write(dir.join(format!("devices/{id}.pem")), chain)?;
        std::fs::write(dir.join(format!("devices/{id}.key")), &leaf.key_pem)?;
        devices.push(json!({ "deviceId": id, "status": "enabled", "authentication": { "type": "certificateAuthority" } }));
        if i % 1000 == 999 {
            eprint!("\ridentities: {}/{count}", i + 1);
        }
    }
    eprintln!("\ridentities: {count}/{count}");
    std::fs::write(dir.join("devices.json"), serde_json::to_string(&devices)?)?;
    println!(
        "{}",
        json!({ "dir": dir.display().to_string(), "devices": count, "key": if rsa { "RSA-2048" } else { "ECDSA P-256" } })
    );
    Ok(())
}
