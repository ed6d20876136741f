"""The OFFICIAL, unmodified Azure IoT SDKs against a real running iothub:

1. azure-mgmt-iothub 4.0.0 -- CA certificates over ARM (create, list, get, verification code,
   proof of possession, delete) with etags and IoT Hub error codes;
2. azure-iot-hub 2.7.0 -- the device registry (every auth type), twins, direct methods;
3. azure-iot-device 2.14.0 -- the device side of twins (X.509 over MQTT/TLS);
4. azure-mgmt-iothubprovisioningservices 2.1.0 -- the same certificate flow through DPS routes.

Each test module gets its own `iothub serve` (sdk_hub.py); every call below goes over the wire.
Run: python -m pytest tests/python/test_service_sdks.py -q
"""
import base64
import datetime
import os
import re
import sys
import threading
import time

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceModifiedError,
                                   ResourceNotFoundError)
from azure.iot.device import MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from azure.mgmt.iothub.models import CertificateDescription, CertificateProperties, CertificateVerificationDescription
from azure.mgmt.iothubprovisioningservices import models as dps_models
from msrest.exceptions import HttpOperationError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # sdk_hub.py beside this file
import sdk_hub as H  # noqa: E402
from sdk_hub import sdk_devices, sdk_dps, sdk_mgmt, sdk_registry, sdk_server  # noqa: E402,F401 (fixtures)

# azure-iot-device 2.14.0 builds its TLS context with ssl.PROTOCOL_TLSv1_2 (deprecated in Python).
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

HEX40 = re.compile(r"^[0-9A-F]{40}$")
HEX48 = re.compile(r"^[0-9A-F]{48}$")


def error_code(e):
    """The `code` of an ARM error body as the SDK parsed it (int or string in the body)."""
    return None if getattr(e, "error", None) is None else str(e.error.code)


# ==== 1. azure-mgmt-iothub: CA certificates ======================================================

def mgmt_upload(hub, client, name, out_dir="."):
    pem = hub.make_ca(name, out_dir=out_dir)
    created = client.certificates.create_or_update(
        H.RG, H.HUB_NAME, name, CertificateDescription(properties=CertificateProperties(certificate=pem)))
    return pem, created


def test_mgmt_create_or_update_new_certificate_is_unverified(sdk_server, sdk_mgmt):
    pem, created = mgmt_upload(sdk_server, sdk_mgmt, "arm-new")
    assert created.name == "arm-new"
    assert created.type == "Microsoft.Devices/IotHubs/Certificates"
    assert created.id == ("/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Devices/IotHubs/iothub"
                          "/certificates/arm-new")
    assert created.etag
    props = created.properties
    assert props.is_verified is False
    # RFC 1123 on the wire; the SDK (type rfc-1123) only yields a datetime if it parsed.
    assert isinstance(props.expiry, datetime.datetime)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now + datetime.timedelta(days=3000) < props.expiry < now + datetime.timedelta(days=3660)
    assert isinstance(props.created, datetime.datetime) and isinstance(props.updated, datetime.datetime)
    assert abs((props.created - now).total_seconds()) < 120
    assert HEX40.match(props.thumbprint), props.thumbprint
    assert props.thumbprint == H.sha1_thumbprint(pem)
    assert "arm-new" in props.subject


def test_mgmt_list_and_get(sdk_server, sdk_mgmt):
    _, created = mgmt_upload(sdk_server, sdk_mgmt, "arm-listed")
    listed = sdk_mgmt.certificates.list_by_iot_hub(H.RG, H.HUB_NAME)
    by_name = {c.name: c for c in listed.value}
    assert "arm-listed" in by_name
    assert by_name["arm-listed"].etag == created.etag
    assert by_name["arm-listed"].properties.thumbprint == created.properties.thumbprint
    got = sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, "arm-listed")
    assert got.name == "arm-listed"
    assert got.etag == created.etag
    assert got.properties.thumbprint == created.properties.thumbprint
    assert got.properties.is_verified is False
    assert got.properties.expiry == created.properties.expiry


def test_mgmt_proof_of_possession_and_delete(sdk_server, sdk_mgmt):
    name = "arm-pop"
    _, created = mgmt_upload(sdk_server, sdk_mgmt, name)
    coded = sdk_mgmt.certificates.generate_verification_code(H.RG, H.HUB_NAME, name, created.etag)
    code = coded.properties.verification_code
    assert HEX48.match(code), code
    assert coded.etag and coded.etag != created.etag
    assert coded.properties.is_verified is False
    assert coded.properties.thumbprint == created.properties.thumbprint

    pop = sdk_server.verification_cert(name + ".pem", name + ".key", code, "arm-pop-verif.pem")
    verified = sdk_mgmt.certificates.verify(H.RG, H.HUB_NAME, name, coded.etag,
                                            CertificateVerificationDescription(certificate=pop))
    assert verified.properties.is_verified is True
    assert verified.etag and verified.etag not in (created.etag, coded.etag)
    got = sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, name)
    assert got.properties.is_verified is True and got.etag == verified.etag
    # The hub's own view agrees.
    assert sdk_server.cli_json("cert", "show", name)["properties"]["isVerified"] is True

    # Delete with a stale etag is refused; with the current one it goes.
    with pytest.raises(HttpResponseError) as stale:
        sdk_mgmt.certificates.delete(H.RG, H.HUB_NAME, name, created.etag)
    assert stale.value.status_code == 412
    sdk_mgmt.certificates.delete(H.RG, H.HUB_NAME, name, verified.etag)
    with pytest.raises(ResourceNotFoundError) as gone:
        sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, name)
    assert gone.value.status_code == 404
    assert name not in [c.name for c in sdk_mgmt.certificates.list_by_iot_hub(H.RG, H.HUB_NAME).value]
    # Deleting a certificate that does not exist is a no-op (SDK docstring), not an error.
    sdk_mgmt.certificates.delete(H.RG, H.HUB_NAME, name, verified.etag)
    sdk_mgmt.certificates.delete(H.RG, H.HUB_NAME, "arm-never-existed", "*")


@pytest.fixture
def sdk_pending_ca(sdk_server, sdk_mgmt, request):
    """A fresh CA with a live verification code (never verified), and the files to attack it with:
    another CA `<name>-other`, and `wrongkey/<name>` (the same subject, another key)."""
    name = "arm-err-" + request.node.name.rsplit("_", 1)[-1]
    _, created = mgmt_upload(sdk_server, sdk_mgmt, name)
    sdk_server.make_ca(name + "-other")
    sdk_server.make_ca(name, out_dir="wrongkey")
    coded = sdk_mgmt.certificates.generate_verification_code(H.RG, H.HUB_NAME, name, created.etag)
    return {"name": name, "old_etag": created.etag, "etag": coded.etag, "code": coded.properties.verification_code}


def mgmt_verify_error(client, ca, etag, pem):
    with pytest.raises(HttpResponseError) as e:
        client.certificates.verify(H.RG, H.HUB_NAME, ca["name"], etag, CertificateVerificationDescription(certificate=pem))
    return e.value


def test_mgmt_verify_with_stale_etag_is_412001(sdk_server, sdk_mgmt, sdk_pending_ca):
    n = sdk_pending_ca["name"]
    good = sdk_server.verification_cert(n + ".pem", n + ".key", sdk_pending_ca["code"], n + "-good.pem")
    e = mgmt_verify_error(sdk_mgmt, sdk_pending_ca, sdk_pending_ca["old_etag"], good)
    assert e.status_code == 412
    assert error_code(e) == "412001", e
    assert sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, n).properties.is_verified is False


def test_mgmt_verify_with_certificate_of_another_ca_is_400053(sdk_server, sdk_mgmt, sdk_pending_ca):
    n = sdk_pending_ca["name"]
    other = sdk_server.verification_cert(n + "-other.pem", n + "-other.key", sdk_pending_ca["code"], n + "-o.pem")
    e = mgmt_verify_error(sdk_mgmt, sdk_pending_ca, sdk_pending_ca["etag"], other)
    assert e.status_code == 400
    assert error_code(e) == "400053", e


def test_mgmt_verify_signed_with_wrong_key_same_subject_is_400054(sdk_server, sdk_mgmt, sdk_pending_ca):
    n = sdk_pending_ca["name"]
    forged = sdk_server.verification_cert(f"wrongkey/{n}.pem", f"wrongkey/{n}.key", sdk_pending_ca["code"], n + "-f.pem")
    e = mgmt_verify_error(sdk_mgmt, sdk_pending_ca, sdk_pending_ca["etag"], forged)
    assert e.status_code == 400
    assert error_code(e) == "400054", e


def test_mgmt_verify_with_wrong_code_cn_is_400055(sdk_server, sdk_mgmt, sdk_pending_ca):
    wrong_code = "0" * 48 if sdk_pending_ca["code"] != "0" * 48 else "1" * 48
    n = sdk_pending_ca["name"]
    mismatched = sdk_server.verification_cert(n + ".pem", n + ".key", wrong_code, n + "-cn.pem")
    e = mgmt_verify_error(sdk_mgmt, sdk_pending_ca, sdk_pending_ca["etag"], mismatched)
    assert e.status_code == 400
    assert error_code(e) == "400055", e
    # The failed attempt neither verified it nor consumed the code: the right certificate still works.
    good = sdk_server.verification_cert(n + ".pem", n + ".key", sdk_pending_ca["code"], n + "-good.pem")
    done = sdk_mgmt.certificates.verify(H.RG, H.HUB_NAME, n, sdk_pending_ca["etag"],
                                        CertificateVerificationDescription(certificate=good))
    assert done.properties.is_verified is True


def test_mgmt_other_resource_name_is_404(sdk_server, sdk_mgmt):
    mgmt_upload(sdk_server, sdk_mgmt, "arm-404")
    with pytest.raises(ResourceNotFoundError) as e:
        sdk_mgmt.certificates.get(H.RG, "otherhub", "arm-404")
    assert e.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as e:
        sdk_mgmt.certificates.list_by_iot_hub(H.RG, "otherhub")
    assert e.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, "arm-no-such-cert")


def test_mgmt_invalid_bearer_token_is_401(sdk_server):
    # The real token with its signature altered, and plain garbage.
    fields = dict(part.split("=", 1) for part in sdk_server.token[len("SharedAccessSignature "):].split("&"))
    fields["sig"] = "AAAA" + fields["sig"][4:] if not fields["sig"].startswith("AAAA") else "BBBB" + fields["sig"][4:]
    forged = "SharedAccessSignature " + "&".join(f"{k}={v}" for k, v in fields.items())
    for token in (forged, "not-a-token"):
        client = sdk_server.mgmt_client(token=token)
        with pytest.raises(ClientAuthenticationError) as e:
            client.certificates.list_by_iot_hub(H.RG, H.HUB_NAME)
        assert e.value.status_code == 401


def test_mgmt_replace_needs_the_current_etag_and_resets_verification(sdk_server, sdk_mgmt):
    name = "arm-replace"
    _, created = mgmt_upload(sdk_server, sdk_mgmt, name)
    coded = sdk_mgmt.certificates.generate_verification_code(H.RG, H.HUB_NAME, name, created.etag)
    pop = sdk_server.verification_cert(name + ".pem", name + ".key", coded.properties.verification_code, "arm-replace-v.pem")
    verified = sdk_mgmt.certificates.verify(H.RG, H.HUB_NAME, name, coded.etag, CertificateVerificationDescription(certificate=pop))
    assert verified.properties.is_verified is True
    new_pem = sdk_server.make_ca("arm-replace-2")
    body = CertificateDescription(properties=CertificateProperties(certificate=new_pem))
    # An existing name without If-Match is not silently overwritten; a stale If-Match is refused.
    with pytest.raises(HttpResponseError) as e:
        sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, name, body)
    assert e.value.status_code == 412
    with pytest.raises(HttpResponseError) as e:
        sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, name, body, if_match=created.etag)
    assert e.value.status_code == 412 and error_code(e.value) == "412001"
    replaced = sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, name, body, if_match=verified.etag)
    assert replaced.properties.thumbprint == H.sha1_thumbprint(new_pem)
    assert replaced.properties.is_verified is False          # new content: prove possession again
    assert replaced.etag != verified.etag


def test_mgmt_other_accepted_certificate_encodings(sdk_server, sdk_mgmt):
    from azure.mgmt.iothub.models import CertificateBodyDescription
    # The legacy 2017 model: the SDK sends {"certificate": ...} at top level.
    legacy_pem = sdk_server.make_ca("arm-legacy")
    legacy = sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, "arm-legacy", CertificateBodyDescription(certificate=legacy_pem))
    assert legacy.properties.thumbprint == H.sha1_thumbprint(legacy_pem)
    # Base64 of DER (what Azure CLI sends for a binary .cer), and PEM with CRLF line ends.
    der_pem = sdk_server.make_ca("arm-der")
    der_b64 = "".join(der_pem.split("-----")[2].split())
    der = sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, "arm-der",
                                                 CertificateDescription(properties=CertificateProperties(certificate=der_b64)))
    assert der.properties.thumbprint == H.sha1_thumbprint(der_pem)
    assert base64.b64decode(der_b64) == base64.b64decode("".join(der.properties.certificate.split("-----")[2].split()))
    crlf_pem = sdk_server.make_ca("arm-crlf")
    crlf = sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, "arm-crlf", CertificateDescription(
        properties=CertificateProperties(certificate=crlf_pem.replace("\n", "\r\n"))))
    assert crlf.properties.thumbprint == H.sha1_thumbprint(crlf_pem)


def test_mgmt_invalid_uploads_are_400(sdk_server, sdk_mgmt):
    pem = sdk_server.make_ca("arm-bad")
    sdk_server.cli("pki", "device", "arm-leaf", "--ca-cert", sdk_server.path("arm-bad.pem"),
                   "--ca-key", sdk_server.path("arm-bad.key"), "--out-dir", sdk_server.dir, "--force")
    leaf = H.first_certificate(sdk_server.read("arm-leaf.pem"))
    cases = {
        "bad name!": pem,                          # the SDK does not validate names; the hub must
        "x" * 65: pem,
        "arm-garbage": "hello, not a certificate",
        "arm-leaf": leaf,                          # not a CA (no basicConstraints CA:TRUE)
        "arm-chain": sdk_server.read("arm-leaf.pem"),   # two certificates
    }
    for name, text in cases.items():
        with pytest.raises(HttpResponseError) as e:
            sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, name,
                                                   CertificateDescription(properties=CertificateProperties(certificate=text)))
        assert e.value.status_code == 400, (name, e.value)
        assert error_code(e.value).startswith("400"), (name, e.value)
    # isVerified=true on upload (skipping proof of possession) is refused unless the operator allows it.
    with pytest.raises(HttpResponseError) as e:
        sdk_mgmt.certificates.create_or_update(H.RG, H.HUB_NAME, "arm-bad", CertificateDescription(
            properties=CertificateProperties(certificate=pem, is_verified=True)))
    assert e.value.status_code == 400
    listed = [c.name for c in sdk_mgmt.certificates.list_by_iot_hub(H.RG, H.HUB_NAME).value]
    assert not set(listed) & (set(cases) | {"arm-bad"})


def test_mgmt_policy_rights_and_expired_token(sdk_server):
    pem = sdk_server.make_ca("arm-rights")
    body = CertificateDescription(properties=CertificateProperties(certificate=pem))
    read_only = sdk_server.mgmt_client(token=sdk_server.cli("sas-token", "--policy", "registryRead").strip())
    read_only.certificates.list_by_iot_hub(H.RG, H.HUB_NAME)            # RegistryRead may list
    with pytest.raises(HttpResponseError) as e:
        read_only.certificates.create_or_update(H.RG, H.HUB_NAME, "arm-rights", body)
    assert e.value.status_code == 403
    short = sdk_server.cli("sas-token", "--ttl", "1").strip()
    time.sleep(2.1)
    with pytest.raises(ClientAuthenticationError) as e:
        sdk_server.mgmt_client(token=short).certificates.list_by_iot_hub(H.RG, H.HUB_NAME)
    assert e.value.status_code == 401


# ==== 2. azure-iot-hub: registry, twins, methods ================================================

def b64key():
    return base64.b64encode(os.urandom(32)).decode()


def test_registry_create_device_with_sas(sdk_registry):
    primary, secondary = b64key(), b64key()
    d = sdk_registry.create_device_with_sas("svc-sas", primary, secondary, "enabled")
    assert d.device_id == "svc-sas"
    assert d.status == "enabled"
    assert d.authentication.type == "sas"
    assert d.authentication.symmetric_key.primary_key == primary
    assert d.authentication.symmetric_key.secondary_key == secondary
    assert d.etag
    got = sdk_registry.get_device("svc-sas")
    assert got.device_id == "svc-sas" and got.etag == d.etag
    assert got.authentication.symmetric_key.primary_key == primary
    assert got.connection_state == "Disconnected"


def test_registry_create_device_with_x509_thumbprints(sdk_registry):
    sha1, sha256 = "A1" * 20, "B2" * 32
    d = sdk_registry.create_device_with_x509("svc-x509", sha1, sha256, "disabled")
    assert d.authentication.type == "selfSigned"
    assert d.authentication.x509_thumbprint.primary_thumbprint.upper() == sha1
    assert d.authentication.x509_thumbprint.secondary_thumbprint.upper() == sha256
    assert d.status == "disabled"
    got = sdk_registry.get_device("svc-x509")
    assert got.authentication.type == "selfSigned"
    assert got.authentication.x509_thumbprint.primary_thumbprint.upper() == sha1


def test_registry_create_device_with_certificate_authority(sdk_registry):
    d = sdk_registry.create_device_with_certificate_authority("svc-ca", "enabled")
    assert d.device_id == "svc-ca"
    assert d.authentication.type == "certificateAuthority"
    assert d.status == "enabled"
    assert sdk_registry.get_device("svc-ca").authentication.type == "certificateAuthority"


def test_registry_update_device_with_sas_etag(sdk_registry):
    created = sdk_registry.create_device_with_sas("svc-upd", b64key(), b64key(), "enabled")
    new_primary, new_secondary = b64key(), b64key()
    updated = sdk_registry.update_device_with_sas("svc-upd", created.etag, new_primary, new_secondary, "disabled")
    assert updated.status == "disabled"
    assert updated.authentication.symmetric_key.primary_key == new_primary
    assert updated.etag and updated.etag != created.etag
    with pytest.raises(HttpOperationError) as e:   # the etag it had before the update
        sdk_registry.update_device_with_sas("svc-upd", created.etag, b64key(), b64key(), "enabled")
    assert e.value.response.status_code == 412
    assert sdk_registry.get_device("svc-upd").status == "disabled"
    # etag None -> the SDK sends If-Match: "*" (quoted wildcard), which must match anything.
    again = sdk_registry.update_device_with_sas("svc-upd", None, new_primary, new_secondary, "enabled")
    assert again.status == "enabled"


def test_registry_delete_device_with_etag_and_without(sdk_registry):
    a = sdk_registry.create_device_with_certificate_authority("svc-del-a", "enabled")
    sdk_registry.create_device_with_certificate_authority("svc-del-b", "enabled")
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.delete_device("svc-del-a", "bm90LXRoZS1ldGFn")
    assert e.value.response.status_code == 412
    sdk_registry.delete_device("svc-del-a", a.etag)
    sdk_registry.delete_device("svc-del-b")          # etag None -> If-Match: "*"
    for device_id in ("svc-del-a", "svc-del-b"):
        with pytest.raises(HttpOperationError) as e:
            sdk_registry.get_device(device_id)
        assert e.value.response.status_code == 404


def test_registry_get_devices(sdk_registry):
    for i in range(3):
        sdk_registry.create_device_with_certificate_authority(f"svc-list-{i}", "enabled")
    ids = [d.device_id for d in sdk_registry.get_devices()]
    assert {"svc-list-0", "svc-list-1", "svc-list-2"} <= set(ids)
    assert len(sdk_registry.get_devices(max_number_of_devices=2)) == 2


def test_registry_get_missing_device_is_404(sdk_registry):
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.get_device("svc-no-such-device")
    assert e.value.response.status_code == 404
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.get_twin("svc-no-such-device")
    assert e.value.response.status_code == 404


def test_registry_twin_update_with_etag_and_stale_etag(sdk_registry):
    sdk_registry.create_device_with_certificate_authority("svc-twin", "enabled")
    twin = sdk_registry.get_twin("svc-twin")
    assert twin.device_id == "svc-twin"
    assert twin.etag
    assert twin.properties.desired["$version"] >= 1
    assert "$version" in twin.properties.reported
    v0 = twin.properties.desired["$version"]

    t1 = sdk_registry.update_twin("svc-twin", Twin(tags={"site": "lab"},
                                                   properties=TwinProperties(desired={"interval": 5, "mode": "eco"})),
                                  twin.etag)
    assert t1.tags == {"site": "lab"}
    assert t1.properties.desired["interval"] == 5 and t1.properties.desired["mode"] == "eco"
    assert t1.properties.desired["$version"] == v0 + 1
    assert t1.etag != twin.etag
    # PATCH merges: a second patch keeps the first one's keys, null removes one.
    t2 = sdk_registry.update_twin("svc-twin", Twin(properties=TwinProperties(desired={"interval": 7, "mode": None})),
                                  t1.etag)
    assert t2.properties.desired["interval"] == 7
    assert "mode" not in t2.properties.desired
    assert t2.tags == {"site": "lab"}
    with pytest.raises(HttpOperationError) as e:   # stale
        sdk_registry.update_twin("svc-twin", Twin(properties=TwinProperties(desired={"interval": 9})), twin.etag)
    assert e.value.response.status_code == 412
    assert sdk_registry.get_twin("svc-twin").properties.desired["interval"] == 7


def test_registry_replace_twin(sdk_registry):
    sdk_registry.create_device_with_certificate_authority("svc-replace", "enabled")
    twin = sdk_registry.get_twin("svc-replace")
    sdk_registry.update_twin("svc-replace", Twin(tags={"a": 1}, properties=TwinProperties(desired={"old": True})), twin.etag)
    replaced = sdk_registry.replace_twin("svc-replace", Twin(tags={"b": 2}, properties=TwinProperties(desired={"new": 1})))
    assert replaced.tags == {"b": 2}
    assert replaced.properties.desired["new"] == 1
    assert "old" not in replaced.properties.desired
    got = sdk_registry.get_twin("svc-replace")
    assert got.tags == {"b": 2} and "old" not in got.properties.desired and got.properties.desired["new"] == 1


def method_echo_handler(client, status=200):
    seen = []

    def on_method(request):
        seen.append(request)
        client.send_method_response(MethodResponse.create_from_method_request(
            request, status, {"echo": request.payload, "method": request.name}))

    client.on_method_request_received = on_method
    return seen


def test_invoke_device_method_round_trip(sdk_server, sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("svc-method", "enabled")
    client = sdk_devices("svc-method")
    seen = method_echo_handler(client)
    # Setting the handler returns after the SUBACK: the hub must route methods from then on.
    assert sdk_registry.get_device("svc-method").connection_state == "Connected"
    r = sdk_registry.invoke_device_method("svc-method", CloudToDeviceMethod(
        method_name="reboot", payload={"delay": 3, "why": "test"}, response_timeout_in_seconds=10))
    assert r.status == 200
    assert r.payload == {"echo": {"delay": 3, "why": "test"}, "method": "reboot"}
    assert len(seen) == 1 and seen[0].name == "reboot"
    # A second call with another status and a scalar payload.
    client.on_method_request_received = None
    method_echo_handler(client, status=418)
    r = sdk_registry.invoke_device_method("svc-method", CloudToDeviceMethod(
        method_name="brew", payload="tea", response_timeout_in_seconds=10))
    assert r.status == 418
    assert r.payload == {"echo": "tea", "method": "brew"}


def test_invoke_device_method_offline_device_is_404(sdk_registry):
    sdk_registry.create_device_with_certificate_authority("svc-offline", "enabled")
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.invoke_device_method("svc-offline", CloudToDeviceMethod(
            method_name="reboot", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404


def test_invoke_device_method_unanswered_is_504(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("svc-silent", "enabled")
    client = sdk_devices("svc-silent")
    seen = []
    client.on_method_request_received = seen.append     # receives, never answers
    started = time.time()
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.invoke_device_method("svc-silent", CloudToDeviceMethod(
            method_name="hang", payload={}, response_timeout_in_seconds=5))
    elapsed = time.time() - started
    assert e.value.response.status_code == 504
    assert 4.5 <= elapsed < 15, elapsed
    assert [r.name for r in seen] == ["hang"]


def test_self_signed_device_registered_by_thumbprint_connects(sdk_server, sdk_registry):
    # A certificate from a CA the hub does not trust: only the registered thumbprint admits it.
    sdk_server.make_ca("untrusted-ca")
    cert, key = sdk_server.device_cert("svc-selfsigned", "untrusted-ca")
    thumb = H.sha1_thumbprint(open(cert).read())
    sdk_registry.create_device_with_x509("svc-selfsigned", thumb, None, "enabled")
    client = sdk_server.device_client("svc-selfsigned", cert, key)
    try:
        client.connect()
        assert client.connected
        H.wait_for("the registry shows the device connected",
                   lambda: sdk_registry.get_device("svc-selfsigned").connection_state == "Connected", timeout=5)
    finally:
        client.shutdown()


def test_registry_create_existing_device_is_409_and_invalid_ids_are_400(sdk_registry):
    sdk_registry.create_device_with_certificate_authority("svc-dup", "enabled")
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.create_device_with_certificate_authority("svc-dup", "enabled")
    assert e.value.response.status_code == 409
    for bad in ("a/b", "x" * 129):
        with pytest.raises(HttpOperationError) as e:
            sdk_registry.create_device_with_certificate_authority(bad, "enabled")
        assert e.value.response.status_code == 400, bad
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.create_device_with_x509("svc-badthumb", "XYZ", None, "enabled")
    assert e.value.response.status_code == 400


def test_registry_device_ids_with_every_allowed_special_character(sdk_registry):
    device_id = "a-b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q"
    d = sdk_registry.create_device_with_certificate_authority(device_id, "enabled")
    assert d.device_id == device_id
    assert sdk_registry.get_device(device_id).device_id == device_id
    assert sdk_registry.get_twin(device_id).device_id == device_id
    sdk_registry.delete_device(device_id)
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.get_device(device_id)
    assert e.value.response.status_code == 404


def test_registry_update_changes_the_auth_type(sdk_registry):
    d = sdk_registry.create_device_with_certificate_authority("svc-switch", "enabled")
    x = sdk_registry.update_device_with_x509("svc-switch", d.etag, "CD" * 20, None, "enabled")
    assert x.authentication.type == "selfSigned"
    assert x.authentication.x509_thumbprint.primary_thumbprint.upper() == "CD" * 20
    back = sdk_registry.update_device_with_certificate_authority("svc-switch", x.etag, "enabled")
    assert back.authentication.type == "certificateAuthority"


def test_registry_get_devices_without_limit_returns_more_than_100(sdk_registry):
    wanted = {f"svc-many-{i:03d}" for i in range(105)}
    for device_id in sorted(wanted):
        sdk_registry.create_device_with_certificate_authority(device_id, "enabled")
    ids = {d.device_id for d in sdk_registry.get_devices()}
    assert wanted <= ids, f"{len(wanted - ids)} of the 105 new devices missing; {len(ids)} returned"


def test_registry_get_devices_top_zero_means_1000(sdk_registry):
    for i in range(3):
        sdk_registry.create_device_with_certificate_authority(f"svc-top0-{i}", "enabled")
    all_ids = {d.device_id for d in sdk_registry.get_devices(max_number_of_devices=1000)}
    assert len(all_ids) >= 3
    assert {d.device_id for d in sdk_registry.get_devices(max_number_of_devices=0)} == all_ids


def test_registry_policies_rights(sdk_server):
    from azure.iot.hub import IoTHubRegistryManager

    def manager(policy=None, connection_string=None):
        cs = connection_string or sdk_server.cli("connection-string", "--policy", policy).strip()
        rm = IoTHubRegistryManager.from_connection_string(cs)
        rm.protocol.config.connection.verify = sdk_server.ca_file
        return rm

    read_only = manager("registryRead")
    read_only.get_devices(max_number_of_devices=1)
    with pytest.raises(HttpOperationError) as e:
        read_only.create_device_with_certificate_authority("svc-ro", "enabled")
    assert e.value.response.status_code == 403
    read_write = manager("registryReadWrite")
    read_write.create_device_with_certificate_authority("svc-rw", "enabled")
    with pytest.raises(HttpOperationError) as e:     # direct methods need ServiceConnect
        read_write.invoke_device_method("svc-rw", CloudToDeviceMethod(method_name="x", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 403
    service = manager("service")
    with pytest.raises(HttpOperationError) as e:     # ServiceConnect passes; the device is offline
        service.invoke_device_method("svc-rw", CloudToDeviceMethod(method_name="x", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404
    with pytest.raises(HttpOperationError) as e:
        service.create_device_with_certificate_authority("svc-svc", "enabled")
    assert e.value.response.status_code == 403
    # A connection string with a wrong key: 401.
    wrong = sdk_server.connection_string().replace("SharedAccessKey=", "SharedAccessKey=AAAA")
    with pytest.raises(HttpOperationError) as e:
        manager(connection_string=wrong).get_device("svc-rw")
    assert e.value.response.status_code == 401


def test_registry_service_policy_reads_and_updates_twins(sdk_server, sdk_registry):
    from azure.iot.hub import IoTHubRegistryManager
    sdk_registry.create_device_with_certificate_authority("svc-twin-policy", "enabled")
    service = IoTHubRegistryManager.from_connection_string(sdk_server.cli("connection-string", "--policy", "service").strip())
    service.protocol.config.connection.verify = sdk_server.ca_file
    twin = service.get_twin("svc-twin-policy")
    updated = service.update_twin("svc-twin-policy", Twin(properties=TwinProperties(desired={"by": "service"})), twin.etag)
    assert updated.properties.desired["by"] == "service"


def test_invoke_device_method_concurrent_calls_are_matched(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("svc-concurrent", "enabled")
    client = sdk_devices("svc-concurrent")

    def on_method(request):
        time.sleep(request.payload["sleep"])      # answer in reverse order of arrival
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"i": request.payload["i"]}))

    client.on_method_request_received = on_method
    results = {}

    def call(i):
        try:
            r = sdk_registry.invoke_device_method("svc-concurrent", CloudToDeviceMethod(
                method_name="work", payload={"i": i, "sleep": 0.5 - 0.1 * i}, response_timeout_in_seconds=10))
            results[i] = (r.status, r.payload)
        except Exception as e:            # reported by the assertion below
            results[i] = repr(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {i: (200, {"i": i}) for i in range(5)}


def test_invoke_device_method_without_method_subscription_is_404(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("svc-nosub", "enabled")
    sdk_devices("svc-nosub")                   # connected, but no method handler (no SUBSCRIBE)
    with pytest.raises(HttpOperationError) as e:
        sdk_registry.invoke_device_method("svc-nosub", CloudToDeviceMethod(
            method_name="x", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404


def test_disabling_or_deleting_a_connected_device_drops_its_session(sdk_registry, sdk_devices):
    for device_id, action in (("svc-drop-disable", "disable"), ("svc-drop-delete", "delete")):
        d = sdk_registry.create_device_with_certificate_authority(device_id, "enabled")
        client = sdk_devices(device_id)
        method_echo_handler(client)
        assert sdk_registry.get_device(device_id).connection_state == "Connected"
        if action == "disable":
            sdk_registry.update_device_with_certificate_authority(device_id, d.etag, "disabled")
        else:
            sdk_registry.delete_device(device_id, d.etag)
        H.wait_for(f"the session of {device_id} closes", lambda: not client.connected, timeout=5)
        with pytest.raises(HttpOperationError) as e:
            sdk_registry.invoke_device_method(device_id, CloudToDeviceMethod(
                method_name="x", payload={}, response_timeout_in_seconds=5))
        assert e.value.response.status_code == 404
        if action == "disable":
            assert sdk_registry.get_device(device_id).connection_state == "Disconnected"


# ==== 3. azure-iot-device: twins ===============================================================

def test_device_get_twin_has_versions(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("dev-twin-get", "enabled")
    twin = sdk_registry.get_twin("dev-twin-get")
    sdk_registry.update_twin("dev-twin-get", Twin(properties=TwinProperties(desired={"color": "red"})), twin.etag)
    client = sdk_devices("dev-twin-get")
    t = client.get_twin()
    assert set(t) >= {"desired", "reported"}
    assert isinstance(t["desired"]["$version"], int) and isinstance(t["reported"]["$version"], int)
    assert t["desired"]["color"] == "red"
    assert t["desired"]["$version"] == sdk_registry.get_twin("dev-twin-get").properties.desired["$version"]


def test_device_reported_patch_is_seen_by_the_service(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("dev-reported", "enabled")
    client = sdk_devices("dev-reported")
    before = client.get_twin()["reported"]["$version"]
    client.patch_twin_reported_properties({"firmware": "1.2.3", "battery": {"level": 87}})
    service = sdk_registry.get_twin("dev-reported")
    assert service.properties.reported["firmware"] == "1.2.3"
    assert service.properties.reported["battery"] == {"level": 87}
    assert service.properties.reported["$version"] == before + 1
    after = client.get_twin()["reported"]
    assert after["firmware"] == "1.2.3" and after["$version"] == before + 1


def test_device_receives_desired_patch(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("dev-desired", "enabled")
    client = sdk_devices("dev-desired")
    patches = []
    arrived = threading.Event()

    def on_patch(patch):
        patches.append(patch)
        if "setpoint" in patch:
            arrived.set()

    client.on_twin_desired_properties_patch_received = on_patch   # returns after the SUBACK
    twin = sdk_registry.get_twin("dev-desired")
    updated = sdk_registry.update_twin("dev-desired", Twin(properties=TwinProperties(desired={"setpoint": 21.5})), twin.etag)
    assert arrived.wait(5), f"no desired patch within 5 s (got {patches})"
    patch = next(p for p in patches if "setpoint" in p)
    assert patch["setpoint"] == 21.5
    assert patch["$version"] == updated.properties.desired["$version"]


def test_device_sees_desired_set_while_offline_after_reconnect(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("dev-offline-twin", "enabled")
    client = sdk_devices("dev-offline-twin")
    assert "offline_value" not in client.get_twin()["desired"]
    client.disconnect()
    H.wait_for("the registry shows the device disconnected",
               lambda: sdk_registry.get_device("dev-offline-twin").connection_state == "Disconnected", timeout=5)
    twin = sdk_registry.get_twin("dev-offline-twin")
    updated = sdk_registry.update_twin("dev-offline-twin",
                                       Twin(properties=TwinProperties(desired={"offline_value": 42})), twin.etag)
    client.connect()
    t = client.get_twin()
    assert t["desired"]["offline_value"] == 42
    assert t["desired"]["$version"] == updated.properties.desired["$version"]


def test_device_reported_null_removes_and_refused_patch_raises(sdk_registry, sdk_devices):
    from azure.iot.device.exceptions import ClientError, ServiceError
    sdk_registry.create_device_with_certificate_authority("dev-reported-edit", "enabled")
    client = sdk_devices("dev-reported-edit")
    client.patch_twin_reported_properties({"a": 1, "b": {"c": 2, "keep": True}})
    client.patch_twin_reported_properties({"a": None, "b": {"c": None, "d": 3}})
    reported = sdk_registry.get_twin("dev-reported-edit").properties.reported
    assert "a" not in reported and reported["b"] == {"keep": True, "d": 3}
    version = reported["$version"]
    # Deeper than 10 levels: the hub answers the twin PATCH with status 400; the SDK raises
    # ClientError whose cause is ServiceError, and nothing changes.
    deep = {"l0": {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"l9": {"l10": 1}}}}}}}}}}}
    with pytest.raises(ClientError) as e:
        client.patch_twin_reported_properties(deep)
    assert isinstance(e.value.__cause__, ServiceError) and "400" in str(e.value.__cause__)
    assert sdk_registry.get_twin("dev-reported-edit").properties.reported["$version"] == version
    assert client.connected


def test_device_desired_patches_arrive_in_order_and_replace_is_delivered(sdk_registry, sdk_devices):
    sdk_registry.create_device_with_certificate_authority("dev-desired-seq", "enabled")
    client = sdk_devices("dev-desired-seq")
    patches = []
    client.on_twin_desired_properties_patch_received = patches.append   # returns after the SUBACK
    twin = sdk_registry.get_twin("dev-desired-seq")
    base = twin.properties.desired["$version"]

    def fresh():   # (an SDK may replay the full document it fetched on subscribing: not a patch)
        return [p for p in patches if p["$version"] > base]

    sdk_registry.update_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"n": 0, "gone": 1})), twin.etag)
    for i in range(1, 4):
        sdk_registry.update_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"n": i, "gone": None})))
    H.wait_for("4 desired patches", lambda: len(fresh()) >= 4, timeout=5)
    got = fresh()
    assert [p["$version"] for p in got] == [base + 1, base + 2, base + 3, base + 4]
    assert [p["n"] for p in got] == [0, 1, 2, 3]
    assert got[0]["gone"] == 1 and all(p["gone"] is None for p in got[1:])
    # Tags are not the device's business: no notification.
    sdk_registry.update_twin("dev-desired-seq", Twin(tags={"t": 1}))
    # replace_twin sends the whole new desired document.
    sdk_registry.replace_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"only": 1})))
    H.wait_for("the replacement", lambda: len(fresh()) >= 5, timeout=5)
    got = fresh()
    assert len(got) == 5, got
    assert {k: v for k, v in got[4].items() if k != "$version"} == {"only": 1}
    assert got[4]["$version"] == base + 5
    assert client.get_twin()["desired"] == {"only": 1, "$version": base + 5}


# ==== 4. azure-mgmt-iothubprovisioningservices: DPS certificates ================================

def dps_upload(hub, dps, name):
    pem = hub.make_ca(name)
    body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=pem.encode()))
    return pem, dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, name, body)


def test_dps_certificate_lifecycle(sdk_server, sdk_dps, sdk_mgmt):
    name = "dps-root"
    pem, created = dps_upload(sdk_server, sdk_dps, name)    # PEM bytes: base64(PEM) on the wire
    assert created.name == name
    assert created.etag
    assert created.properties.is_verified is False
    assert created.properties.thumbprint == H.sha1_thumbprint(pem)
    assert isinstance(created.properties.expiry, datetime.datetime)

    got = sdk_dps.dps_certificate.get(name, H.RG, H.HUB_NAME)
    assert got.name == name and got.etag == created.etag
    assert got.properties.thumbprint == created.properties.thumbprint
    listed = sdk_dps.dps_certificate.list(H.RG, H.HUB_NAME)
    assert name in [c.name for c in listed.value]

    coded = sdk_dps.dps_certificate.generate_verification_code(
        name, H.RG, H.HUB_NAME, etag=got.etag, match_condition=MatchConditions.IfNotModified)
    code = coded.properties.verification_code
    assert HEX48.match(code), code
    assert coded.etag and coded.etag != got.etag

    pop = sdk_server.verification_cert(name + ".pem", name + ".key", code, "dps-verif.pem")
    # Stale etag (the one from before the code): 412, which this SDK maps to ResourceModifiedError.
    with pytest.raises(ResourceModifiedError) as e:
        sdk_dps.dps_certificate.verify_certificate(
            name, H.RG, H.HUB_NAME, dps_models.VerificationCodeRequest(certificate=pop),
            etag=got.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    done = sdk_dps.dps_certificate.verify_certificate(
        name, H.RG, H.HUB_NAME, dps_models.VerificationCodeRequest(certificate=pop),
        etag=coded.etag, match_condition=MatchConditions.IfNotModified)
    assert done.properties.is_verified is True
    assert done.etag not in (got.etag, coded.etag)
    # One registry: the IoT Hub ARM view sees the DPS-verified CA.
    assert sdk_mgmt.certificates.get(H.RG, H.HUB_NAME, name).properties.is_verified is True

    with pytest.raises(ResourceModifiedError) as e:
        sdk_dps.dps_certificate.delete(H.RG, H.HUB_NAME, name, etag=coded.etag,
                                       match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    sdk_dps.dps_certificate.delete(H.RG, H.HUB_NAME, name, etag=done.etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceNotFoundError):
        sdk_dps.dps_certificate.get(name, H.RG, H.HUB_NAME)
    assert name not in [c.name for c in sdk_dps.dps_certificate.list(H.RG, H.HUB_NAME).value]


def test_dps_certificate_as_plain_dict_and_other_resource_404(sdk_server, sdk_dps):
    pem = sdk_server.make_ca("dps-dict")
    # A dict carrying the PEM text: the SDK sends the text verbatim.
    created = sdk_dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, "dps-dict", {"properties": {"certificate": pem}})
    assert created.properties.thumbprint == H.sha1_thumbprint(pem)
    assert created.properties.is_verified is False
    with pytest.raises(ResourceNotFoundError) as e:
        sdk_dps.dps_certificate.get("dps-dict", H.RG, "otherhub")
    assert e.value.status_code == 404


def test_dps_certificate_bytes_round_trip(sdk_server, sdk_dps):
    pem = sdk_server.make_ca("dps-bytes")
    der = base64.b64decode("".join(pem.split("-----")[2].split()))
    created = sdk_dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, "dps-bytes", dps_models.CertificateResponse(
        properties=dps_models.CertificateProperties(certificate=pem.encode())))
    assert created.properties.certificate in (pem.encode(), der)


def test_dps_replace_with_etag_delete_missing_and_bad_token(sdk_server, sdk_dps):
    pem = sdk_server.make_ca("dps-replace")
    body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=pem.encode()))
    created = sdk_dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, "dps-replace", body)
    new_pem = sdk_server.make_ca("dps-replace-2")
    new_body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=new_pem.encode()))
    replaced = sdk_dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, "dps-replace", new_body,
                                                        etag=created.etag, match_condition=MatchConditions.IfNotModified)
    assert replaced.properties.thumbprint == H.sha1_thumbprint(new_pem)
    assert replaced.etag != created.etag
    with pytest.raises(ResourceModifiedError) as e:
        sdk_dps.dps_certificate.create_or_update(H.RG, H.HUB_NAME, "dps-replace", body,
                                                 etag=created.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    sdk_dps.dps_certificate.delete(H.RG, H.HUB_NAME, "dps-never-existed", etag="*", match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ClientAuthenticationError) as e:
        sdk_server.dps_client(token="SharedAccessSignature sr=x&sig=AAAA&se=1&skn=iothubowner").dps_certificate.list(H.RG, H.HUB_NAME)
    assert e.value.status_code == 401
