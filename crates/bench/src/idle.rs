//! `idle`: connections held open and the server's memory per connection. A generator process can
//! hold only as many connections as its open-file limit allows, so with `--per-process` the rest
//! are held by helper processes of this same binary.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iothub_client::mqtt::MqttClient;
use serde_json::json;

use crate::identities::load_identities;
use crate::procfs::rss_kib;
use crate::target::{report, Target};
use crate::tls::{connect_once, ClientConfigs};

/// Opens connections from identities `skip..skip + count`, one after another.
async fn open_idle(t: &Target, skip: usize, count: usize) -> Result<Vec<MqttClient>> {
    let ca = std::fs::read(&t.broker_ca)?;
    let ids = load_identities(&t.dir, skip + count)?;
    if ids.len() < skip + count {
        bail!(
            "{} identities for {} connections: make more with iothub-bench identities",
            ids.len(),
            skip + count
        );
    }
    let mut held = Vec::with_capacity(count);
    let mut configs = ClientConfigs::new(ca, false, t.tls12);
    for (i, id) in ids.iter().enumerate().skip(skip) {
        held.push(connect_once(t, &mut configs, i, id).await?);
        // Only the connections are kept, not one TLS configuration per connection.
        configs.forget();
        if !t.hold && held.len() % 500 == 0 {
            eprint!("\ropen: {}", held.len());
        }
    }
    Ok(held)
}

/// The command line of a helper (this binary again) holding identities `skip..skip + count`.
pub(crate) fn helper_args(t: &Target, skip: usize, count: usize) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["idle".into(), "--dir".into(), t.dir.clone().into()];
    for (flag, value) in [
        ("--addr", t.addr.to_string()),
        ("--server-name", t.server_name.clone()),
        ("--clients", count.to_string()),
        ("--skip", skip.to_string()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    args.extend(["--broker-ca".into(), t.broker_ca.clone().into()]);
    args.push("--hold".into());
    if t.tls12 {
        args.push("--tls12".into());
    }
    args
}

/// A helper process holding part of the idle connections.
struct IdleHelper {
    child: std::process::Child,
    count: usize,
}

impl IdleHelper {
    fn start(t: &Target, skip: usize, count: usize) -> Result<IdleHelper> {
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().context("the generator's own path")?;
        let child = Command::new(exe)
            .args(helper_args(t, skip, count))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start an idle helper process")?;
        Ok(IdleHelper { child, count })
    }

    /// Waits for the helper's `ready N` line.
    fn wait_ready(&mut self) -> Result<()> {
        use std::io::Read;
        // Byte by byte up to the newline, so nothing after it is buffered away from `finish`.
        let stdout = self
            .child
            .stdout
            .as_mut()
            .context("helper without stdout")?;
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        if line.trim() != format!("ready {}", self.count) {
            bail!(
                "an idle helper did not open its {} connections (it said {:?})",
                self.count,
                line.trim()
            );
        }
        Ok(())
    }

    /// Closes the helper's standard input (it then checks and lets go of its connections) and
    /// waits; returns how many of them were still open.
    fn finish(mut self) -> Result<usize> {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut said = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut said)?;
        }
        let _ = self.child.wait();
        said.trim()
            .strip_prefix("alive ")
            .and_then(|n| n.parse().ok())
            .with_context(|| {
                format!(
                    "an idle helper did not report its connections (it said {:?})",
                    said.trim()
                )
            })
    }
}

/// How many of `held` still answer a PINGREQ: a connection the broker dropped (keep-alive, a
/// limit) must not count in a per-connection figure.
async fn still_open(held: &mut [MqttClient]) -> usize {
    let mut alive = 0;
    for client in held.iter_mut() {
        if client.ping().await.is_ok() {
            alive += 1;
        }
    }
    alive
}

/// `idle`: opens K connections (helpers hold all but `--per-process` of them), reads the server's
/// memory and checks that every connection is still open.
pub(crate) async fn idle(t: Target) -> Result<()> {
    if t.hold {
        // A helper: open, say so, hold until the parent closes our standard input, then say how
        // many are still open.
        let mut held = open_idle(&t, t.skip, t.clients).await?;
        println!("ready {}", held.len());
        tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await?;
        println!("alive {}", still_open(&mut held).await);
        drop(held);
        return Ok(());
    }
    let Some(pid) = t.server_pid else {
        bail!("idle needs --server-pid to read the server's memory")
    };
    let per = t.per_process.unwrap_or(t.clients).max(1);
    let rss0 = rss_kib(pid).unwrap_or(0);
    let mut helpers = Vec::new();
    let mut start = per.min(t.clients);
    while start < t.clients {
        let count = per.min(t.clients - start);
        helpers.push(IdleHelper::start(&t, start, count)?);
        start += count;
    }
    let own = per.min(t.clients);
    let mut held = match open_idle(&t, 0, own).await {
        Ok(held) => held,
        Err(e) => {
            helpers.into_iter().for_each(|h| drop(h.finish()));
            return Err(e);
        }
    };
    let ready = tokio::task::spawn_blocking(move || {
        let result = helpers.iter_mut().try_for_each(IdleHelper::wait_ready);
        (helpers, result)
    });
    let (helpers, result) = ready.await?;
    if let Err(e) = result {
        helpers.into_iter().for_each(|h| drop(h.finish()));
        return Err(e);
    }
    let total = held.len() + helpers.iter().map(|h| h.count).sum::<usize>();
    eprintln!(
        "\ropen: {total} ({} generator processes)",
        helpers.len() + 1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid).unwrap_or(0);
    // Every connection must still be open after the reading, or the figure would divide the
    // memory of fewer connections by the number opened.
    let mut alive = still_open(&mut held).await;
    drop(held);
    let helpers = tokio::task::spawn_blocking(move || {
        helpers
            .into_iter()
            .map(IdleHelper::finish)
            .collect::<Result<Vec<usize>>>()
    });
    alive += helpers.await??.iter().sum::<usize>();
    if alive != total {
        bail!("{} of {total} idle connections were closed before the server's memory was read (keep-alive or a connection limit?)", total - alive);
    }
    let per_connection = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / total.max(1) as f64;
    report(
        &t,
        json!({
            "mode": "idle",
            "connections": total,
            "generator_processes": total.div_ceil(per),
            "server_rss_kib_before": rss0,
            "server_rss_kib_after": rss1,
            "server_bytes_per_connection": per_connection,
        }),
    )
}
