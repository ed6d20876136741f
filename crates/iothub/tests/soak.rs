//! Soak: devices connect, publish and disconnect in a loop (plus refused attempts); the hub's open
//! file descriptors return to their baseline and its memory stays flat. Short in CI (15 s); run
//! long by hand with `IOTHUB_SOAK_SECS=1800 cargo test -p iothub --test soak -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[test]
fn connection_churn_keeps_descriptors_and_memory_flat() {
    let secs: u64 = std::env::var("IOTHUB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    for i in 0..4 {
        ok(&hub.cli_in(
            &dir,
            &[
                "pki",
                "device",
                &format!("soak-{i}"),
                "--ca-cert",
                "root.pem",
                "--ca-key",
                "root.key",
            ],
        ));
        ok(&hub.cli(&["device", "add", &format!("soak-{i}")]));
    }
    ok(&hub.cli_in(&dir, &["pki", "ca", "stranger"]));
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "device",
            "refused",
            "--ca-cert",
            "stranger.pem",
            "--ca-key",
            "stranger.key",
        ],
    ));
    let pid = hub.pid();
    let cycle = |i: usize| {
        let id = format!("soak-{}", i % 4);
        let (mut d, code) = RawDevice::connect(
            &hub,
            &dir.join(format!("{id}.pem")),
            &dir.join(format!("{id}.key")),
            &id,
        )
        .unwrap();
        assert_eq!(code, 0);
        d.publish(&format!("devices/{id}/messages/events/"), b"{\"n\":1}", 1)
            .unwrap();
        d.disconnect();
        let refused = RawDevice::connect(
            &hub,
            &dir.join("refused.pem"),
            &dir.join("refused.key"),
            "refused",
        );
        assert!(!matches!(refused, Ok((_, 0))));
    };
    // Warm up (allocator pools, SQLite cache), then take the baseline.
    for i in 0..200 {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (fd0, rss0) = (fds(pid), rss_kib(pid));
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        cycle(n);
        n += 1;
    }
    std::thread::sleep(Duration::from_millis(1000));
    let (fd1, rss1) = (fds(pid), rss_kib(pid));
    eprintln!("{n} connect/publish/disconnect cycles in {secs} s: fds {fd0} -> {fd1}, RSS {rss0} -> {rss1} KiB");
    assert!(n > 100, "too few cycles to judge: {n}");
    assert!(fd1 <= fd0 + 3, "file descriptors grew: {fd0} -> {fd1}");
    // Flat memory: allow 8 MiB of drift (allocator and SQLite page cache), far below a leak of
    // even one buffer per connection over thousands of cycles.
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "memory grew: {rss0} -> {rss1} KiB over {n} cycles"
    );
}
