//! `iothub demo` runs the whole story against a temporary hub and exits 0 only if every step did
//! what it says.

#[test]
fn demo_runs_every_step() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=12 {
        assert!(
            stdout.contains(&format!("[{n:>2}]")),
            "step {n} missing:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("     ok: ").count(), 12, "{stdout}");
    assert!(stdout.contains("which is Unverified"), "{stdout}");
    assert!(stdout.contains("Every step did what it says."));
}
