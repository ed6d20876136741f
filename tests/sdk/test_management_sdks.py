"""The OFFICIAL, unmodified Azure management SDKs against a real running iothub (conftest.py):

1. azure-mgmt-iothub 4.0.0 -- CA certificates over ARM (create, list, get, verification code,
   proof of possession, replace, delete) with etags and IoT Hub error codes; the hub's shared
   access policies and their keys (list_keys, get_keys_for_key_name, before and after a rotation);
   tokens and rights;
2. azure-mgmt-iothubprovisioningservices 2.1.0 -- the same certificate registry through DPS routes.

The credential both SDKs get is a hub policy SAS token (conftest.SasCredential); every call below
goes over the wire. Run: python -m pytest tests/sdk/test_management_sdks.py -q
"""
import base64
import datetime
import os
import re
import time

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceModifiedError,
                                   ResourceNotFoundError)
from azure.mgmt.iothub.models import CertificateDescription, CertificateProperties, CertificateVerificationDescription
from azure.mgmt.iothubprovisioningservices import models as dps_models

from conftest import HUB_NAME, RG, error_code, first_certificate, sha1_thumbprint

HEX40 = re.compile(r"^[0-9A-F]{40}$")
HEX48 = re.compile(r"^[0-9A-F]{48}$")


# ==== 1. azure-mgmt-iothub: CA certificates and policy keys ======================================

def mgmt_upload(hub, client, name, out_dir="."):
    pem = hub.make_ca(name, out_dir=out_dir)
    created = client.certificates.create_or_update(
        RG, HUB_NAME, name, CertificateDescription(properties=CertificateProperties(certificate=pem)))
    return pem, created


def test_mgmt_create_or_update_new_certificate_is_unverified(hub, mgmt):
    pem, created = mgmt_upload(hub, mgmt, "arm-new")
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
    assert props.thumbprint == sha1_thumbprint(pem)
    assert "arm-new" in props.subject


def test_mgmt_list_and_get(hub, mgmt):
    _, created = mgmt_upload(hub, mgmt, "arm-listed")
    listed = mgmt.certificates.list_by_iot_hub(RG, HUB_NAME)
    by_name = {c.name: c for c in listed.value}
    assert "arm-listed" in by_name
    assert by_name["arm-listed"].etag == created.etag
    assert by_name["arm-listed"].properties.thumbprint == created.properties.thumbprint
    got = mgmt.certificates.get(RG, HUB_NAME, "arm-listed")
    assert got.name == "arm-listed"
    assert got.etag == created.etag
    assert got.properties.thumbprint == created.properties.thumbprint
    assert got.properties.is_verified is False
    assert got.properties.expiry == created.properties.expiry


def test_mgmt_proof_of_possession_and_delete(hub, mgmt):
    name = "arm-pop"
    _, created = mgmt_upload(hub, mgmt, name)
    coded = mgmt.certificates.generate_verification_code(RG, HUB_NAME, name, created.etag)
    code = coded.properties.verification_code
    assert HEX48.match(code), code
    assert coded.etag and coded.etag != created.etag
    assert coded.properties.is_verified is False
    assert coded.properties.thumbprint == created.properties.thumbprint

    pop = hub.verification_cert(name + ".pem", name + ".key", code, "arm-pop-verif.pem")
    verified = mgmt.certificates.verify(RG, HUB_NAME, name, coded.etag,
                                            CertificateVerificationDescription(certificate=pop))
    assert verified.properties.is_verified is True
    assert verified.etag and verified.etag not in (created.etag, coded.etag)
    got = mgmt.certificates.get(RG, HUB_NAME, name)
    assert got.properties.is_verified is True and got.etag == verified.etag
    # The hub's own view agrees.
    assert hub.json("cert", "show", name)["properties"]["isVerified"] is True

    # Delete with a stale etag is refused; with the current one it goes.
    with pytest.raises(HttpResponseError) as stale:
        mgmt.certificates.delete(RG, HUB_NAME, name, created.etag)
    assert stale.value.status_code == 412
    mgmt.certificates.delete(RG, HUB_NAME, name, verified.etag)
    with pytest.raises(ResourceNotFoundError) as gone:
        mgmt.certificates.get(RG, HUB_NAME, name)
    assert gone.value.status_code == 404
    assert name not in [c.name for c in mgmt.certificates.list_by_iot_hub(RG, HUB_NAME).value]
    # Deleting a certificate that does not exist is a no-op (SDK docstring), not an error.
    mgmt.certificates.delete(RG, HUB_NAME, name, verified.etag)
    mgmt.certificates.delete(RG, HUB_NAME, "arm-never-existed", "*")


@pytest.fixture
def pending_ca(hub, mgmt, request):
    """A fresh CA with a live verification code (never verified), and the files to attack it with:
    another CA `<name>-other`, and `wrongkey/<name>` (the same subject, another key)."""
    name = "arm-err-" + request.node.name.rsplit("_", 1)[-1]
    _, created = mgmt_upload(hub, mgmt, name)
    hub.make_ca(name + "-other")
    hub.make_ca(name, out_dir="wrongkey")
    coded = mgmt.certificates.generate_verification_code(RG, HUB_NAME, name, created.etag)
    return {"name": name, "old_etag": created.etag, "etag": coded.etag, "code": coded.properties.verification_code}


def mgmt_verify_error(client, ca, etag, pem):
    with pytest.raises(HttpResponseError) as e:
        client.certificates.verify(RG, HUB_NAME, ca["name"], etag, CertificateVerificationDescription(certificate=pem))
    return e.value


def test_mgmt_verify_with_stale_etag_is_412001(hub, mgmt, pending_ca):
    n = pending_ca["name"]
    good = hub.verification_cert(n + ".pem", n + ".key", pending_ca["code"], n + "-good.pem")
    e = mgmt_verify_error(mgmt, pending_ca, pending_ca["old_etag"], good)
    assert e.status_code == 412
    assert error_code(e) == "412001", e
    assert mgmt.certificates.get(RG, HUB_NAME, n).properties.is_verified is False


def test_mgmt_verify_with_certificate_of_another_ca_is_400053(hub, mgmt, pending_ca):
    n = pending_ca["name"]
    other = hub.verification_cert(n + "-other.pem", n + "-other.key", pending_ca["code"], n + "-o.pem")
    e = mgmt_verify_error(mgmt, pending_ca, pending_ca["etag"], other)
    assert e.status_code == 400
    assert error_code(e) == "400053", e


def test_mgmt_verify_signed_with_wrong_key_same_subject_is_400054(hub, mgmt, pending_ca):
    n = pending_ca["name"]
    forged = hub.verification_cert(f"wrongkey/{n}.pem", f"wrongkey/{n}.key", pending_ca["code"], n + "-f.pem")
    e = mgmt_verify_error(mgmt, pending_ca, pending_ca["etag"], forged)
    assert e.status_code == 400
    assert error_code(e) == "400054", e


def test_mgmt_verify_with_wrong_code_cn_is_400055(hub, mgmt, pending_ca):
    wrong_code = "0" * 48 if pending_ca["code"] != "0" * 48 else "1" * 48
    n = pending_ca["name"]
    mismatched = hub.verification_cert(n + ".pem", n + ".key", wrong_code, n + "-cn.pem")
    e = mgmt_verify_error(mgmt, pending_ca, pending_ca["etag"], mismatched)
    assert e.status_code == 400
    assert error_code(e) == "400055", e
    # The failed attempt neither verified it nor consumed the code: the right certificate still works.
    good = hub.verification_cert(n + ".pem", n + ".key", pending_ca["code"], n + "-good.pem")
    done = mgmt.certificates.verify(RG, HUB_NAME, n, pending_ca["etag"],
                                        CertificateVerificationDescription(certificate=good))
    assert done.properties.is_verified is True


def test_mgmt_other_resource_name_is_404(hub, mgmt):
    mgmt_upload(hub, mgmt, "arm-404")
    with pytest.raises(ResourceNotFoundError) as e:
        mgmt.certificates.get(RG, "otherhub", "arm-404")
    assert e.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as e:
        mgmt.certificates.list_by_iot_hub(RG, "otherhub")
    assert e.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        mgmt.certificates.get(RG, HUB_NAME, "arm-no-such-cert")


def test_mgmt_invalid_bearer_token_is_401(hub):
    # The real token with its signature altered, and plain garbage.
    fields = dict(part.split("=", 1) for part in hub.token[len("SharedAccessSignature "):].split("&"))
    fields["sig"] = "AAAA" + fields["sig"][4:] if not fields["sig"].startswith("AAAA") else "BBBB" + fields["sig"][4:]
    forged = "SharedAccessSignature " + "&".join(f"{k}={v}" for k, v in fields.items())
    for token in (forged, "not-a-token"):
        client = hub.mgmt_client(token=token)
        with pytest.raises(ClientAuthenticationError) as e:
            client.certificates.list_by_iot_hub(RG, HUB_NAME)
        assert e.value.status_code == 401


def test_mgmt_replace_needs_the_current_etag_and_resets_verification(hub, mgmt):
    name = "arm-replace"
    _, created = mgmt_upload(hub, mgmt, name)
    coded = mgmt.certificates.generate_verification_code(RG, HUB_NAME, name, created.etag)
    pop = hub.verification_cert(name + ".pem", name + ".key", coded.properties.verification_code, "arm-replace-v.pem")
    verified = mgmt.certificates.verify(RG, HUB_NAME, name, coded.etag, CertificateVerificationDescription(certificate=pop))
    assert verified.properties.is_verified is True
    new_pem = hub.make_ca("arm-replace-2")
    body = CertificateDescription(properties=CertificateProperties(certificate=new_pem))
    # An existing name without If-Match is not silently overwritten; a stale If-Match is refused.
    with pytest.raises(HttpResponseError) as e:
        mgmt.certificates.create_or_update(RG, HUB_NAME, name, body)
    assert e.value.status_code == 412
    with pytest.raises(HttpResponseError) as e:
        mgmt.certificates.create_or_update(RG, HUB_NAME, name, body, if_match=created.etag)
    assert e.value.status_code == 412 and error_code(e.value) == "412001"
    replaced = mgmt.certificates.create_or_update(RG, HUB_NAME, name, body, if_match=verified.etag)
    assert replaced.properties.thumbprint == sha1_thumbprint(new_pem)
    assert replaced.properties.is_verified is False          # new content: prove possession again
    assert replaced.etag != verified.etag


def test_mgmt_other_accepted_certificate_encodings(hub, mgmt):
    from azure.mgmt.iothub.models import CertificateBodyDescription
    # The legacy 2017 model: the SDK sends {"certificate": ...} at top level.
    legacy_pem = hub.make_ca("arm-legacy")
    legacy = mgmt.certificates.create_or_update(RG, HUB_NAME, "arm-legacy", CertificateBodyDescription(certificate=legacy_pem))
    assert legacy.properties.thumbprint == sha1_thumbprint(legacy_pem)
    # Base64 of DER (what Azure CLI sends for a binary .cer), and PEM with CRLF line ends.
    der_pem = hub.make_ca("arm-der")
    der_b64 = "".join(der_pem.split("-----")[2].split())
    der = mgmt.certificates.create_or_update(RG, HUB_NAME, "arm-der",
                                                 CertificateDescription(properties=CertificateProperties(certificate=der_b64)))
    assert der.properties.thumbprint == sha1_thumbprint(der_pem)
    assert base64.b64decode(der_b64) == base64.b64decode("".join(der.properties.certificate.split("-----")[2].split()))
    crlf_pem = hub.make_ca("arm-crlf")
    crlf = mgmt.certificates.create_or_update(RG, HUB_NAME, "arm-crlf", CertificateDescription(
        properties=CertificateProperties(certificate=crlf_pem.replace("\n", "\r\n"))))
    assert crlf.properties.thumbprint == sha1_thumbprint(crlf_pem)


def test_mgmt_invalid_uploads_are_400(hub, mgmt):
    pem = hub.make_ca("arm-bad")
    hub.cli("pki", "device", "arm-leaf", "--ca-cert", hub.path("arm-bad.pem"),
                   "--ca-key", hub.path("arm-bad.key"), "--out-dir", hub.dir, "--force")
    leaf = first_certificate(hub.read("arm-leaf.pem"))
    cases = {
        "bad name!": pem,                          # the SDK does not validate names; the hub must
        "x" * 65: pem,
        "arm-garbage": "hello, not a certificate",
        "arm-leaf": leaf,                          # not a CA (no basicConstraints CA:TRUE)
        "arm-chain": hub.read("arm-leaf.pem"),   # two certificates
    }
    for name, text in cases.items():
        with pytest.raises(HttpResponseError) as e:
            mgmt.certificates.create_or_update(RG, HUB_NAME, name,
                                                   CertificateDescription(properties=CertificateProperties(certificate=text)))
        assert e.value.status_code == 400, (name, e.value)
        assert error_code(e.value).startswith("400"), (name, e.value)
    # isVerified=true on upload (skipping proof of possession) is refused unless the operator allows it.
    with pytest.raises(HttpResponseError) as e:
        mgmt.certificates.create_or_update(RG, HUB_NAME, "arm-bad", CertificateDescription(
            properties=CertificateProperties(certificate=pem, is_verified=True)))
    assert e.value.status_code == 400
    listed = [c.name for c in mgmt.certificates.list_by_iot_hub(RG, HUB_NAME).value]
    assert not set(listed) & (set(cases) | {"arm-bad"})


def test_mgmt_policy_rights_and_expired_token(hub):
    pem = hub.make_ca("arm-rights")
    body = CertificateDescription(properties=CertificateProperties(certificate=pem))
    read_only = hub.mgmt_client(token=hub.cli("sas-token", "--policy", "registryRead").strip())
    read_only.certificates.list_by_iot_hub(RG, HUB_NAME)            # RegistryRead may list
    with pytest.raises(HttpResponseError) as e:
        read_only.certificates.create_or_update(RG, HUB_NAME, "arm-rights", body)
    assert e.value.status_code == 403
    short = hub.cli("sas-token", "--ttl", "1").strip()
    time.sleep(2.1)
    with pytest.raises(ClientAuthenticationError) as e:
        hub.mgmt_client(token=short).certificates.list_by_iot_hub(RG, HUB_NAME)
    assert e.value.status_code == 401


def test_mgmt_certificate_lifecycle(hub):
    hub.cli("pki", "ca", "arm-root", "--force")
    client = hub.mgmt_client()
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
                                      CertificateVerificationDescription(certificate=hub.verification_cert("arm-root.pem", "arm-root.key", code, "pop.pem")))
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
    client = hub.mgmt_client()
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
    reader = hub.mgmt_client(token=hub.cli("sas-token", "--policy", "mgmt-reader").strip())
    with pytest.raises(HttpResponseError) as e:
        list(reader.iot_hub_resource.list_keys("rg", "iothub"))
    assert e.value.status_code == 403 and error_code(e.value) == "403001", e.value
    hub.cli("policy", "delete", "mgmt-reader")


def test_mgmt_error_paths(hub):
    hub.cli("pki", "ca", "arm-err", "--force")
    hub.cli("pki", "ca", "arm-other", "--force")
    os.makedirs(hub.path("fake"), exist_ok=True)
    hub.cli("pki", "ca", "arm-err", "--out-dir", "fake", "--force")   # same subject, another key
    client = hub.mgmt_client()
    c = client.certificates.create_or_update("rg", "iothub", "arm-err", CertificateDescription(properties=CertificateProperties(certificate=open(hub.path("arm-err.pem")).read())))
    coded = client.certificates.generate_verification_code("rg", "iothub", "arm-err", c.etag)
    code = coded.properties.verification_code
    good = hub.verification_cert("arm-err.pem", "arm-err.key", code, "pop.pem")
    cases = [
        (c.etag, good, 412, "412001"),                                        # stale etag
        (coded.etag, hub.verification_cert("arm-other.pem", "arm-other.key", code, "o.pem"), 400, "400053"),   # another CA
        (coded.etag, hub.verification_cert("fake/arm-err.pem", "fake/arm-err.key", code, "w.pem"), 400, "400054"),  # wrong key
        (coded.etag, hub.verification_cert("arm-err.pem", "arm-err.key", "A" * 48, "cn.pem"), 400, "400055"),   # CN mismatch
    ]
    for etag, pem, status, code_expected in cases:
        with pytest.raises(HttpResponseError) as e:
            client.certificates.verify("rg", "iothub", "arm-err", etag, CertificateVerificationDescription(certificate=pem))
        assert e.value.status_code == status, (code_expected, e.value)
        assert error_code(e.value) == code_expected, e.value
    with pytest.raises(ResourceNotFoundError):
        client.certificates.get("rg", "otherhub", "arm-err")
    with pytest.raises(ClientAuthenticationError):
        hub.mgmt_client(token="SharedAccessSignature sr=x&sig=AA%3D%3D&se=1&skn=iothubowner").certificates.list_by_iot_hub("rg", "iothub")


# ==== 2. azure-mgmt-iothubprovisioningservices: DPS certificates ================================

def dps_upload(hub, dps, name):
    pem = hub.make_ca(name)
    body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=pem.encode()))
    return pem, dps.dps_certificate.create_or_update(RG, HUB_NAME, name, body)


def test_dps_certificate_lifecycle(hub, dps, mgmt):
    name = "dps-root"
    pem, created = dps_upload(hub, dps, name)    # PEM bytes: base64(PEM) on the wire
    assert created.name == name
    assert created.etag
    assert created.properties.is_verified is False
    assert created.properties.thumbprint == sha1_thumbprint(pem)
    assert isinstance(created.properties.expiry, datetime.datetime)

    got = dps.dps_certificate.get(name, RG, HUB_NAME)
    assert got.name == name and got.etag == created.etag
    assert got.properties.thumbprint == created.properties.thumbprint
    listed = dps.dps_certificate.list(RG, HUB_NAME)
    assert name in [c.name for c in listed.value]

    coded = dps.dps_certificate.generate_verification_code(
        name, RG, HUB_NAME, etag=got.etag, match_condition=MatchConditions.IfNotModified)
    code = coded.properties.verification_code
    assert HEX48.match(code), code
    assert coded.etag and coded.etag != got.etag

    pop = hub.verification_cert(name + ".pem", name + ".key", code, "dps-verif.pem")
    # Stale etag (the one from before the code): 412, which this SDK maps to ResourceModifiedError.
    with pytest.raises(ResourceModifiedError) as e:
        dps.dps_certificate.verify_certificate(
            name, RG, HUB_NAME, dps_models.VerificationCodeRequest(certificate=pop),
            etag=got.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    done = dps.dps_certificate.verify_certificate(
        name, RG, HUB_NAME, dps_models.VerificationCodeRequest(certificate=pop),
        etag=coded.etag, match_condition=MatchConditions.IfNotModified)
    assert done.properties.is_verified is True
    assert done.etag not in (got.etag, coded.etag)
    # One registry: the IoT Hub ARM view sees the DPS-verified CA.
    assert mgmt.certificates.get(RG, HUB_NAME, name).properties.is_verified is True

    with pytest.raises(ResourceModifiedError) as e:
        dps.dps_certificate.delete(RG, HUB_NAME, name, etag=coded.etag,
                                       match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    dps.dps_certificate.delete(RG, HUB_NAME, name, etag=done.etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceNotFoundError):
        dps.dps_certificate.get(name, RG, HUB_NAME)
    assert name not in [c.name for c in dps.dps_certificate.list(RG, HUB_NAME).value]


def test_dps_certificate_as_plain_dict_and_other_resource_404(hub, dps):
    pem = hub.make_ca("dps-dict")
    # A dict carrying the PEM text: the SDK sends the text verbatim.
    created = dps.dps_certificate.create_or_update(RG, HUB_NAME, "dps-dict", {"properties": {"certificate": pem}})
    assert created.properties.thumbprint == sha1_thumbprint(pem)
    assert created.properties.is_verified is False
    with pytest.raises(ResourceNotFoundError) as e:
        dps.dps_certificate.get("dps-dict", RG, "otherhub")
    assert e.value.status_code == 404


def test_dps_certificate_bytes_round_trip(hub, dps):
    pem = hub.make_ca("dps-bytes")
    der = base64.b64decode("".join(pem.split("-----")[2].split()))
    created = dps.dps_certificate.create_or_update(RG, HUB_NAME, "dps-bytes", dps_models.CertificateResponse(
        properties=dps_models.CertificateProperties(certificate=pem.encode())))
    assert created.properties.certificate in (pem.encode(), der)


def test_dps_replace_with_etag_delete_missing_and_bad_token(hub, dps):
    pem = hub.make_ca("dps-replace")
    body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=pem.encode()))
    created = dps.dps_certificate.create_or_update(RG, HUB_NAME, "dps-replace", body)
    new_pem = hub.make_ca("dps-replace-2")
    new_body = dps_models.CertificateResponse(properties=dps_models.CertificateProperties(certificate=new_pem.encode()))
    replaced = dps.dps_certificate.create_or_update(RG, HUB_NAME, "dps-replace", new_body,
                                                        etag=created.etag, match_condition=MatchConditions.IfNotModified)
    assert replaced.properties.thumbprint == sha1_thumbprint(new_pem)
    assert replaced.etag != created.etag
    with pytest.raises(ResourceModifiedError) as e:
        dps.dps_certificate.create_or_update(RG, HUB_NAME, "dps-replace", body,
                                                 etag=created.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    dps.dps_certificate.delete(RG, HUB_NAME, "dps-never-existed", etag="*", match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ClientAuthenticationError) as e:
        hub.dps_client(token="SharedAccessSignature sr=x&sig=AAAA&se=1&skn=iothubowner").dps_certificate.list(RG, HUB_NAME)
    assert e.value.status_code == 401


def test_dps_certificate_operations_use_the_same_registry(hub):
    # "dps-shared-root", not "dps-root": test_dps_certificate_lifecycle above uses that name on the
    # same hub, and each test must start from a registry without its certificate.
    hub.cli("pki", "ca", "dps-shared-root", "--force")
    dps = hub.dps_client()
    pem = open(hub.path("dps-shared-root.pem"), "rb").read()
    created = dps.dps_certificate.create_or_update("rg", "iothub", "dps-shared-root", {"properties": {"certificate": pem}})
    assert created.properties.is_verified is False
    assert "dps-shared-root" in [c.name for c in dps.dps_certificate.list("rg", "iothub").value]
    got = dps.dps_certificate.get("dps-shared-root", "rg", "iothub")
    coded = dps.dps_certificate.generate_verification_code("dps-shared-root", "rg", "iothub", etag=got.etag, match_condition=MatchConditions.IfNotModified)
    code = coded.properties.verification_code
    with pytest.raises(HttpResponseError) as e:
        dps.dps_certificate.verify_certificate("dps-shared-root", "rg", "iothub", {"certificate": hub.verification_cert("dps-shared-root.pem", "dps-shared-root.key", code, "pop.pem")},
                                               etag=got.etag, match_condition=MatchConditions.IfNotModified)
    assert e.value.status_code == 412
    done = dps.dps_certificate.verify_certificate("dps-shared-root", "rg", "iothub", {"certificate": hub.verification_cert("dps-shared-root.pem", "dps-shared-root.key", code, "pop.pem")},
                                                  etag=coded.etag, match_condition=MatchConditions.IfNotModified)
    assert done.properties.is_verified is True
    # The same registry: the IoT Hub view shows it Verified too.
    assert hub.json("cert", "show", "dps-shared-root")["properties"]["isVerified"] is True
    dps.dps_certificate.delete("rg", "iothub", "dps-shared-root", etag=done.etag, match_condition=MatchConditions.IfNotModified)
    assert "dps-shared-root" not in hub.cli("cert", "list")
