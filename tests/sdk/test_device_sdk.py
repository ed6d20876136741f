"""The official Azure IoT device SDK (azure-iot-device 2.14.0), unmodified, against iothub:
X.509 CA devices (root and intermediate) send telemetry with properties that the hub returns byte
for byte, receive cloud-to-device messages with properties, are refused with precise recorded
reasons, and are cut off at once when trust changes. A SAS device too."""
import json
import time
import uuid

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, X509
from azure.iot.device.exceptions import ConnectionFailedError, CredentialError

from conftest import wait_for


def x509_client(hub, device_id, cert, key):
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert, key), hostname=hub.ip, device_id=device_id,
        server_verification_cert=hub.ca, connection_retry=False, keep_alive=30)


def monitor(hub, count, device=None):
    args = ["monitor", "--from", "1", "--count", str(count), "--timeout", "15"]
    if device:
        args += ["--device", device]
    return [json.loads(line) for line in hub.cli("-o", "json", *args).splitlines() if line.strip()]


@pytest.mark.parametrize("via_intermediate", [False, True])
def test_x509_device_telemetry_round_trips_byte_for_byte(hub, via_intermediate):
    ca = "inter" if via_intermediate else "root"
    hub.verified_ca("root")
    if via_intermediate:
        hub.verified_ca("inter", parent="root")
    device_id = f"sensor-{ca}"
    cert, key = hub.device_cert(device_id, ca)
    hub.cli("device", "add", device_id, "--auth", "ca")
    client = x509_client(hub, device_id, cert, key)
    try:
        client.connect()
        body = json.dumps({"t": 21.5, "note": "é ✓ / & = ?"})
        msg = Message(body, message_id="m-" + uuid.uuid4().hex, content_encoding="utf-8", content_type="application/json")
        msg.custom_properties = {"alert": "hot/cold", "a b": "x&y", "eq": "1=2", "unicode": "ü€"}
        client.send_message(msg)
    finally:
        client.shutdown()
    events = monitor(hub, 1, device_id)
    assert len(events) == 1, events
    e = events[0]
    assert e["body"] == body
    assert e["properties"] == {"alert": "hot/cold", "a b": "x&y", "eq": "1=2", "unicode": "ü€"}
    assert e["systemProperties"]["$.mid"] == msg.message_id
    assert e["systemProperties"]["$.ct"] == "application/json"
    assert e["systemProperties"]["$.ce"] == "utf-8"
    assert e["systemProperties"]["iothub-connection-device-id"] == device_id


def test_cloud_to_device_message_with_properties(hub):
    hub.verified_ca("root")
    cert, key = hub.device_cert("c2d-dev", "root")
    hub.cli("device", "add", "c2d-dev")
    client = x509_client(hub, "c2d-dev", cert, key)
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
    client = x509_client(hub, device_id, cert, key)
    try:
        with pytest.raises(CredentialError):
            client.connect()
    finally:
        client.shutdown()
    reason = hub.refusal(device_id)
    assert reason and want in reason, reason


def test_deleting_the_ca_closes_a_live_session_at_once(hub):
    hub.verified_ca("temp-root")
    cert, key = hub.device_cert("live-dev", "temp-root")
    hub.cli("device", "add", "live-dev")
    client = x509_client(hub, "live-dev", cert, key)
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
    again = x509_client(hub, "live-dev", cert, key)
    try:
        with pytest.raises((CredentialError, ConnectionFailedError)):
            again.connect()
    finally:
        again.shutdown()
    assert "no registered CA issued" in hub.refusal("live-dev")


def test_sas_device_sends_telemetry(hub):
    hub.cli("device", "add", "sas-1", "--auth", "sas")
    cs = hub.cli("device", "connection-string", "sas-1").strip()
    key = cs.split("SharedAccessKey=")[1]
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub.ip, device_id="sas-1", server_verification_cert=hub.ca, connection_retry=False)
    try:
        client.connect()
        client.send_message(Message("from a sas device"))
    finally:
        client.shutdown()
    events = monitor(hub, 1, "sas-1")
    assert events[0]["body"] == "from a sas device"
