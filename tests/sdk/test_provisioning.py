"""The official device SDK's provisioning client (azure-iot-device's ProvisioningDeviceClient,
unmodified) against iothub's provisioning service on the hub's own MQTT port: enrollment groups
bound to a Verified root or intermediate, individual enrollments by certificate, the initial twin,
re-registration, and every refusal with its reason.

What the SDK does on the wire (docs/azure-wire.md, "Provisioning over MQTT"): it connects to port
8883 with username `{idScope}/registrations/{registrationId}/api-version=...`, subscribes to
`$dps/registrations/res/#`, publishes a register request, is told `assigning` with an operation
id, polls it about 2 s later and reads `assigned` with the device id and the hub's host name.
"""
import json
import subprocess
import uuid

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError, ServiceError

from conftest import wait_for


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def scope(hub):
    scope = hub.cli("dps", "id-scope").strip()
    assert scope.startswith("0ne") and len(scope) == 11, scope
    return scope


@pytest.fixture(scope="module")
def group_root(hub):
    """A Verified root and an enrollment group bound to it, with an initial twin."""
    hub.verified_ca("prov-root")
    twin = hub.write("prov-twin.json", json.dumps(
        {"tags": {"line": "A"}, "properties": {"desired": {"interval": 30}}}))
    hub.cli("dps", "group", "add", "line-a", "--ca", "prov-root", "--initial-twin", twin)
    return "prov-root"


def provision(hub, scope, registration_id, cert, key):
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=hub.ip, registration_id=registration_id, id_scope=scope,
        x509=X509(cert_file=cert, key_file=key), server_verification_cert=hub.ca)
    return client.register()


def refused_status(hub, scope, registration_id, cert, key):
    """Registers and expects a refusal: the SDK raises ClientError("Unexpected failure") caused by
    a ServiceError naming the status the hub answered; returns that ServiceError's text."""
    with pytest.raises((ClientError, ServiceError)) as caught:
        provision(hub, scope, registration_id, cert, key)
    cause = caught.value if isinstance(caught.value, ServiceError) else caught.value.__cause__
    assert isinstance(cause, ServiceError), repr(caught.value)
    return str(cause)


def connect_device(hub, device_id, cert, key):
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=cert, key_file=key), hostname=hub.ip, device_id=device_id,
        server_verification_cert=hub.ca, connection_retry=False, keep_alive=30)
    client.connect()
    return client


def test_a_group_device_is_assigned_then_connects_with_its_initial_twin(hub, scope, group_root):
    device_id = unique("prov")
    cert, key = hub.device_cert(device_id, group_root)
    result = provision(hub, scope, device_id, cert, key)
    assert result.status == "assigned", result
    state = result.registration_state
    assert state.device_id == device_id
    assert state.assigned_hub == hub.ip
    assert state.sub_status == "initialAssignment"
    # The device now exists, connects as usual and reads the group's initial twin.
    shown = hub.json("device", "show", device_id)
    assert shown["authentication"]["type"] == "certificateAuthority", shown
    client = connect_device(hub, device_id, cert, key)
    try:
        twin = client.get_twin()
        assert twin["desired"]["interval"] == 30, twin
    finally:
        client.shutdown()
    tags = hub.json("twin", "show", device_id)["tags"]
    assert tags == {"line": "A"}, tags
    registrations = {r["registrationId"]: r for r in hub.json("dps", "registrations")["value"]}
    assert registrations[device_id]["enrollment"] == {"kind": "group", "name": "line-a"}


def test_re_registration_keeps_the_device_and_its_twin(hub, scope, group_root):
    device_id = unique("again")
    cert, key = hub.device_cert(device_id, group_root)
    first = provision(hub, scope, device_id, cert, key)
    assert first.status == "assigned"
    hub.cli("twin", "update", device_id, "--desired", '{"interval": 5}')
    second = provision(hub, scope, device_id, cert, key)
    assert second.status == "assigned" and second.registration_state.device_id == device_id
    assert second.registration_state.created_date_time == first.registration_state.created_date_time
    twin = hub.json("twin", "show", device_id)
    assert twin["properties"]["desired"]["interval"] == 5, "the twin is kept, not reset"


def test_a_group_bound_to_an_intermediate(hub, scope):
    hub.make_ca("prov-offline-root")
    hub.make_ca("prov-inter", parent="prov-offline-root")
    hub.register_ca("prov-inter")
    hub.cli("dps", "group", "add", "inter-group", "--ca", "prov-inter")
    device_id = unique("via-inter")
    cert, key = hub.device_cert(device_id, "prov-inter")
    result = provision(hub, scope, device_id, cert, key)
    assert result.status == "assigned" and result.registration_state.device_id == device_id
    registrations = {r["registrationId"]: r for r in hub.json("dps", "registrations")["value"]}
    assert registrations[device_id]["enrollment"]["name"] == "inter-group"


def test_an_individual_enrollment_by_certificate(hub, scope):
    device_id = unique("solo")
    cert, key = hub.path(device_id + ".pem"), hub.path(device_id + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-subj", f"/CN={device_id}", "-days", "30"],
                   check=True, capture_output=True)
    hub.cli("dps", "individual", "add", device_id, "--cert", cert)
    result = provision(hub, scope, device_id, cert, key)
    assert result.status == "assigned" and result.registration_state.device_id == device_id
    assert hub.json("device", "show", device_id)["authentication"]["type"] == "selfSigned"
    connect_device(hub, device_id, cert, key).shutdown()
    # Another certificate with the same CN is not the enrolled one.
    other_cert, other_key = hub.path(device_id + "-2.pem"), hub.path(device_id + "-2.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", other_key, "-out", other_cert, "-subj", f"/CN={device_id}",
                    "-days", "30"], check=True, capture_output=True)
    assert "401" in refused_status(hub, scope, device_id, other_cert, other_key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "is not the one enrolled for" in reasons[0], reasons


def test_a_disabled_group_refuses_with_the_reason_and_enabling_admits(hub, scope, group_root):
    hub.verified_ca("prov-root-2")
    hub.cli("dps", "group", "add", "line-b", "--ca", "prov-root-2", "--disabled")
    device_id = unique("held")
    cert, key = hub.device_cert(device_id, "prov-root-2")
    refused_status(hub, scope, device_id, cert, key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "enrollment group 'line-b' is disabled" in reasons[0], reasons
    assert hub.run("device", "show", device_id).returncode != 0, "nothing was registered"
    hub.cli("dps", "group", "enable", "line-b")
    assert provision(hub, scope, device_id, cert, key).status == "assigned"


def test_refusals_name_their_reason(hub, scope, group_root):
    # A chain to a CA that is not Verified: the chain's reason, as at CONNECT.
    hub.make_ca("prov-unproven")
    hub.register_ca("prov-unproven", prove=False)
    r = hub.run("dps", "group", "add", "unproven", "--ca", "prov-unproven")
    assert r.returncode != 0 and "is Unverified" in r.stderr, r.stderr
    device_id = unique("unproven")
    cert, key = hub.device_cert(device_id, "prov-unproven")
    refused_status(hub, scope, device_id, cert, key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "registration refused" in reasons[0] and "which is Unverified" in reasons[0], reasons
    # A Verified CA without a group.
    hub.verified_ca("prov-no-group")
    device_id = unique("nogroup")
    cert, key = hub.device_cert(device_id, "prov-no-group")
    refused_status(hub, scope, device_id, cert, key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "no enrollment group is bound to CA 'prov-no-group'" in reasons[0], reasons
    # A revoked certificate.
    device_id = unique("revoked")
    cert, key = hub.device_cert(device_id, group_root)
    serial = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-serial"], check=True,
                            capture_output=True, text=True).stdout.strip().split("=")[1]
    hub.cli("cert", "revoke", group_root, "--serial", serial, "--reason", "keyCompromise")
    refused_status(hub, scope, device_id, cert, key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "revoked by 'prov-root'" in reasons[0], reasons
    # Another hub's ID scope: refused at CONNECT.
    device_id = unique("scope")
    cert, key = hub.device_cert(device_id, group_root)
    with pytest.raises((CredentialError, ClientError, ServiceError)):
        provision(hub, scope="0ne00000000" if scope != "0ne00000000" else "0ne11111111",
                  registration_id=device_id, cert=cert, key=key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert "which is not this hub's" in reasons[0], reasons
    # The registration id must be the certificate's CN.
    other = unique("cn")
    cert, key = hub.device_cert(other, group_root)
    device_id = unique("not-the-cn")
    refused_status(hub, scope, device_id, cert, key)
    reasons = wait_for("the refusal", lambda: hub.refusals(device_id), timeout=5)
    assert f"leaf CN '{other}' is not the client id '{device_id}'" in reasons[0], reasons
