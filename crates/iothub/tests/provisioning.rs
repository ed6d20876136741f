//! The provisioning service against a real `iothub serve`, byte for byte on the wire (the official
//! SDK's own run is `tests/sdk/test_provisioning.py`): the exchange as the service answers it
//! (202 assigning with an operation id and retry-after, then 200 assigned on the poll), the
//! device connecting afterwards, the audit entries; every refusal at CONNECT and at register with
//! its reason; the limits of one provisioning connection (requests, time, filters); and the
//! management API's preconditions and error codes; and on two nodes sharing PostgreSQL, a group
//! added through one node registers a device that provisions through the other. Runs against
//! PostgreSQL too.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Connect, Packet, Publish, Subscribe};
use serde_json::{json, Value};

fn scope(hub: &TestHub) -> String {
    hub.get_json("/provisioning")["idScope"]
        .as_str()
        .unwrap()
        .to_string()
}

fn hello(scope: &str, registration_id: &str, client_id: &str) -> Connect {
    Connect {
        protocol_level: 4,
        client_id: client_id.into(),
        clean_session: true,
        keep_alive: 60,
        username: Some(format!(
            "{scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=test"
        )),
        password: None,
        will: None,
    }
}

/// A provisioning connection presenting `{files}.pem`/`.key`: the client and its CONNACK code.
fn provisioning_client(hub: &TestHub, files: &str, connect: Connect) -> (RawDevice, u8) {
    let config = client_config(
        hub,
        &hub.dir.join(format!("{files}.pem")),
        &hub.dir.join(format!("{files}.key")),
    )
    .unwrap();
    RawDevice::connect_packet(hub, config, connect, None).unwrap()
}

fn publish0(d: &mut RawDevice, topic: &str, body: &[u8]) {
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: topic.into(),
        pkid: 0,
        payload: body.to_vec().into(),
    }))
    .unwrap();
}

/// The next answer: (topic, JSON body).
fn answer(d: &mut RawDevice) -> (String, Value) {
    match d.recv().unwrap() {
        Packet::Publish(p) => (p.topic, serde_json::from_slice(&p.payload).unwrap()),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn register(d: &mut RawDevice, rid: &str, registration_id: &str) -> (String, Value) {
    let body = json!({ "payload": null, "registrationId": registration_id }).to_string();
    publish0(
        d,
        &format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
        body.as_bytes(),
    );
    answer(d)
}

fn poll(d: &mut RawDevice, rid: &str, operation: &str) -> (String, Value) {
    publish0(
        d,
        &format!(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation}"
        ),
        b" ",
    );
    answer(d)
}

/// A Verified root "root", an enrollment group "line" bound to it with an initial twin, and
/// device files for `ids` (not registered).
fn group_with_devices(hub: &TestHub, ids: &[&str]) {
    verified_root_with_devices(hub, &[]);
    std::fs::write(
        hub.dir.join("twin.json"),
        r#"{"tags": {"site": "north"}, "properties": {"desired": {"mode": "eco"}}}"#,
    )
    .unwrap();
    ok(&hub.cli_in(
        &hub.dir,
        &[
            "dps",
            "group",
            "add",
            "line",
            "--ca",
            "root",
            "--initial-twin",
            "twin.json",
        ],
    ));
    for id in ids {
        device_files(hub, id, "root");
    }
}

#[test]
fn the_exchange_assigns_a_device_that_then_connects() {
    let hub = TestHub::start(&[]);
    group_with_devices(&hub, &["sensor-1"]);
    let scope = scope(&hub);
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    assert_eq!(ok(&hub.cli(&["dps", "id-scope"])).trim(), scope);

    let (mut d, code) =
        provisioning_client(&hub, "sensor-1", hello(&scope, "sensor-1", "sensor-1"));
    assert_eq!(code, 0);
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![
            ("$dps/registrations/res/#".into(), 1),
            ("devices/sensor-1/messages/devicebound/#".into(), 1),
        ],
    }))
    .unwrap();
    match d.recv().unwrap() {
        Packet::SubAck(a) => assert_eq!(a.return_codes, vec![1, 0x80], "only its answers"),
        other => panic!("{other:?}"),
    }
    let (topic, body) = register(&mut d, "r1", "sensor-1");
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=r1&retry-after=1");
    assert_eq!(body["status"], "assigning", "{body}");
    let operation = body["operationId"].as_str().unwrap().to_string();
    let (topic, body) = poll(&mut d, "r2", &operation);
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=r2");
    assert_eq!(body["status"], "assigned", "{body}");
    let state = &body["registrationState"];
    assert_eq!(state["deviceId"], "sensor-1");
    assert_eq!(state["registrationId"], "sensor-1");
    assert_eq!(state["assignedHub"], "localhost");
    assert_eq!(state["substatus"], "initialAssignment");
    // An operation this client never started.
    let (topic, body) = poll(&mut d, "r3", "5.nothing.here");
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=r3");
    assert_eq!(body["errorCode"], 404053, "{body}");
    d.disconnect();

    // The device exists with its initial twin and connects as usual.
    let device = hub.get_json("/devices/sensor-1");
    assert_eq!(device["authentication"]["type"], "certificateAuthority");
    let twin = hub.get_json("/twins/sensor-1");
    assert_eq!(twin["tags"]["site"], "north", "{twin}");
    assert_eq!(twin["properties"]["desired"]["mode"], "eco", "{twin}");
    let (_d, code) = RawDevice::connect(
        &hub,
        &hub.dir.join("sensor-1.pem"),
        &hub.dir.join("sensor-1.key"),
        "sensor-1",
    )
    .unwrap();
    assert_eq!(code, 0);
    let registration = hub.get_json("/registrations/sensor-1");
    assert_eq!(
        registration["enrollment"],
        json!({"kind": "group", "name": "line"})
    );
    let audit = hub.get_json("/audit?target=registration/sensor-1");
    let details: Vec<&str> = audit["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        ["registered through enrollment group 'line' (CA 'root')"]
    );
}

#[test]
fn refusals_at_connect_and_at_register_name_their_reason() {
    let hub = TestHub::start(&[]);
    group_with_devices(&hub, &["dev-a", "dev-b"]);
    let scope = scope(&hub);

    // At CONNECT: another hub's scope, a username naming someone else, no certificate.
    let (_, code) = provisioning_client(&hub, "dev-a", hello("0neFFFFFFFF", "dev-a", "dev-a"));
    assert_eq!(code, 5);
    assert!(
        latest_refusal(&hub, "dev-a")
            .contains("names ID scope '0neFFFFFFFF', which is not this hub's"),
        "{}",
        latest_refusal(&hub, "dev-a")
    );
    let (_, code) = provisioning_client(&hub, "dev-a", hello(&scope, "dev-b", "dev-a"));
    assert_eq!(code, 5);
    assert!(latest_refusal(&hub, "dev-a")
        .contains("names registration 'dev-b' but the client id is 'dev-a'"));
    let config = no_certificate_config(&hub);
    let (_, code) =
        RawDevice::connect_packet(&hub, config, hello(&scope, "dev-a", "dev-a"), None).unwrap();
    assert_eq!(code, 5);
    assert!(latest_refusal(&hub, "dev-a").contains("presented no client certificate"));

    // At register: a body that is not the request, a body naming someone else, a certificate
    // whose CN is not the registration id; each answered, recorded, and the connection ends.
    let (mut d, code) = provisioning_client(&hub, "dev-a", hello(&scope, "dev-a", "dev-a"));
    assert_eq!(code, 0);
    publish0(
        &mut d,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        b"{\"x\": 1}",
    );
    let (topic, body) = answer(&mut d);
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=1");
    assert_eq!(body["errorCode"], 400083, "{body}");
    assert!(d.recv().is_err(), "a refused request ends the connection");

    let (mut d, _) = provisioning_client(&hub, "dev-a", hello(&scope, "dev-a", "dev-a"));
    let (topic, body) = register(&mut d, "2", "dev-b");
    assert!(topic.starts_with("$dps/registrations/res/400/"), "{topic}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("names registration 'dev-b' but this client is 'dev-a'"),
        "{body}"
    );

    let (mut d, _) = provisioning_client(&hub, "dev-a", hello(&scope, "dev-x", "dev-x"));
    let (topic, body) = register(&mut d, "3", "dev-x");
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");
    assert_eq!(body["errorCode"], 401003);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("leaf CN 'dev-a' is not the client id 'dev-x'"),
        "{body}"
    );
    assert!(latest_refusal(&hub, "dev-x").contains("registration refused: leaf CN 'dev-a'"));

    // A disabled group refuses; nothing is registered; the audit log holds the refusal.
    ok(&hub.cli(&["dps", "group", "disable", "line"]));
    let (mut d, _) = provisioning_client(&hub, "dev-b", hello(&scope, "dev-b", "dev-b"));
    let (topic, body) = register(&mut d, "4", "dev-b");
    assert!(topic.starts_with("$dps/registrations/res/403/"), "{topic}");
    assert_eq!(body["errorCode"], 403054, "{body}");
    let client = hub.client();
    let missing = client
        .get(format!("{}/devices/dev-b", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
    let audit = hub.get_json("/audit?target=registration/dev-b");
    let entry = &audit["value"][0];
    assert_eq!(entry["outcome"], "failure", "{entry}");
    assert_eq!(entry["actor"], "registration:dev-b", "{entry}");
}

#[test]
fn one_provisioning_connection_is_bounded() {
    let hub = TestHub::start(&[
        "--provisioning-requests",
        "2",
        "--provisioning-timeout",
        "2s",
    ]);
    group_with_devices(&hub, &["dev-1"]);
    let scope = scope(&hub);
    // Requests: the third closes the connection, with the reason recorded.
    let (mut d, _) = provisioning_client(&hub, "dev-1", hello(&scope, "dev-1", "dev-1"));
    let (_, body) = register(&mut d, "a", "dev-1");
    let operation = body["operationId"].as_str().unwrap().to_string();
    let (_, body) = poll(&mut d, "b", &operation);
    assert_eq!(body["status"], "assigned");
    publish0(
        &mut d,
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=c&operationId=x",
        b" ",
    );
    assert!(d.recv().is_err());
    assert!(latest_refusal(&hub, "dev-1")
        .contains("more than 2 requests on one provisioning connection (--provisioning-requests)"));
    // Time: an idle provisioning client is closed after --provisioning-timeout.
    let (mut d, _) = provisioning_client(&hub, "dev-1", hello(&scope, "dev-1", "dev-1"));
    let started = Instant::now();
    assert!(d.recv().is_err());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    assert!(latest_refusal(&hub, "dev-1").contains("closed after 2 s (--provisioning-timeout)"));
    // A topic it cannot be answered on (no usable request id) ends the connection.
    let (mut d, _) = provisioning_client(&hub, "dev-1", hello(&scope, "dev-1", "dev-1"));
    publish0(
        &mut d,
        "$dps/registrations/PUT/iotdps-register/?$rid=a$b",
        b"{}",
    );
    assert!(d.recv().is_err());
    assert!(latest_refusal(&hub, "dev-1").contains("request id ($rid)"));
}

fn send(
    hub: &TestHub,
    method: &str,
    path: &str,
    etag: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = hub.client();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", hub.base()))
        .header("Authorization", hub.owner_token());
    if let Some(e) = etag {
        req = req.header("If-Match", e);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn group_body(ca: &str) -> Value {
    json!({ "attestation": { "type": "x509", "x509": { "caReferences": { "primary": ca } } } })
}

#[test]
fn enrollments_are_managed_under_preconditions_with_precise_errors() {
    let hub = TestHub::start(&[]);
    group_with_devices(&hub, &["solo"]);
    ok(&hub.cli_in(&hub.dir, &["pki", "ca", "unproven", "--force"]));
    ok(&hub.cli_in(&hub.dir, &["cert", "add", "unproven", "unproven.pem"]));

    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        None,
        Some(group_body("unproven")),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("400082")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("'unproven' is Unverified"));
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        None,
        Some(group_body("nope")),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("404050")),
        "{body}"
    );
    let (status, created) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        None,
        Some(group_body("root")),
    );
    assert_eq!(status, 201, "{created}");
    let etag = created["etag"].as_str().unwrap().to_string();
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        None,
        Some(group_body("root")),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (409, json!("409053")),
        "{body}"
    );
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        Some("AAAAAAAAAAE="),
        Some(group_body("root")),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (412, json!("412001")),
        "{body}"
    );
    let mut disabled = group_body("root");
    disabled["provisioningStatus"] = json!("disabled");
    let (status, replaced) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g1",
        Some(&etag),
        Some(disabled),
    );
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["provisioningStatus"], "disabled");
    assert_eq!(
        replaced["createdDateTimeUtc"],
        created["createdDateTimeUtc"]
    );
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollmentGroups/g2",
        None,
        Some(json!({
        "attestation": { "type": "tpm", "x509": {} } })),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only x509 is served"),
        "{body}"
    );
    let mut bad_twin = group_body("root");
    bad_twin["initialTwin"] = json!({ "properties": { "reported": { "a": 1 } } });
    let (status, body) = send(&hub, "PUT", "/enrollmentGroups/g2", None, Some(bad_twin));
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("400073")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("properties.reported"),
        "{body}"
    );
    let (status, list) = send(&hub, "GET", "/enrollmentGroups", None, None);
    assert_eq!(status, 200);
    assert_eq!(
        list["value"].as_array().unwrap().len(),
        2,
        "line and g1: {list}"
    );

    // Individual: the certificate's CN must be the registration id.
    let pem = std::fs::read_to_string(hub.dir.join("solo.pem")).unwrap();
    let leaf = pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let individual = json!({ "attestation": { "type": "x509", "x509": {
        "clientCertificates": { "primary": { "certificate": leaf } } } } });
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollments/other",
        None,
        Some(individual.clone()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the certificate's CN is 'solo'"),
        "{body}"
    );
    let (status, body) = send(
        &hub,
        "PUT",
        "/enrollments/solo",
        None,
        Some(individual.clone()),
    );
    assert_eq!(status, 201, "{body}");
    let info = &body["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info["subjectName"], "CN=solo", "{body}");
    // The CLI's disable reads the enrollment and writes it back under its etag.
    ok(&hub.cli(&["dps", "individual", "disable", "solo"]));
    let (_, shown) = send(&hub, "GET", "/enrollments/solo", None, None);
    assert_eq!(shown["provisioningStatus"], "disabled", "{shown}");

    // Deletion under If-Match; then gone.
    let (status, body) = send(&hub, "DELETE", "/enrollmentGroups/g1", Some(&etag), None);
    assert_eq!(
        (status, body["code"].clone()),
        (412, json!("412001")),
        "{body}"
    );
    let (status, _) = send(&hub, "DELETE", "/enrollmentGroups/g1", None, None);
    assert_eq!(status, 204);
    let (status, body) = send(&hub, "GET", "/enrollmentGroups/g1", None, None);
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("404052")),
        "{body}"
    );

    // Reading needs RegistryRead, writing RegistryWrite.
    ok(&hub.cli(&["policy", "add", "reader", "--rights", "RegistryRead"]));
    let key = hub.policy_key("reader");
    let token = hub.token("reader", &key, 600);
    let client = hub.client();
    let put = client
        .put(format!("{}/enrollmentGroups/g3", hub.base()))
        .header("Authorization", &token)
        .json(&group_body("root"))
        .send()
        .unwrap();
    assert_eq!(put.status(), 403);
    let get = client
        .get(format!("{}/enrollmentGroups", hub.base()))
        .header("Authorization", &token)
        .send()
        .unwrap();
    assert_eq!(get.status(), 200);
}

#[test]
fn a_group_added_through_one_node_registers_a_device_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let url = iothub_testpg::shared().database();
    let nodes: Vec<TestHub> = ["n1", "n2"]
        .iter()
        .map(|n| TestHub::start_in(&tmp.path().join(n), &["--store", &url, "--node-id", n]))
        .collect();
    group_with_devices(&nodes[0], &["roamer"]);
    // One ID scope for the hub, whichever node is asked.
    let scope = scope(&nodes[0]);
    assert_eq!(self::scope(&nodes[1]), scope);
    // n2 holds no copy of the enrollments: the group is there at once; the device files are n1's.
    let config = client_config(
        &nodes[1],
        &nodes[0].dir.join("roamer.pem"),
        &nodes[0].dir.join("roamer.key"),
    )
    .unwrap();
    let (mut d, code) =
        RawDevice::connect_packet(&nodes[1], config, hello(&scope, "roamer", "roamer"), None)
            .unwrap();
    assert_eq!(code, 0);
    let (_, body) = register(&mut d, "1", "roamer");
    let operation = body["operationId"].as_str().unwrap().to_string();
    let (_, body) = poll(&mut d, "2", &operation);
    assert_eq!(body["status"], "assigned", "{body}");
    assert_eq!(
        nodes[0].get_json("/registrations/roamer")["enrollment"]["name"],
        "line"
    );
    assert_eq!(
        nodes[0].get_json("/twins/roamer")["tags"]["site"],
        "north",
        "the initial twin, written through n2, read through n1"
    );
}

/// A TLS configuration that trusts the hub and presents no certificate.
fn no_certificate_config(hub: &TestHub) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let ca = std::fs::read(hub.data().join("tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
