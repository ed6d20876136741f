//! `iothub demo`: the whole story for a newcomer, against a fresh hub in a temporary data
//! directory, one numbered step at a time, each with the equivalent CLI command. It exits 0 only if
//! every step did what it says.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use iothub_client::layout;
use iothub_client::mqtt::{Connected, MqttClient};
use iothub_client::{ApiClient, HubTarget};

struct Hub {
    child: Child,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn step(n: u32, what: &str, command: &str) {
    println!("\n[{n:>2}] {what}");
    if !command.is_empty() {
        println!("     $ {command}");
    }
}

fn done(detail: impl std::fmt::Display) {
    println!("     ok: {detail}");
}

/// Where the demo's hub listens, as it reported.
struct Listening {
    https: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
}

/// Starts `iothub serve` on loopback ports in `data`, returning the child and its two addresses.
fn start_hub(data: &Path) -> Result<(Hub, Listening)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--data")
        .arg(data)
        .args(["serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .args(["--metrics", "off"])
        .env("IOTHUB_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the hub")?;
    let stdout = child.stdout.take().context("no hub stdout")?;
    let hub = Hub { child };
    let (mut mqtt, mut https) = (None, None);
    // The hub reports MQTT first and HTTPS last, when it is ready to serve.
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("mqtt listening on ") {
            mqtt = Some(a.parse()?);
        }
        if let Some(a) = line.strip_prefix("https listening on ") {
            https = Some(a.parse()?);
            break;
        }
    }
    let listening = Listening {
        https: https.context("the hub did not report its HTTPS address")?,
        mqtt: mqtt.context("the hub did not report its MQTT address")?,
    };
    Ok((hub, listening))
}

pub fn run() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("iothub-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = run_in(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    match &result {
        Ok(()) => println!(
            "\nEvery step did what it says. (The demo's data directory was temporary and is gone.)"
        ),
        Err(e) => println!("\nThe demo stopped: {e:#}"),
    }
    result
}

fn run_in(dir: &Path) -> Result<()> {
    let data = dir.join("data");
    step(
        1,
        "Start a hub with a fresh data directory (TLS identity and owner credential are created)",
        "iothub serve --data ./data",
    );
    let (_hub, listening) = start_hub(&data)?;
    done(format!(
        "HTTPS API on {}, MQTT on {} (hub CA: data/{})",
        listening.https,
        listening.mqtt,
        layout::HUB_CA
    ));
    let target = HubTarget {
        data: data.clone(),
        connection_string: None,
        hub_ca: None,
    };
    let story = Story {
        dir,
        api: ApiClient::connect(&target)?,
        now: time::OffsetDateTime::now_utc(),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        mqtt_addr: listening.mqtt,
        ca_pem: std::fs::read(data.join(layout::HUB_CA))?,
    };
    let issuer = story.prove_root()?;
    let dev = story.register_sensor(&issuer)?;
    story.telemetry_and_c2d(&dev)?;
    story.unverified_ca_is_refused()
}

/// What every step of the story after the hub's start works with.
struct Story<'a> {
    dir: &'a Path,
    api: ApiClient,
    now: time::OffsetDateTime,
    rt: tokio::runtime::Runtime,
    mqtt_addr: std::net::SocketAddr,
    /// The hub's TLS CA, which the demo's devices trust.
    ca_pem: Vec<u8>,
}

impl Story<'_> {
    fn days(&self, d: i64) -> time::OffsetDateTime {
        self.now + time::Duration::days(d)
    }

    /// Steps 2-6: a root CA made, uploaded (Unverified), and proved (Verified).
    fn prove_root(&self) -> Result<iothub_pki::gen::CaIssuer> {
        step(2, "Make a test root CA", "iothub pki ca demo-root");
        let root = iothub_pki::gen::make_ca(
            "demo-root",
            iothub_pki::gen::KeyKind::EcP256,
            None,
            self.now - time::Duration::minutes(5),
            self.days(30),
        )?;
        std::fs::write(self.dir.join("demo-root.pem"), &root.cert_pem)?;
        done("demo-root.pem, demo-root.key (ECDSA P-256)");

        step(
            3,
            "Upload it: it is listed as Unverified",
            "iothub cert add demo-root demo-root.pem",
        );
        let v = self.api.call(
            Method::PUT,
            "/certificates/demo-root",
            None,
            Some(&json!({ "properties": { "certificate": root.cert_pem } })),
        )?;
        if v["properties"]["status"] != "Unverified" {
            bail!("expected Unverified, got {}", v["properties"]["status"]);
        }
        done(format!(
            "status {}, thumbprint {}",
            v["properties"]["status"], v["properties"]["thumbprint"]
        ));

        step(
            4,
            "Generate a verification code",
            "iothub cert code demo-root",
        );
        let v = self.api.call(
            Method::POST,
            "/certificates/demo-root/generateVerificationCode",
            None,
            None,
        )?;
        let code = v["properties"]["verificationCode"]
            .as_str()
            .context("no code")?
            .to_string();
        done(&code);

        step(5, "Make the verification certificate: CN = the code, signed with the CA's key", &format!("iothub pki verification-cert --ca-cert demo-root.pem --ca-key demo-root.key --code {code}"));
        let issuer = iothub_pki::gen::CaIssuer::from_pem(&root.cert_pem, &root.key_pem)?;
        let pop = iothub_pki::gen::make_verification_cert(
            &code,
            &issuer,
            self.now,
            time::Duration::hours(1),
        )?;
        done("verification.pem");

        step(
            6,
            "Verify: the hub checks issuer, signature, CN == code, freshness",
            "iothub cert verify demo-root verification.pem",
        );
        let v = self.api.call(
            Method::POST,
            "/certificates/demo-root/verify",
            None,
            Some(&json!({ "certificate": pop.cert_pem })),
        )?;
        if v["properties"]["status"] != "Verified" {
            bail!("expected Verified, got {}", v["properties"]["status"]);
        }
        done("demo-root is Verified");

        Ok(issuer)
    }

    /// Steps 7-8: a device certificate issued by the root, and the device registered.
    fn register_sensor(
        &self,
        issuer: &iothub_pki::gen::CaIssuer,
    ) -> Result<iothub_pki::gen::Generated> {
        step(
            7,
            "Issue a device certificate (CN = device id, clientAuth)",
            "iothub pki device demo-sensor --ca-cert demo-root.pem --ca-key demo-root.key",
        );
        let dev = iothub_pki::gen::make_leaf(
            "demo-sensor",
            iothub_pki::gen::KeyKind::EcP256,
            issuer,
            &[],
            self.now - time::Duration::minutes(5),
            self.days(30),
        )?;
        done("demo-sensor.pem (leaf + chain), demo-sensor.key");

        step(
            8,
            "Register the device",
            "iothub device add demo-sensor --auth ca",
        );
        self.api.call(Method::PUT, "/devices/demo-sensor", None, Some(&json!({ "deviceId": "demo-sensor", "authentication": { "type": "certificateAuthority" } })))?;
        done("demo-sensor, certificateAuthority, enabled");

        Ok(dev)
    }

    /// Steps 9-11: the device connects, sends telemetry that is read back, and receives a
    /// cloud-to-device message.
    fn telemetry_and_c2d(&self, dev: &iothub_pki::gen::Generated) -> Result<()> {
        step(9, "Connect over MQTT/TLS with the device certificate and send telemetry", &format!(
            "mosquitto_pub -h localhost -p {} --cafile data/{} --cert demo-sensor.pem --key demo-sensor.key -i demo-sensor -u 'localhost/demo-sensor/?api-version=2021-04-12' -t 'devices/demo-sensor/messages/events/unit=C' -m '{{\"t\":21.5}}' -q 1",
            self.mqtt_addr.port(),
            layout::HUB_CA
        ));
        let mut device = match self.rt.block_on(MqttClient::connect(
            self.mqtt_addr,
            "localhost",
            &self.ca_pem,
            dev.cert_pem.as_bytes(),
            dev.key_pem.as_bytes(),
            "demo-sensor",
        ))? {
            Connected::Accepted(c) => c,
            Connected::Refused(code) => {
                bail!("the device was refused (CONNACK {code}); see 'iothub connections'")
            }
        };
        self.rt.block_on(device.publish(
            "devices/demo-sensor/messages/events/unit=C",
            br#"{"t":21.5}"#,
        ))?;
        done("connected; telemetry acknowledged (PUBACK after the hub stored it durably)");

        step(
            10,
            "Read the telemetry back",
            "iothub monitor --from 1 --count 1",
        );
        let v = self
            .api
            .call(Method::GET, "/messages?from=1&limit=10", None, None)?;
        let m = v["value"].get(0).cloned().unwrap_or(Value::Null);
        if m["body"] != r#"{"t":21.5}"# || m["properties"]["unit"] != "C" {
            bail!("unexpected message: {m}");
        }
        done(format!(
            "offset {}: {} with properties {}",
            m["offset"], m["body"], m["properties"]
        ));

        step(
            11,
            "Send a cloud-to-device message and receive it on the device",
            "iothub c2d send demo-sensor 'hello device' -p color=blue",
        );
        self.rt
            .block_on(device.subscribe("devices/demo-sensor/messages/devicebound/#"))?;
        self.api.call(
            Method::POST,
            "/devices/demo-sensor/messages/devicebound",
            None,
            Some(&json!({ "body": "hello device", "properties": { "color": "blue" } })),
        )?;
        let p = self
            .rt
            .block_on(device.next_message(Duration::from_secs(10)))?;
        if &p.payload[..] != b"hello device" || !p.topic.contains("color=blue") {
            bail!("unexpected delivery on {}: {:?}", p.topic, p.payload);
        }
        self.rt.block_on(device.disconnect())?;
        done(format!("received on {}", p.topic));

        Ok(())
    }

    /// Step 12: a device of an Unverified CA is refused, and the hub says why.
    fn unverified_ca_is_refused(&self) -> Result<()> {
        step(
            12,
            "A device of an Unverified CA is refused, with the reason",
            "iothub connections",
        );
        let other = iothub_pki::gen::make_ca(
            "demo-unverified",
            iothub_pki::gen::KeyKind::EcP256,
            None,
            self.now - time::Duration::minutes(5),
            self.days(30),
        )?;
        self.api.call(
            Method::PUT,
            "/certificates/demo-unverified",
            None,
            Some(&json!({ "properties": { "certificate": other.cert_pem } })),
        )?;
        let other_issuer = iothub_pki::gen::CaIssuer::from_pem(&other.cert_pem, &other.key_pem)?;
        let rogue = iothub_pki::gen::make_leaf(
            "demo-rogue",
            iothub_pki::gen::KeyKind::EcP256,
            &other_issuer,
            &[],
            self.now - time::Duration::minutes(5),
            self.days(30),
        )?;
        self.api.call(Method::PUT, "/devices/demo-rogue", None, Some(&json!({ "deviceId": "demo-rogue", "authentication": { "type": "certificateAuthority" } })))?;
        let refused = match self.rt.block_on(MqttClient::connect(
            self.mqtt_addr,
            "localhost",
            &self.ca_pem,
            rogue.cert_pem.as_bytes(),
            rogue.key_pem.as_bytes(),
            "demo-rogue",
        )) {
            Ok(Connected::Accepted(_)) => bail!("a device of an Unverified CA was admitted"),
            Ok(Connected::Refused(code)) => code,
            Err(e) => bail!("the refusal did not arrive as CONNACK: {e:#}"),
        };
        let v = self.api.call(Method::GET, "/connections", None, None)?;
        let reason = v["refusals"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["clientId"] == "demo-rogue"))
            .and_then(|r| r["reason"].as_str())
            .context("no refusal recorded")?
            .to_string();
        if !reason.contains("Unverified") {
            bail!("unexpected reason: {reason}");
        }
        done(format!("CONNACK {refused}: {reason}"));
        Ok(())
    }
}
