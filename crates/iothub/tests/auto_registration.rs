//! Auto-registration from a Verified CA, against a real `iothub serve`: off by default (an
//! unknown device is refused as not registered); `cert update root --auto-register on` registers
//! a device of that CA at its first CONNECT, which is admitted; the device then exists as a
//! certificateAuthority device, with an audit entry; a certificate naming another device is
//! refused with that reason; the limit refuses with how to raise it, and nothing is written;
//! off again refuses new devices while the registered ones keep connecting. Runs against
//! PostgreSQL too.

mod common;

use common::*;

fn connect_as(hub: &TestHub, files: &str, client: &str) -> u8 {
    match RawDevice::connect(
        hub,
        &hub.dir.join(format!("{files}.pem")),
        &hub.dir.join(format!("{files}.key")),
        client,
    ) {
        Ok((_, code)) => code,
        Err(_) => 255,
    }
}

#[test]
fn devices_of_an_auto_registering_ca_are_admitted_and_registered_at_first_connect() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &[]);
    for id in ["first", "second", "third", "fourth"] {
        device_files(&hub, id, "root");
    }
    // Off by default.
    assert_ne!(connect_as(&hub, "first", "first"), 0);
    assert!(latest_refusal(&hub, "first").contains("device 'first' is not registered"));

    let out = ok(&hub.cli(&[
        "cert",
        "update",
        "root",
        "--auto-register",
        "on",
        "--auto-register-limit",
        "2",
    ]));
    assert!(
        out.contains("auto-registration on, 0 of at most 2"),
        "{out}"
    );
    assert_eq!(
        connect_as(&hub, "first", "first"),
        0,
        "admitted at first CONNECT"
    );
    let shown = hub.get_json("/devices/first");
    assert_eq!(shown["authentication"]["type"], "certificateAuthority");
    assert_eq!(shown["status"], "enabled");
    let audit = ok(&hub.cli(&["-o", "json", "audit", "--device", "first"]));
    assert!(audit.contains("device.autoRegister"), "{audit}");
    assert!(audit.contains("through CA 'root'"), "{audit}");
    // Again: now simply a registered device.
    assert_eq!(connect_as(&hub, "first", "first"), 0);

    // A certificate for one id, presented as another: refused with the reason, not registered.
    assert_ne!(connect_as(&hub, "second", "impostor"), 0);
    let reason = latest_refusal(&hub, "impostor");
    assert!(
        reason.contains("'second'") && reason.contains("'impostor'"),
        "{reason}"
    );
    assert_eq!(
        hub.client()
            .get(format!("{}/devices/impostor", hub.base()))
            .header("Authorization", hub.owner_token())
            .send()
            .unwrap()
            .status(),
        404
    );

    assert_eq!(connect_as(&hub, "second", "second"), 0);
    // The limit: refused with how to raise it, nothing written.
    assert_ne!(connect_as(&hub, "third", "third"), 0);
    let reason = latest_refusal(&hub, "third");
    assert!(
        reason.contains("reached its limit of 2 devices")
            && reason.contains("iothub cert update root --auto-register-limit"),
        "{reason}"
    );
    let listed = hub.get_json("/devices");
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let out = ok(&hub.cli(&["cert", "update", "root", "--auto-register-limit", "3"]));
    assert!(out.contains("2 of at most 3"), "{out}");
    assert_eq!(connect_as(&hub, "third", "third"), 0);

    // Off: new devices are refused, the registered ones keep connecting.
    ok(&hub.cli(&["cert", "update", "root", "--auto-register", "off"]));
    assert_ne!(connect_as(&hub, "fourth", "fourth"), 0);
    assert!(latest_refusal(&hub, "fourth").contains("is not registered"));
    assert_eq!(connect_as(&hub, "third", "third"), 0);

    // Bad input.
    let bad = hub.cli(&["cert", "update", "root", "--auto-register-limit", "0"]);
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("expected 1 to the hub's device limit"),
        "{text}"
    );
    let nobody = hub.cli(&["cert", "update", "nobody", "--auto-register", "on"]);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("'nobody' does not exist"));
}
