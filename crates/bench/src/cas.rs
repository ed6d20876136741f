//! `cas`: many extra CAs in a hub, each registered with real proof of possession through the
//! API, so that a connect storm can run at a large registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use iothub_client::{ApiClient, HubTarget};
use serde_json::json;

/// Registers `count` CAs through the API, each proven with its key (the same steps as
/// `cert add` + `cert prove`), `parallel` at a time.
pub(crate) fn register_cas(hub: &HubTarget, count: usize, parallel: usize) -> Result<()> {
    use iothub_pki::gen::{self, CaIssuer, KeyKind};
    if count == 0 || count > 100_000 {
        bail!("--count is {count}; expected 1 to 100000");
    }
    if parallel == 0 || parallel > 64 {
        bail!("--parallel is {parallel}; expected 1 to 64");
    }
    let api = Arc::new(ApiClient::connect(hub)?);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = std::process::id();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (api, next) = (api.clone(), next.clone());
            std::thread::spawn(move || -> Result<()> {
                let now = time::OffsetDateTime::now_utc();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        return Ok(());
                    }
                    let name = format!("bench-ca-{run}-{i:06}");
                    let ca = gen::make_ca(
                        &name,
                        KeyKind::EcP256,
                        None,
                        now - time::Duration::hours(1),
                        now + time::Duration::days(30),
                    )?;
                    let issuer = CaIssuer::from_pem(&ca.cert_pem, &ca.key_pem)?;
                    iothub_client::proof::add_and_prove(&api, &name, &ca.cert_pem, &issuer)
                        .with_context(|| format!("registering {name}"))?;
                    if i % 500 == 499 {
                        eprint!("\rcas: {}/{count}", i + 1);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a registration thread panicked"))??;
    }
    eprintln!("\rcas: {count}/{count}");
    println!(
        "{}",
        json!({ "registered": count, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}
