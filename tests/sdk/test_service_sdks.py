"""The official Azure management and service SDKs, unmodified, against iothub:
azure-mgmt-iothub (CA certificates over ARM, with etags and error codes),
azure-mgmt-iothubprovisioningservices (the same registry through DPS routes),
azure-iot-hub (devices of every auth type, twins, direct methods), and azure-iot-device for the
device side of twins and methods."""
import threading
import time

import pytest
from azure.core import MatchConditions
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.iot.device import IoTHubDeviceClient, MethodResponse, X509
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from azure.mgmt.iothub import IotHubClient
from azure.mgmt.iothub.models import CertificateDescription, CertificateProperties, CertificateVerificationDescription
from msrest.exceptions import HttpOperationError

from conftest import wait_for


class HubCredential:
    """What a test passes as the ARM credential: a hub policy token (`iothub sas-token`)."""

    def __init__(self, hub, token=None):
        self.token = token or hub.cli("sas-token").strip()

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


def mgmt(hub, credential=None):
    return IotHubClient(credential or HubCredential(hub), "sub-1", base_url=hub.base, connection_verify=hub.ca_file, retry_total=0)


def registry(hub):
    rm = IoTHubRegistryManager.from_connection_string(hub.connection_string())
    rm.protocol.config.connection.verify = hub.ca_file
    return rm


def verification_pem(hub, ca, code, out="pop.pem"):
    hub.cli("pki", "verification-cert", "--ca-cert", ca + ".pem", "--ca-key", ca + ".key", "--code", code, "--out", out, "--force")
    return open(hub.path(out)).read()


def code_of(e):
    return str(e.error.code) if getattr(e, "error", None) is not None else None


# ----- azure-mgmt-iothub ---------------------------------------------------------------------------

def test_mgmt_certificate_lifecycle(hub):
    hub.cli("pki", "ca", "arm-root", "--force")
    client = mgmt(hub)
    pem = open(hub.path("arm-root.pem")).read()
    created = client.certificates.create_or_update("rg", "iothub", "arm-root", CertificateDescription(properties=CertificateProperties(certificate=pem)))
    assert created.properties.is_verified is False
    assert created.properties.expiry.year >= 2026   # RFC 1123 parsed into a datetime
    assert len(created.properties.thumbprint) == 40 and created.properties.thumbprint.isupper()
    assert "arm-root" in [c.name for c in client.certificates.list_by_iot_hub("rg", "iothub").value]
    assert client.certificates.get("rg", "iothub", "arm-root").etag == created.etag
    coded = client.certificates.generate_verification_code("rg", "iothub", "arm-root", created.etag)
    code = coded.properties.verification_code
    assert len(code) == 48 and code == code.upper() and coded.etag != created.etag
    done = client.certificates.verify("rg", "iothub", "arm-root", coded.etag,
                                      CertificateVerificationDescription(certificate=verification_pem(hub, "arm-root", code)))
    assert done.properties.is_verified is True and done.etag != coded.etag
    client.certificates.delete("rg", "iothub", "arm-root", done.etag)
    with pytest.raises(ResourceNotFoundError):
        client.certificates.get("rg", "iothub", "arm-root")
    client.certificates.delete("rg", "iothub", "arm-root", "*")   # a missing certificate: no error


def test_mgmt_policy_keys(hub):
    # iot_hub_resource.list_keys (POST .../IotHubs/{hub}/listkeys, paged) and get_keys_for_key_name
    # (POST .../IotHubKeys/{keyName}/listkeys) read the hub's shared access policies with their keys.
    hub.cli("policy", "add", "mgmt-reader", "--rights", "RegistryRead, ServiceConnect")
    shown = hub.json("policy", "show", "mgmt-reader", "--keys")
    client = mgmt(hub)
    rules = {r.key_name: r for r in client.iot_hub_resource.list_keys("rg", "iothub")}
    assert rules["iothubowner"].rights == "RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect"
    assert rules["mgmt-reader"].rights == "RegistryRead, ServiceConnect"
    assert rules["mgmt-reader"].primary_key == shown["primaryKey"]
    assert set(rules) >= {"iothubowner", "service", "device", "registryRead", "registryReadWrite"}
    one = client.iot_hub_resource.get_keys_for_key_name("rg", "iothub", "mgmt-reader")
    assert (one.key_name, one.primary_key, one.secondary_key) == ("mgmt-reader", shown["primaryKey"], shown["secondaryKey"])
    with pytest.raises(ResourceNotFoundError):
        client.iot_hub_resource.get_keys_for_key_name("rg", "iothub", "no-such-policy")
    # After a rotation the management API reads the new key; the old one no longer signs anything.
    hub.cli("policy", "rotate", "mgmt-reader", "--key", "secondary")
    rotated = client.iot_hub_resource.get_keys_for_key_name("rg", "iothub", "mgmt-reader")
    assert rotated.primary_key == shown["primaryKey"] and rotated.secondary_key != shown["secondaryKey"]
    # A policy without every right reads no keys (403), through the SDK as anywhere else.
    reader = mgmt(hub, HubCredential(hub, hub.cli("sas-token", "--policy", "mgmt-reader").strip()))
    with pytest.raises(HttpResponseError) as e:
        list(reader.iot_hub_resource.list_keys("rg", "iothub"))
    assert e.value.status_code == 403 and code_of(e.value) == "403001", e.value
    hub.cli("policy", "delete", "mgmt-reader")


def test_mgmt_error_paths(hub):
    hub.cli("pki", "ca", "arm-err", "--force")
    hub.cli("pki", "ca", "arm-other", "--force")
    import os
    os.makedirs(hub.path("fake"), exist_ok=True)
    hub.cli("pki", "ca", "arm-err", "--out-dir", "fake", "--force")   # same subject, another key
    client = mgmt(hub)
    c = client.certificates.create_or_update("rg", "iothub", "arm-err", CertificateDescription(properties=CertificateProperties(certificate=open(hub.path("arm-err.pem")).read())))
    coded = client.certificates.generate_verification_code("rg", "iothub", "arm-err", c.etag)
    code = coded.properties.verification_code
    good = verification_pem(hub, "arm-err", code)
    cases = [
        (c.etag, good, 412, "412001"),                                        # stale etag
        (coded.etag, verification_pem(hub, "arm-other", code, "o.pem"), 400, "400053"),   # another CA
        (coded.etag, verification_pem(hub, "fake/arm-err", code, "w.pem"), 400, "400054"),  # wrong key
        (coded.etag, verification_pem(hub, "arm-err", "A" * 48, "cn.pem"), 400, "400055"),   # CN mismatch
    ]
    for etag, pem, status, code_expected in cases:
        with pytest.raises(HttpResponseError) as e:
            client.certificates.verify("rg", "iothub", "arm-err", etag, CertificateVerificationDescription(certificate=pem))
        assert e.value.status_code == status, (code_expected, e.value)
        assert code_of(e.value) == code_expected, e.value
    with pytest.raises(ResourceNotFoundError):
        client.certificates.get("rg", "otherhub", "arm-err")
    with pytest.raises(ClientAuthenticationError):
        mgmt(hub, HubCredential(hub, "SharedAccessSignature sr=x&sig=AA%3D%3D&se=1&skn=iothubowner")).certificates.list_by_iot_hub("rg", "iothub")


# ----- azure-mgmt-iothubprovisioningservices -----------------------------------------------------

def test_dps_certificate_operations_use_the_same_registry(hub):
    from azure.mgmt.iothubprovisioningservices import IotDpsClient
    hub.cli("pki", "ca", "dps-root", "--force")
    dps = IotDpsClient(HubCredential(hub), "sub-1", base_url=hub.base, connection_verify=hub.ca_file, retry_total=0)
    pem = open(hub.path("dps-root.pem"), "rb").read()
    created = dps.dps_certificate.create_or_update("rg", "iothub", "dps-root", {"properties": {"certificate": pem}})
    assert created.properties.is_verified is False
    assert "dps-root" in [c.name for c in dps.dps_certificate.list("rg", "iothub").value]
    got = dps.dps_certificate.get("dps-root", "rg", "iothub")
    coded = dps.dps_certificate.generate_verification_code("dps-root", "rg", "iothub", etag=got.etag, match_condition=MatchConditions.IfNotModified)
    code = coded.properties.verification_code
    with pytest.raises(HttpResponseError) as e:
        dps.dps_certificate.verify_certificate("dps-root", "rg", "iothub", {"certificate": verification_pem(hub, "dps-root", code)},
                                               etag=got.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    done = dps.dps_certificate.verify_certificate("dps-root", "rg", "iothub", {"certificate": verification_pem(hub, "dps-root", code)},
                                                  etag=coded.etag, match_condition=MatchConditions.IfNotModified)
    assert done.properties.is_verified is True
    # The same registry: the IoT Hub view shows it Verified too.
    assert hub.json("cert", "show", "dps-root")["properties"]["isVerified"] is True
    dps.dps_certificate.delete("rg", "iothub", "dps-root", etag=done.etag, match_condition=MatchConditions.IfNotModified)
    assert "dps-root" not in hub.cli("cert", "list")


# ----- azure-iot-hub: registry, twins, methods ----------------------------------------------------

def test_registry_devices_of_every_auth_type(hub):
    rm = registry(hub)
    sas = rm.create_device_with_sas("svc-sas", None, None, "enabled")
    assert sas.authentication.type == "sas" and sas.authentication.symmetric_key.primary_key
    x509 = rm.create_device_with_x509("svc-x509", "A" * 40, "B" * 64, "enabled")
    assert x509.authentication.type == "selfSigned" and x509.authentication.x509_thumbprint.primary_thumbprint == "A" * 40
    ca = rm.create_device_with_certificate_authority("svc-ca", "enabled")
    assert ca.authentication.type == "certificateAuthority"
    got = rm.get_device("svc-sas")
    assert got.etag == sas.etag and got.connection_state == "Disconnected"
    updated = rm.update_device_with_sas("svc-sas", got.etag, None, None, "disabled")
    assert updated.status == "disabled" and updated.etag != got.etag
    with pytest.raises(HttpOperationError) as e:
        rm.update_device_with_sas("svc-sas", got.etag, None, None, "enabled")   # stale etag
    assert e.value.response.status_code == 412
    rm.delete_device("svc-sas", updated.etag)
    rm.delete_device("svc-x509")
    with pytest.raises(HttpOperationError) as e:
        rm.get_device("svc-sas")
    assert e.value.response.status_code == 404


def device_with_handlers(hub, device_id, answer=True):
    hub.verified_ca("root")
    cert, key = hub.device_cert(device_id, "root")
    hub.cli("device", "add", device_id)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert, key), hostname=hub.ip, device_id=device_id, server_verification_cert=hub.ca, connection_retry=False)
    patches = []
    client.on_twin_desired_properties_patch_received = patches.append

    def on_method(request):
        if answer:
            client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"echo": request.payload, "name": request.name}))

    client.on_method_request_received = on_method
    client.connect()
    time.sleep(0.5)   # the handlers' subscriptions
    return client, patches


def test_twins_and_direct_methods(hub):
    rm = registry(hub)
    client, patches = device_with_handlers(hub, "twin-dev")
    try:
        twin = rm.get_twin("twin-dev")
        assert twin.properties.desired["$version"] == 1
        t2 = rm.update_twin("twin-dev", Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"interval": 5})), twin.etag)
        assert t2.properties.desired["interval"] == 5 and t2.tags == {"site": "lab"} and t2.etag != twin.etag
        # The SDK first re-syncs the whole desired document on its own (version 1); then the patch.
        patch = wait_for("the desired patch reaches the device", lambda: next((p for p in patches if "interval" in p), None))
        assert patch["interval"] == 5 and patch["$version"] == 2
        with pytest.raises(HttpOperationError) as e:
            rm.update_twin("twin-dev", Twin(properties=TwinProperties(desired={"interval": 6})), twin.etag)   # stale
        assert e.value.response.status_code == 412
        client.patch_twin_reported_properties({"firmware": "1.2"})
        assert rm.get_twin("twin-dev").properties.reported["firmware"] == "1.2"
        device_view = client.get_twin()
        assert device_view["desired"]["interval"] == 5 and device_view["reported"]["firmware"] == "1.2"
        replaced = rm.replace_twin("twin-dev", Twin(tags={"site": "field"}, properties=TwinProperties(desired={"mode": "eco"})))
        assert "interval" not in replaced.properties.desired and replaced.properties.desired["mode"] == "eco"
        answer = rm.invoke_device_method("twin-dev", CloudToDeviceMethod(method_name="reboot", payload={"delay": 3}, response_timeout_in_seconds=10))
        assert answer.status == 201 and answer.payload == {"echo": {"delay": 3}, "name": "reboot"}
        # A desired change made while the device is offline is seen on its next twin GET.
        client.disconnect()
        current = rm.get_twin("twin-dev")
        rm.update_twin("twin-dev", Twin(properties=TwinProperties(desired={"offline": True})), current.etag)
        client.connect()
        assert client.get_twin()["desired"]["offline"] is True
    finally:
        client.shutdown()


def test_method_errors(hub):
    rm = registry(hub)
    rm.create_device_with_certificate_authority("offline-dev", "enabled")
    with pytest.raises(HttpOperationError) as e:
        rm.invoke_device_method("offline-dev", CloudToDeviceMethod(method_name="x", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404
    client, _ = device_with_handlers(hub, "silent-dev", answer=False)
    try:
        t = time.time()
        with pytest.raises(HttpOperationError) as e:
            rm.invoke_device_method("silent-dev", CloudToDeviceMethod(method_name="x", payload={}, response_timeout_in_seconds=5))
        assert e.value.response.status_code == 504
        assert 4 < time.time() - t < 20
    finally:
        client.shutdown()
