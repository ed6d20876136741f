"""The OFFICIAL Azure IoT device SDK for Python (azure-iot-device 2.14.0, unmodified: MQTT 3.1.1 over
TLS 1.2 on port 8883, server certificate and host name verified against the hub's CA) against a real
`iothub serve` (conftest.py):

1. X.509 CA-signed devices, via a proven root, via a proven intermediate uploaded alone (its root
   unknown to the hub, or registered too), send telemetry that `iothub monitor` returns byte for
   byte, with every property exactly;
2. cloud-to-device messages arrive with body, properties, message id, correlation id and content
   type, and are then recorded as delivered;
3. refused devices make `connect()` raise CredentialError, and the hub records the precise reason;
4. deleting the CA, disabling or deleting the device closes a live session at once (observed by the
   SDK within 1 s), and a reconnect is refused;
5. a SAS (symmetric key) device sends telemetry;
and around them: C2D expiry, a C2D queued while offline, the receive_message API, a short keep-alive,
a second connection replacing the first, self-signed (thumbprint) devices.

Run: python -m pytest tests/sdk/test_device_sdk.py -q   (IOTHUB_BIN overrides the binary)
"""
import base64
import datetime
import json
import subprocess
import threading
import time
import uuid

import pytest
from azure.iot.device import Message
from azure.iot.device.exceptions import ConnectionFailedError, CredentialError

from conftest import sha1_thumbprint, wait_for

# Property keys and values that need percent-encoding in the MQTT topic's property bag.
PROPERTIES = {
    "path": "a/b/c",
    "query": "x=1&y=2",
    "with space": "hello world",
    "equation": "e=mc2",
    "unicode": "grüße ✓ 温度",
    "clé": "€uro",
    "empty": "",
    "key/with/slashes": "1",
    "key&amp=ersand": "2",
}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ==== 1. X.509 CA-signed telemetry ===============================================================

@pytest.fixture(scope="module")
def root_ca(hub):
    """A root CA registered and proven; device certificates it signs hold leaf + root. (The tests
    that call `hub.verified_ca("root")` themselves share it.)"""
    status = hub.verified_ca("root")
    assert status["isRoot"] is True
    return "root"


@pytest.fixture(scope="module")
def inter_ca(hub):
    """An intermediate under a root the hub never sees: only the intermediate is uploaded (alone,
    the first PEM block of inter.pem) and proven."""
    hub.make_ca("offline-root")
    hub.make_ca("inter", parent="offline-root")
    status = hub.register_ca("inter")
    assert status["isRoot"] is False and status["subject"] == "CN=inter", status
    return "inter"


def assert_telemetry(hub, device_id, sent):
    """`monitor -o json` returns the messages `sent` ([(Message, body bytes)]) exactly, in order."""
    events = hub.monitor(device_id, len(sent))
    assert len(events) == len(sent), events
    for event, (msg, body) in zip(events, sent):
        assert event["deviceId"] == device_id
        assert base64.b64decode(event["bodyBase64"]) == body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            assert event["body"] == text
        assert event["properties"] == msg.custom_properties
        system = event["systemProperties"]
        assert system["$.mid"] == msg.message_id
        if msg.content_type is not None:
            assert system["$.ct"] == msg.content_type
        if msg.content_encoding is not None:
            assert system["$.ce"] == msg.content_encoding
        assert system["iothub-connection-device-id"] == device_id
        assert isinstance(event["offset"], int) and event["enqueuedTime"]


@pytest.mark.parametrize("via", ["root", "intermediate", "intermediate-full-chain"])
def test_x509_ca_device_telemetry_round_trips_byte_for_byte(hub, device_clients, request, via):
    if via == "root":
        ca = request.getfixturevalue("root_ca")
        chain_len = 2            # leaf + root, as `pki device` writes it
    elif via == "intermediate":
        ca = request.getfixturevalue("inter_ca")
        chain_len = 2            # leaf + intermediate: the unregistered root is not sent
    else:
        ca = request.getfixturevalue("inter_ca")
        chain_len = 3            # leaf + intermediate + the (unregistered) root, as Microsoft's scripts send
    device_id = unique(f"sensor-{via}")
    cert, key = hub.device_cert(device_id, ca, chain_len=chain_len)
    hub.cli("device", "add", device_id, "--auth", "ca")
    client = device_clients(hub.x509_client(device_id, cert, key))
    client.connect()
    assert client.connected
    live = {s["deviceId"]: s for s in hub.connections()["live"]}
    assert device_id in live, live
    # the hub names the registered CA that admitted the chain: the intermediate, not its root
    assert live[device_id]["authentication"] == f"certificateAuthority via '{ca}'", live[device_id]

    json_body = json.dumps({"temperature": 21.5, "note": "é ✓ / & = ? 温度"}, ensure_ascii=False)
    m1 = Message(json_body, message_id=unique("m"), content_encoding="utf-8", content_type="application/json")
    m1.custom_properties = dict(PROPERTIES)
    m1.correlation_id = "corr/1 & 2=3"
    m1.user_id = "user-1"
    m1.expiry_time_utc = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    binary = bytes(range(256))
    m2 = Message(binary, message_id=unique("bin"), content_type="application/octet-stream")
    m2.custom_properties = {"kind": "binary/all bytes", "n": "256"}
    big = bytes((i * 7 + 3) % 256 for i in range(250 * 1024))    # near Azure's 256 KB limit
    m3 = Message(big, message_id=unique("big"))
    for m in (m1, m2, m3):
        client.send_message(m)

    assert_telemetry(hub, device_id, [(m1, json_body.encode("utf-8")), (m2, binary), (m3, big)])
    system = hub.monitor(device_id, 1)[0]["systemProperties"]
    assert system["$.cid"] == "corr/1 & 2=3"
    assert system["$.uid"] == "user-1"
    assert system["$.exp"] == "2030-01-02T03:04:05+00:00"


@pytest.mark.parametrize("via_intermediate", [False, True])
def test_x509_device_telemetry_round_trips_byte_for_byte(hub, via_intermediate):
    # Here the intermediate's root is registered and proven too, and the device sends leaf +
    # intermediate + root (`pki device` writes the whole chain).
    ca = "root-inter" if via_intermediate else "root"
    hub.verified_ca("root")
    if via_intermediate:
        hub.verified_ca("root-inter", parent="root")
    device_id = f"sensor-{ca}"
    cert, key = hub.device_cert(device_id, ca)
    hub.cli("device", "add", device_id, "--auth", "ca")
    client = hub.x509_client(device_id, cert, key)
    try:
        client.connect()
        body = json.dumps({"t": 21.5, "note": "é ✓ / & = ?"})
        msg = Message(body, message_id="m-" + uuid.uuid4().hex, content_encoding="utf-8", content_type="application/json")
        msg.custom_properties = {"alert": "hot/cold", "a b": "x&y", "eq": "1=2", "unicode": "ü€"}
        client.send_message(msg)
    finally:
        client.shutdown()
    events = hub.monitor(device_id, 1)
    assert len(events) == 1, events
    e = events[0]
    assert e["body"] == body
    assert e["properties"] == {"alert": "hot/cold", "a b": "x&y", "eq": "1=2", "unicode": "ü€"}
    assert e["systemProperties"]["$.mid"] == msg.message_id
    assert e["systemProperties"]["$.ct"] == "application/json"
    assert e["systemProperties"]["$.ce"] == "utf-8"
    assert e["systemProperties"]["iothub-connection-device-id"] == device_id


# ==== 2. Cloud-to-device =========================================================================

def c2d_states(hub, device_id):
    return {m.get("messageId"): m for m in hub.json("c2d", "list", device_id)["value"]}


@pytest.mark.parametrize("when", ["while-connected", "queued-before-connect", "receive_message-api"])
def test_cloud_to_device_message_with_properties(hub, device_clients, root_ca, when):
    device_id = unique("c2d")
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    message_id = unique("c2d-msg")
    body = "reboot at 03:00 — ok? ✓"
    props = {"color": "red/blue", "query": "a=1&b=2", "with space": "x y", "unicode": "grüße", "empty": ""}

    def send():
        args = ["c2d", "send", device_id, body, "--message-id", message_id,
                "--correlation-id", "corr-42", "--content-type", "text/plain; charset=utf-8"]
        for k, v in props.items():
            args += ["-p", f"{k}={v}"]
        hub.cli(*args)

    received = []
    arrived = threading.Event()

    def on_message(msg):
        received.append(msg)
        arrived.set()

    client = device_clients(hub.x509_client(device_id, cert, key))
    if when == "queued-before-connect":
        send()
        assert c2d_states(hub, device_id)[message_id]["state"] == "queued"
    client.connect()
    if when == "receive_message-api":
        assert client.receive_message(timeout=0.5) is None   # subscribes; nothing queued yet
        send()
        m = client.receive_message(timeout=10)
        assert m is not None, "the C2D message did not arrive"
        assert client.receive_message(timeout=0.3) is None, "a second message arrived"
    else:
        client.on_message_received = on_message  # subscribes to devicebound/# (waits for the SUBACK)
        if when == "while-connected":
            send()
        assert arrived.wait(10), "the C2D message did not arrive"
        time.sleep(0.3)
        assert len(received) == 1, [m.data for m in received]
        m = received[0]
    assert m.data == body.encode("utf-8")
    assert m.message_id == message_id
    assert m.correlation_id == "corr-42"
    assert m.content_type == "text/plain; charset=utf-8"
    assert m.custom_properties == props
    wait_for("the message recorded as delivered",
             lambda: c2d_states(hub, device_id)[message_id]["state"] == "delivered", timeout=5)


def test_cloud_to_device_message_via_the_handler_set_after_connect(hub):
    hub.verified_ca("root")
    cert, key = hub.device_cert("c2d-dev", "root")
    hub.cli("device", "add", "c2d-dev")
    client = hub.x509_client("c2d-dev", cert, key)
    try:
        client.connect()
        received = []
        client.on_message_received = received.append
        time.sleep(0.5)  # the SDK subscribes when the handler is set
        hub.cli("c2d", "send", "c2d-dev", "reboot at 3", "-p", "color=red/blue", "-p", "empty=",
                "--message-id", "c2d-1", "--correlation-id", "corr-9", "--content-type", "text/plain")
        wait_for("the C2D message", lambda: received)
        m = received[0]
        assert m.data == b"reboot at 3"
        assert m.message_id == "c2d-1"
        assert m.correlation_id == "corr-9"
        assert m.content_type == "text/plain"
        assert m.custom_properties == {"color": "red/blue", "empty": ""}
    finally:
        client.shutdown()
    wait_for("delivered state", lambda: hub.json("c2d", "list", "c2d-dev")["value"][0]["state"] == "delivered")


def test_c2d_subscription_survives_a_reconnect_with_clean_session_0(hub, device_clients, root_ca):
    device_id = unique("c2d-persist")
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    received = []
    client = device_clients(hub.x509_client(device_id, cert, key))
    client.connect()
    client.on_message_received = received.append     # SUBSCRIBE devices/{id}/messages/devicebound/#
    hub.cli("c2d", "send", device_id, "before", "--message-id", "before")
    wait_for("the first message", lambda: received, timeout=5)
    client.disconnect()
    wait_for("the session closed", lambda: device_id not in hub.live_ids(), timeout=3)
    hub.cli("c2d", "send", device_id, "while offline", "--message-id", "offline")
    client.connect()                                 # same client id, CleanSession=0: no new SUBSCRIBE
    hub.cli("c2d", "send", device_id, "after", "--message-id", "after")
    deadline = time.monotonic() + 3
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    states = {k: v["state"] for k, v in c2d_states(hub, device_id).items()}
    assert [m.message_id for m in received] == ["before", "offline", "after"], states


def test_session_stays_up_with_a_short_keep_alive(hub, device_clients, root_ca):
    device_id = unique("keepalive")
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    drops = []
    client = device_clients(hub.x509_client(device_id, cert, key, keep_alive=1))
    client.on_connection_state_change = lambda: None if client.connected else drops.append(time.monotonic())
    client.connect()
    session = {s["deviceId"]: s for s in hub.connections()["live"]}[device_id]
    time.sleep(3.5)                                  # three PINGREQ / PINGRESP rounds at least
    assert client.connected and not drops
    assert {s["deviceId"]: s for s in hub.connections()["live"]}[device_id] == session   # the same connection
    msg = Message("still here", message_id=unique("m"))
    client.send_message(msg)
    assert_telemetry(hub, device_id, [(msg, b"still here")])


def test_expired_cloud_to_device_message_is_not_delivered(hub, device_clients, root_ca):
    device_id = unique("c2d-ttl")
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    hub.cli("c2d", "send", device_id, "too late", "--message-id", "expires", "--ttl", "1")
    hub.cli("c2d", "send", device_id, "in time", "--message-id", "lives", "--ttl", "600")
    time.sleep(1.5)
    client = device_clients(hub.x509_client(device_id, cert, key))
    client.connect()
    first = client.receive_message(timeout=10)
    assert first is not None and first.message_id == "lives" and first.data == b"in time"
    assert client.receive_message(timeout=0.5) is None
    states = c2d_states(hub, device_id)
    assert states["expires"]["state"] == "expired", states
    wait_for("'lives' recorded as delivered", lambda: c2d_states(hub, device_id)["lives"]["state"] == "delivered")


# ==== 3. Refusals ================================================================================

REFUSALS = {
    "unverified-ca": "which is Unverified",
    "not-registered": "is not registered",
    "disabled": "is disabled",
    "cn-mismatch": "is not the client id",
    "missing-intermediate": "no registered CA issued",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_device_raises_credential_error_with_recorded_reason(hub, device_clients, root_ca, case):
    device_id = unique(f"refused-{case}")
    if case == "unverified-ca":
        ca = unique("unproven")
        hub.make_ca(ca)
        hub.register_ca(ca, prove=False)
        cert, key = hub.device_cert(device_id, ca)
        hub.cli("device", "add", device_id)
    elif case == "not-registered":
        cert, key = hub.device_cert(device_id, root_ca)
    elif case == "disabled":
        cert, key = hub.device_cert(device_id, root_ca)
        hub.cli("device", "add", device_id)
        hub.cli("device", "disable", device_id)
    elif case == "cn-mismatch":
        other = unique("someone-else")
        cert, key = hub.device_cert(other, root_ca)
        hub.cli("device", "add", device_id)
        hub.cli("device", "add", other)           # the CN names a real device: still refused
    else:  # a leaf signed by an intermediate of the registered root, sent without the intermediate
        inter = unique("unsent-inter")
        hub.make_ca(inter, parent=root_ca)
        cert, key = hub.device_cert(device_id, inter, chain_len=1)
        hub.cli("device", "add", device_id)
    client = device_clients(hub.x509_client(device_id, cert, key))
    started = time.monotonic()
    with pytest.raises(CredentialError):
        client.connect()
    assert time.monotonic() - started < 5
    assert not client.connected
    reasons = wait_for("a recorded refusal", lambda: hub.refusals(device_id), timeout=3)
    assert REFUSALS[case] in reasons[0], reasons
    assert device_id not in hub.live_ids()


@pytest.mark.parametrize("case", ["unverified-ca", "not-registered", "disabled", "cn-mismatch"])
def test_refusals_raise_credential_error_with_recorded_reason(hub, case):
    hub.verified_ca("root")
    device_id = f"refused-{case}"
    if case == "unverified-ca":
        hub.cli("pki", "ca", "unver", "--force")
        hub.cli("cert", "add", "unver", "unver.pem", check=False)
        cert, key = hub.device_cert(device_id, "unver")
        hub.cli("device", "add", device_id)
        want = "which is Unverified"
    elif case == "not-registered":
        cert, key = hub.device_cert(device_id, "root")
        want = "is not registered"
    elif case == "disabled":
        cert, key = hub.device_cert(device_id, "root")
        hub.cli("device", "add", device_id, "--disabled")
        want = "is disabled"
    else:
        cert, key = hub.device_cert("someone-else", "root")
        hub.cli("device", "add", device_id)
        want = f"is not the client id '{device_id}'"
    client = hub.x509_client(device_id, cert, key)
    try:
        with pytest.raises(CredentialError):
            client.connect()
    finally:
        client.shutdown()
    reason = hub.refusal(device_id)
    assert reason and want in reason, reason


def sas_wrong_key_refusal(hub, device_clients):
    """A SAS device connecting with a token signed by a wrong key: (device id, recorded reason)."""
    device_id = unique("sas-wrong")
    hub.cli("device", "add", device_id, "--auth", "sas")
    wrong = base64.b64encode(b"\x01" * 32).decode()
    client = device_clients(hub.sas_client(device_id, wrong))
    with pytest.raises(CredentialError):
        client.connect()
    reasons = wait_for("a recorded refusal", lambda: hub.refusals(device_id), timeout=3)
    return device_id, reasons[0]


def test_sas_device_with_a_wrong_key_is_refused(hub, device_clients):
    device_id, reason = sas_wrong_key_refusal(hub, device_clients)
    assert "signature does not match" in reason and device_id in reason, reason


def test_sas_wrong_key_reason_names_the_device_plainly(hub, device_clients):
    device_id, reason = sas_wrong_key_refusal(hub, device_clients)
    assert f"device '{device_id}'" in reason and f"'device '{device_id}''" not in reason, reason


# ==== 4. Live trust ==============================================================================

@pytest.mark.parametrize("action", ["cert-delete", "device-disable", "device-delete"])
def test_trust_change_closes_a_live_session_at_once(hub, device_clients, action):
    ca = unique("live-root")           # its own CA: deleting it must not disturb other tests
    hub.make_ca(ca)
    hub.register_ca(ca)
    device_id = unique(f"live-{action}")
    cert, key = hub.device_cert(device_id, ca)
    hub.cli("device", "add", device_id)

    disconnected = threading.Event()
    ended_at = []
    client = device_clients(hub.x509_client(device_id, cert, key))

    def on_state_change():
        if not client.connected:
            ended_at.append(time.monotonic())
            disconnected.set()

    client.on_connection_state_change = on_state_change
    client.connect()
    assert client.connected
    wait_for("the session listed as live", lambda: device_id in hub.live_ids(), timeout=3)

    issued = time.monotonic()          # the CLI's own start-up (a process, an HTTPS call) counts too
    if action == "cert-delete":
        hub.cli("cert", "delete", ca)
        closed, refused = "is no longer admitted", "no registered CA issued"
    elif action == "device-disable":
        hub.cli("device", "disable", device_id)
        closed, refused = "was disabled", "is disabled"
    else:
        hub.cli("device", "delete", device_id)
        closed, refused = "was deleted", "is not registered"
    assert disconnected.wait(1.0), "the SDK still reports the session as connected 1 s after the change"
    took = ended_at[0] - issued
    assert took < 1.0, f"the session ended {took:.2f} s after the command was issued"
    assert not client.connected
    assert device_id not in hub.live_ids()
    # the end of the session is recorded with its cause
    reasons = hub.refusals(device_id)
    assert reasons and closed in reasons[0], (reasons, hub.log_lines(device_id))

    again = device_clients(hub.x509_client(device_id, cert, key))
    with pytest.raises(CredentialError):
        again.connect()
    reasons = wait_for("the reconnect refused", lambda: [r for r in hub.refusals(device_id) if refused in r], timeout=3)
    assert reasons


def test_deleting_the_ca_closes_a_live_session_at_once(hub):
    hub.verified_ca("temp-root")
    cert, key = hub.device_cert("live-dev", "temp-root")
    hub.cli("device", "add", "live-dev")
    client = hub.x509_client("live-dev", cert, key)
    try:
        client.connect()
        wait_for("connected", lambda: any(s["deviceId"] == "live-dev" for s in hub.json("connections")["live"]))
        t = time.time()
        hub.cli("cert", "delete", "temp-root")
        wait_for("the session closes", lambda: not any(s["deviceId"] == "live-dev" for s in hub.json("connections")["live"]), timeout=2)
        assert time.time() - t < 2.0
        assert "no longer admitted" in hub.refusal("live-dev")
    finally:
        client.shutdown()
    again = hub.x509_client("live-dev", cert, key)
    try:
        with pytest.raises((CredentialError, ConnectionFailedError)):
            again.connect()
    finally:
        again.shutdown()
    assert "no registered CA issued" in hub.refusal("live-dev")


def test_a_second_connection_of_the_device_replaces_the_first(hub, device_clients, root_ca):
    device_id = unique("twice")
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    first = device_clients(hub.x509_client(device_id, cert, key))
    gone = threading.Event()
    first.on_connection_state_change = lambda: None if first.connected else gone.set()
    first.connect()
    second = device_clients(hub.x509_client(device_id, cert, key))
    second.connect()
    assert gone.wait(2), "the first connection was not closed"
    assert second.connected and not first.connected
    assert hub.live_ids().count(device_id) == 1
    msg = Message("from the second connection", message_id=unique("m"))
    second.send_message(msg)
    assert_telemetry(hub, device_id, [(msg, b"from the second connection")])


# Azure's device id alphabet minus '+' and '#', which paho refuses in a PUBLISH topic. The SDK puts
# the id into the client id, the username and every topic WITHOUT encoding it.
@pytest.mark.parametrize("device_id", ["dev.1_a-b", "dev%41pct", "dev$dollar", "dev'quote",
                                       "dev(paren),comma", "dev=eq@at", "dev!bang*star", "dev?q"])
def test_device_ids_with_special_characters(hub, device_clients, root_ca, device_id):
    cert, key = hub.device_cert(device_id, root_ca)
    hub.cli("device", "add", device_id)
    client = device_clients(hub.x509_client(device_id, cert, key))
    client.connect()
    assert device_id in hub.live_ids()
    msg = Message("hi", message_id=unique("m"))
    client.send_message(msg)
    assert_telemetry(hub, device_id, [(msg, b"hi")])
    hub.cli("c2d", "send", device_id, "back", "--message-id", "c1")
    got = client.receive_message(timeout=5)
    assert got is not None and got.data == b"back" and got.message_id == "c1"


# ==== X.509 self-signed (thumbprint) ===============================================================

def self_signed(hub, device_id):
    """A self-signed EC P-256 certificate with CN = device_id made with openssl; returns (cert, key,
    SHA-1 thumbprint)."""
    cert, key = hub.path(device_id + ".pem"), hub.path(device_id + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-subj", f"/CN={device_id}", "-days", "30"],
                   check=True, capture_output=True)
    return cert, key, sha1_thumbprint(hub.read(device_id + ".pem"))


@pytest.mark.parametrize("registered", ["matching", "other"])
def test_self_signed_device(hub, device_clients, registered):
    device_id = unique("selfsigned")
    cert, key, thumbprint = self_signed(hub, device_id)
    if registered == "other":
        _, _, thumbprint = self_signed(hub, device_id + "-other")
    hub.cli("device", "add", device_id, "--auth", "self-signed", "--thumbprint", thumbprint)
    client = device_clients(hub.x509_client(device_id, cert, key))
    if registered == "other":
        with pytest.raises(CredentialError):
            client.connect()
        reasons = wait_for("a recorded refusal", lambda: hub.refusals(device_id), timeout=3)
        assert "matches neither registered thumbprint" in reasons[0], reasons
        return
    client.connect()
    live = {s["deviceId"]: s for s in hub.connections()["live"]}
    assert live[device_id]["authentication"] == f"selfSigned {thumbprint}", live
    msg = Message(b"\x00self-signed\xff", message_id=unique("m"))
    msg.custom_properties = {"auth": "self/signed"}
    client.send_message(msg)
    assert_telemetry(hub, device_id, [(msg, b"\x00self-signed\xff")])


# ==== 5. SAS =====================================================================================

def test_sas_device_sends_telemetry(hub, device_clients):
    device_id = unique("sas")
    hub.cli("device", "add", device_id, "--auth", "sas")
    cs = hub.cli("device", "connection-string", device_id).strip()
    fields = dict(part.split("=", 1) for part in cs.split(";"))
    assert fields["DeviceId"] == device_id
    assert fields["HostName"].split(":")[0] == hub.ip
    client = device_clients(hub.sas_client(device_id, fields["SharedAccessKey"]))
    client.connect()
    live = {s["deviceId"]: s for s in hub.connections()["live"]}
    assert device_id in live and live[device_id]["authentication"] == "sas", live
    msg = Message("from a sas device ✓", message_id=unique("sas-m"), content_type="text/plain", content_encoding="utf-8")
    msg.custom_properties = {"source": "sas/symmetric key", "q": "a=b&c"}
    client.send_message(msg)
    assert_telemetry(hub, device_id, [(msg, "from a sas device ✓".encode("utf-8"))])


def test_sas_device_sends_a_plain_message(hub):
    hub.cli("device", "add", "sas-1", "--auth", "sas")
    cs = hub.cli("device", "connection-string", "sas-1").strip()
    key = cs.split("SharedAccessKey=")[1]
    client = hub.sas_client("sas-1", key)
    try:
        client.connect()
        client.send_message(Message("from a sas device"))
    finally:
        client.shutdown()
    events = hub.monitor("sas-1", 1)
    assert events[0]["body"] == "from a sas device"
