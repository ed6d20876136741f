//! README.md's shell blocks, run as a reader would: in order, each with `bash -euo pipefail` in
//! one working directory of its own, against a real hub, with the built `iothub` first on PATH and
//! `IOTHUB_DATA` naming the hub's data directory (what README tells the reader to set). So README
//! cannot drift from the product.
//!
//! Every ```sh block runs, unless the line before it is `<!-- readme-test: skip (REASON) -->` with
//! a reason (a block that starts the hub, or needs a device answering methods). The only change
//! made to a block is the ports: the hub here listens on free ports, not 8443 and 8883.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A shell block of README, with the line it starts on.
struct Block {
    line: usize,
    text: String,
    skip: Option<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```sh" {
            let start = i + 1;
            let end = (start..lines.len())
                .find(|&j| lines[j].trim_end() == "```")
                .unwrap_or_else(|| panic!("README.md:{start}: a ```sh block never ends"));
            let before = (0..i)
                .rev()
                .map(|j| lines[j])
                .find(|l| !l.trim().is_empty());
            let skip = before
                .and_then(|l| l.trim().strip_prefix("<!-- readme-test: skip ("))
                .map(|rest| {
                    let reason = rest.strip_suffix(") -->").unwrap_or_else(|| {
                        panic!(
                            "README.md:{i}: a skip marker is `<!-- readme-test: skip (REASON) -->`"
                        )
                    });
                    assert!(
                        !reason.trim().is_empty(),
                        "README.md:{i}: a skip needs its reason"
                    );
                    reason.to_string()
                });
            found.push(Block {
                line: start,
                text: lines[start..end].join("\n"),
                skip,
            });
            i = end;
        }
        i += 1;
    }
    found
}

fn run_block(block: &Block, work: &Path, hub: &TestHub) -> String {
    let text = block
        .text
        .replace("-p 8883", &format!("-p {}", hub.mqtt_port))
        .replace("localhost:8443", &format!("localhost:{}", hub.port));
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &text])
        .current_dir(work)
        .env("PATH", path)
        .env("IOTHUB_DATA", hub.data())
        .env_remove("IOTHUB_CONNECTION_STRING")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README.md:{} failed ({:?}):\n{text}\n--- stdout\n{stdout}\n--- stderr\n{}",
        block.line,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 6,
        "README has {} shell blocks",
        blocks.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(&tmp.path().join("hub"), &[]);
    let work = tmp.path().join("walkthrough");
    std::fs::create_dir_all(&work).unwrap();
    let mut ran = Vec::new();
    for block in &blocks {
        if block.skip.is_none() {
            ran.push((block.line, run_block(block, &work, &hub)));
        }
    }
    let output = |first_line: &str| -> &str {
        let block = blocks
            .iter()
            .find(|b| b.skip.is_none() && b.text.starts_with(first_line))
            .unwrap_or_else(|| panic!("no block starts with {first_line}"));
        &ran.iter().find(|(line, _)| *line == block.line).unwrap().1
    };
    // What the walkthrough promises, seen in what it printed.
    let tutorial = output("iothub pki ca root --openssl-dir .");
    assert!(tutorial.contains("Verified"), "{tutorial}");
    let device = output("iothub pki device sensor-1");
    assert!(
        device.contains("21.5"),
        "monitor shows the telemetry: {device}"
    );
    assert!(
        device.contains("reboot at 3"),
        "the device got the C2D message: {device}"
    );
    // And acknowledged it: the hub marks the message delivered once the PUBACK is handled, which
    // may land just after `c2d list` ran (the README's comment says so).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", "sensor-1"])))
                .unwrap();
        if list["value"][0]["state"] == "delivered" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ran.len() >= 5, "only {} blocks ran", ran.len());
}

#[test]
fn a_block_that_fails_fails_the_test() {
    // The runner itself: a broken command is caught, with the README line it is on.
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(&tmp.path().join("hub"), &[]);
    let broken = Block {
        line: 7,
        text: "iothub cert show no-such-certificate".into(),
        skip: None,
    };
    let failed = std::panic::catch_unwind(|| run_block(&broken, tmp.path(), &hub));
    let message = *failed.expect_err("must fail").downcast::<String>().unwrap();
    assert!(message.contains("README.md:7 failed"), "{message}");
    assert!(message.contains("no-such-certificate"), "{message}");
}
