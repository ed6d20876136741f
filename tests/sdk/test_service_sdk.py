"""The OFFICIAL, unmodified Azure IoT service SDK against a real running iothub (conftest.py):

1. azure-iot-hub 2.7.0 -- the device registry (every auth type, etags, rights of each policy),
   twins, direct methods;
2. azure-iot-device 2.14.0 -- the device side of the same twins and methods (X.509 over MQTT/TLS).

Every call below goes over the wire. Run: python -m pytest tests/sdk/test_service_sdk.py -q
"""
import base64
import os
import threading
import time

import pytest
from azure.iot.device import MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from conftest import sha1_thumbprint, wait_for

# azure-iot-device 2.14.0 builds its TLS context with ssl.PROTOCOL_TLSv1_2 (deprecated in Python).
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


# ==== 1. azure-iot-hub: registry, twins, methods ================================================

def b64key():
    return base64.b64encode(os.urandom(32)).decode()


def test_registry_create_device_with_sas(registry):
    primary, secondary = b64key(), b64key()
    d = registry.create_device_with_sas("svc-sas", primary, secondary, "enabled")
    assert d.device_id == "svc-sas"
    assert d.status == "enabled"
    assert d.authentication.type == "sas"
    assert d.authentication.symmetric_key.primary_key == primary
    assert d.authentication.symmetric_key.secondary_key == secondary
    assert d.etag
    got = registry.get_device("svc-sas")
    assert got.device_id == "svc-sas" and got.etag == d.etag
    assert got.authentication.symmetric_key.primary_key == primary
    assert got.connection_state == "Disconnected"


def test_registry_create_device_with_x509_thumbprints(registry):
    sha1, sha256 = "A1" * 20, "B2" * 32
    d = registry.create_device_with_x509("svc-x509", sha1, sha256, "disabled")
    assert d.authentication.type == "selfSigned"
    assert d.authentication.x509_thumbprint.primary_thumbprint.upper() == sha1
    assert d.authentication.x509_thumbprint.secondary_thumbprint.upper() == sha256
    assert d.status == "disabled"
    got = registry.get_device("svc-x509")
    assert got.authentication.type == "selfSigned"
    assert got.authentication.x509_thumbprint.primary_thumbprint.upper() == sha1


def test_registry_create_device_with_certificate_authority(registry):
    d = registry.create_device_with_certificate_authority("svc-ca", "enabled")
    assert d.device_id == "svc-ca"
    assert d.authentication.type == "certificateAuthority"
    assert d.status == "enabled"
    assert registry.get_device("svc-ca").authentication.type == "certificateAuthority"


def test_registry_update_device_with_sas_etag(registry):
    created = registry.create_device_with_sas("svc-upd", b64key(), b64key(), "enabled")
    new_primary, new_secondary = b64key(), b64key()
    updated = registry.update_device_with_sas("svc-upd", created.etag, new_primary, new_secondary, "disabled")
    assert updated.status == "disabled"
    assert updated.authentication.symmetric_key.primary_key == new_primary
    assert updated.etag and updated.etag != created.etag
    with pytest.raises(HttpOperationError) as e:   # the etag it had before the update
        registry.update_device_with_sas("svc-upd", created.etag, b64key(), b64key(), "enabled")
    assert e.value.response.status_code == 412
    assert registry.get_device("svc-upd").status == "disabled"
    # etag None -> the SDK sends If-Match: "*" (quoted wildcard), which must match anything.
    again = registry.update_device_with_sas("svc-upd", None, new_primary, new_secondary, "enabled")
    assert again.status == "enabled"


def test_registry_delete_device_with_etag_and_without(registry):
    a = registry.create_device_with_certificate_authority("svc-del-a", "enabled")
    registry.create_device_with_certificate_authority("svc-del-b", "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.delete_device("svc-del-a", "bm90LXRoZS1ldGFn")
    assert e.value.response.status_code == 412
    registry.delete_device("svc-del-a", a.etag)
    registry.delete_device("svc-del-b")          # etag None -> If-Match: "*"
    for device_id in ("svc-del-a", "svc-del-b"):
        with pytest.raises(HttpOperationError) as e:
            registry.get_device(device_id)
        assert e.value.response.status_code == 404


def test_registry_get_devices(registry):
    for i in range(3):
        registry.create_device_with_certificate_authority(f"svc-list-{i}", "enabled")
    ids = [d.device_id for d in registry.get_devices()]
    assert {"svc-list-0", "svc-list-1", "svc-list-2"} <= set(ids)
    assert len(registry.get_devices(max_number_of_devices=2)) == 2


def test_registry_get_missing_device_is_404(registry):
    with pytest.raises(HttpOperationError) as e:
        registry.get_device("svc-no-such-device")
    assert e.value.response.status_code == 404
    with pytest.raises(HttpOperationError) as e:
        registry.get_twin("svc-no-such-device")
    assert e.value.response.status_code == 404


def test_registry_twin_update_with_etag_and_stale_etag(registry):
    registry.create_device_with_certificate_authority("svc-twin", "enabled")
    twin = registry.get_twin("svc-twin")
    assert twin.device_id == "svc-twin"
    assert twin.etag
    assert twin.properties.desired["$version"] >= 1
    assert "$version" in twin.properties.reported
    v0 = twin.properties.desired["$version"]

    t1 = registry.update_twin("svc-twin", Twin(tags={"site": "lab"},
                                                   properties=TwinProperties(desired={"interval": 5, "mode": "eco"})),
                                  twin.etag)
    assert t1.tags == {"site": "lab"}
    assert t1.properties.desired["interval"] == 5 and t1.properties.desired["mode"] == "eco"
    assert t1.properties.desired["$version"] == v0 + 1
    assert t1.etag != twin.etag
    # PATCH merges: a second patch keeps the first one's keys, null removes one.
    t2 = registry.update_twin("svc-twin", Twin(properties=TwinProperties(desired={"interval": 7, "mode": None})),
                                  t1.etag)
    assert t2.properties.desired["interval"] == 7
    assert "mode" not in t2.properties.desired
    assert t2.tags == {"site": "lab"}
    with pytest.raises(HttpOperationError) as e:   # stale
        registry.update_twin("svc-twin", Twin(properties=TwinProperties(desired={"interval": 9})), twin.etag)
    assert e.value.response.status_code == 412
    assert registry.get_twin("svc-twin").properties.desired["interval"] == 7


def test_registry_replace_twin(registry):
    registry.create_device_with_certificate_authority("svc-replace", "enabled")
    twin = registry.get_twin("svc-replace")
    registry.update_twin("svc-replace", Twin(tags={"a": 1}, properties=TwinProperties(desired={"old": True})), twin.etag)
    replaced = registry.replace_twin("svc-replace", Twin(tags={"b": 2}, properties=TwinProperties(desired={"new": 1})))
    assert replaced.tags == {"b": 2}
    assert replaced.properties.desired["new"] == 1
    assert "old" not in replaced.properties.desired
    got = registry.get_twin("svc-replace")
    assert got.tags == {"b": 2} and "old" not in got.properties.desired and got.properties.desired["new"] == 1


def method_echo_handler(client, status=200):
    seen = []

    def on_method(request):
        seen.append(request)
        client.send_method_response(MethodResponse.create_from_method_request(
            request, status, {"echo": request.payload, "method": request.name}))

    client.on_method_request_received = on_method
    return seen


def test_invoke_device_method_round_trip(hub, registry, devices):
    registry.create_device_with_certificate_authority("svc-method", "enabled")
    client = devices("svc-method")
    seen = method_echo_handler(client)
    # Setting the handler returns after the SUBACK: the hub must route methods from then on.
    assert registry.get_device("svc-method").connection_state == "Connected"
    r = registry.invoke_device_method("svc-method", CloudToDeviceMethod(
        method_name="reboot", payload={"delay": 3, "why": "test"}, response_timeout_in_seconds=10))
    assert r.status == 200
    assert r.payload == {"echo": {"delay": 3, "why": "test"}, "method": "reboot"}
    assert len(seen) == 1 and seen[0].name == "reboot"
    # A second call with another status and a scalar payload.
    client.on_method_request_received = None
    method_echo_handler(client, status=418)
    r = registry.invoke_device_method("svc-method", CloudToDeviceMethod(
        method_name="brew", payload="tea", response_timeout_in_seconds=10))
    assert r.status == 418
    assert r.payload == {"echo": "tea", "method": "brew"}


def test_invoke_device_method_offline_device_is_404(registry):
    registry.create_device_with_certificate_authority("svc-offline", "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("svc-offline", CloudToDeviceMethod(
            method_name="reboot", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404


def test_invoke_device_method_unanswered_is_504(registry, devices):
    registry.create_device_with_certificate_authority("svc-silent", "enabled")
    client = devices("svc-silent")
    seen = []
    client.on_method_request_received = seen.append     # receives, never answers
    started = time.time()
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("svc-silent", CloudToDeviceMethod(
            method_name="hang", payload={}, response_timeout_in_seconds=5))
    elapsed = time.time() - started
    assert e.value.response.status_code == 504
    assert 4.5 <= elapsed < 15, elapsed
    assert [r.name for r in seen] == ["hang"]


def test_self_signed_device_registered_by_thumbprint_connects(hub, registry):
    # A certificate from a CA the hub does not trust: only the registered thumbprint admits it.
    hub.make_ca("untrusted-ca")
    cert, key = hub.device_cert("svc-selfsigned", "untrusted-ca")
    thumb = sha1_thumbprint(open(cert).read())
    registry.create_device_with_x509("svc-selfsigned", thumb, None, "enabled")
    client = hub.x509_client("svc-selfsigned", cert, key)
    try:
        client.connect()
        assert client.connected
        wait_for("the registry shows the device connected",
                   lambda: registry.get_device("svc-selfsigned").connection_state == "Connected", timeout=5)
    finally:
        client.shutdown()


def test_registry_create_existing_device_is_409_and_invalid_ids_are_400(registry):
    registry.create_device_with_certificate_authority("svc-dup", "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.create_device_with_certificate_authority("svc-dup", "enabled")
    assert e.value.response.status_code == 409
    for bad in ("a/b", "x" * 129):
        with pytest.raises(HttpOperationError) as e:
            registry.create_device_with_certificate_authority(bad, "enabled")
        assert e.value.response.status_code == 400, bad
    with pytest.raises(HttpOperationError) as e:
        registry.create_device_with_x509("svc-badthumb", "XYZ", None, "enabled")
    assert e.value.response.status_code == 400


def test_registry_device_ids_with_every_allowed_special_character(registry):
    device_id = "a-b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q"
    d = registry.create_device_with_certificate_authority(device_id, "enabled")
    assert d.device_id == device_id
    assert registry.get_device(device_id).device_id == device_id
    assert registry.get_twin(device_id).device_id == device_id
    registry.delete_device(device_id)
    with pytest.raises(HttpOperationError) as e:
        registry.get_device(device_id)
    assert e.value.response.status_code == 404


def test_registry_update_changes_the_auth_type(registry):
    d = registry.create_device_with_certificate_authority("svc-switch", "enabled")
    x = registry.update_device_with_x509("svc-switch", d.etag, "CD" * 20, None, "enabled")
    assert x.authentication.type == "selfSigned"
    assert x.authentication.x509_thumbprint.primary_thumbprint.upper() == "CD" * 20
    back = registry.update_device_with_certificate_authority("svc-switch", x.etag, "enabled")
    assert back.authentication.type == "certificateAuthority"


def test_registry_get_devices_without_limit_returns_more_than_100(registry):
    wanted = {f"svc-many-{i:03d}" for i in range(105)}
    for device_id in sorted(wanted):
        registry.create_device_with_certificate_authority(device_id, "enabled")
    ids = {d.device_id for d in registry.get_devices()}
    assert wanted <= ids, f"{len(wanted - ids)} of the 105 new devices missing; {len(ids)} returned"


def test_registry_get_devices_top_zero_means_1000(registry):
    for i in range(3):
        registry.create_device_with_certificate_authority(f"svc-top0-{i}", "enabled")
    all_ids = {d.device_id for d in registry.get_devices(max_number_of_devices=1000)}
    assert len(all_ids) >= 3
    assert {d.device_id for d in registry.get_devices(max_number_of_devices=0)} == all_ids


def test_registry_policies_rights(hub):
    def manager(policy=None, connection_string=None):
        return hub.registry_manager(connection_string or hub.cli("connection-string", "--policy", policy).strip())

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
    wrong = hub.connection_string().replace("SharedAccessKey=", "SharedAccessKey=AAAA")
    with pytest.raises(HttpOperationError) as e:
        manager(connection_string=wrong).get_device("svc-rw")
    assert e.value.response.status_code == 401


def test_registry_service_policy_reads_and_updates_twins(hub, registry):
    registry.create_device_with_certificate_authority("svc-twin-policy", "enabled")
    service = hub.registry_manager(hub.cli("connection-string", "--policy", "service").strip())
    twin = service.get_twin("svc-twin-policy")
    updated = service.update_twin("svc-twin-policy", Twin(properties=TwinProperties(desired={"by": "service"})), twin.etag)
    assert updated.properties.desired["by"] == "service"


def test_invoke_device_method_concurrent_calls_are_matched(registry, devices):
    registry.create_device_with_certificate_authority("svc-concurrent", "enabled")
    client = devices("svc-concurrent")

    def on_method(request):
        time.sleep(request.payload["sleep"])      # answer in reverse order of arrival
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"i": request.payload["i"]}))

    client.on_method_request_received = on_method
    results = {}

    def call(i):
        try:
            r = registry.invoke_device_method("svc-concurrent", CloudToDeviceMethod(
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


def test_invoke_device_method_without_method_subscription_is_404(registry, devices):
    registry.create_device_with_certificate_authority("svc-nosub", "enabled")
    devices("svc-nosub")                   # connected, but no method handler (no SUBSCRIBE)
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("svc-nosub", CloudToDeviceMethod(
            method_name="x", payload={}, response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404


def test_disabling_or_deleting_a_connected_device_drops_its_session(registry, devices):
    for device_id, action in (("svc-drop-disable", "disable"), ("svc-drop-delete", "delete")):
        d = registry.create_device_with_certificate_authority(device_id, "enabled")
        client = devices(device_id)
        method_echo_handler(client)
        assert registry.get_device(device_id).connection_state == "Connected"
        if action == "disable":
            registry.update_device_with_certificate_authority(device_id, d.etag, "disabled")
        else:
            registry.delete_device(device_id, d.etag)
        wait_for(f"the session of {device_id} closes", lambda: not client.connected, timeout=5)
        with pytest.raises(HttpOperationError) as e:
            registry.invoke_device_method(device_id, CloudToDeviceMethod(
                method_name="x", payload={}, response_timeout_in_seconds=5))
        assert e.value.response.status_code == 404
        if action == "disable":
            assert registry.get_device(device_id).connection_state == "Disconnected"


def test_registry_devices_of_every_auth_type(registry):
    # "auth-*" ids: the svc-sas, svc-x509 and svc-ca of the tests above are on the same hub.
    rm = registry
    sas = rm.create_device_with_sas("auth-sas", None, None, "enabled")
    assert sas.authentication.type == "sas" and sas.authentication.symmetric_key.primary_key
    x509 = rm.create_device_with_x509("auth-x509", "A" * 40, "B" * 64, "enabled")
    assert x509.authentication.type == "selfSigned" and x509.authentication.x509_thumbprint.primary_thumbprint == "A" * 40
    ca = rm.create_device_with_certificate_authority("auth-ca", "enabled")
    assert ca.authentication.type == "certificateAuthority"
    got = rm.get_device("auth-sas")
    assert got.etag == sas.etag and got.connection_state == "Disconnected"
    updated = rm.update_device_with_sas("auth-sas", got.etag, None, None, "disabled")
    assert updated.status == "disabled" and updated.etag != got.etag
    with pytest.raises(HttpOperationError) as e:
        rm.update_device_with_sas("auth-sas", got.etag, None, None, "enabled")   # stale etag
    assert e.value.response.status_code == 412
    rm.delete_device("auth-sas", updated.etag)
    rm.delete_device("auth-x509")
    with pytest.raises(HttpOperationError) as e:
        rm.get_device("auth-sas")
    assert e.value.response.status_code == 404


def device_with_handlers(hub, device_id, answer=True):
    hub.verified_ca("root")
    cert, key = hub.device_cert(device_id, "root")
    hub.cli("device", "add", device_id)
    client = hub.x509_client(device_id, cert, key)
    patches = []
    client.on_twin_desired_properties_patch_received = patches.append

    def on_method(request):
        if answer:
            client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"echo": request.payload, "name": request.name}))

    client.on_method_request_received = on_method
    client.connect()
    time.sleep(0.5)   # the handlers' subscriptions
    return client, patches


def test_twins_and_direct_methods(hub, registry):
    rm = registry
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


def test_method_errors(hub, registry):
    rm = registry
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


# ==== 2. azure-iot-device: twins ===============================================================

def test_device_get_twin_has_versions(registry, devices):
    registry.create_device_with_certificate_authority("dev-twin-get", "enabled")
    twin = registry.get_twin("dev-twin-get")
    registry.update_twin("dev-twin-get", Twin(properties=TwinProperties(desired={"color": "red"})), twin.etag)
    client = devices("dev-twin-get")
    t = client.get_twin()
    assert set(t) >= {"desired", "reported"}
    assert isinstance(t["desired"]["$version"], int) and isinstance(t["reported"]["$version"], int)
    assert t["desired"]["color"] == "red"
    assert t["desired"]["$version"] == registry.get_twin("dev-twin-get").properties.desired["$version"]


def test_device_reported_patch_is_seen_by_the_service(registry, devices):
    registry.create_device_with_certificate_authority("dev-reported", "enabled")
    client = devices("dev-reported")
    before = client.get_twin()["reported"]["$version"]
    client.patch_twin_reported_properties({"firmware": "1.2.3", "battery": {"level": 87}})
    service = registry.get_twin("dev-reported")
    assert service.properties.reported["firmware"] == "1.2.3"
    assert service.properties.reported["battery"] == {"level": 87}
    assert service.properties.reported["$version"] == before + 1
    after = client.get_twin()["reported"]
    assert after["firmware"] == "1.2.3" and after["$version"] == before + 1


def test_device_receives_desired_patch(registry, devices):
    registry.create_device_with_certificate_authority("dev-desired", "enabled")
    client = devices("dev-desired")
    patches = []
    arrived = threading.Event()

    def on_patch(patch):
        patches.append(patch)
        if "setpoint" in patch:
            arrived.set()

    client.on_twin_desired_properties_patch_received = on_patch   # returns after the SUBACK
    twin = registry.get_twin("dev-desired")
    updated = registry.update_twin("dev-desired", Twin(properties=TwinProperties(desired={"setpoint": 21.5})), twin.etag)
    assert arrived.wait(5), f"no desired patch within 5 s (got {patches})"
    patch = next(p for p in patches if "setpoint" in p)
    assert patch["setpoint"] == 21.5
    assert patch["$version"] == updated.properties.desired["$version"]


def test_device_sees_desired_set_while_offline_after_reconnect(registry, devices):
    registry.create_device_with_certificate_authority("dev-offline-twin", "enabled")
    client = devices("dev-offline-twin")
    assert "offline_value" not in client.get_twin()["desired"]
    client.disconnect()
    wait_for("the registry shows the device disconnected",
               lambda: registry.get_device("dev-offline-twin").connection_state == "Disconnected", timeout=5)
    twin = registry.get_twin("dev-offline-twin")
    updated = registry.update_twin("dev-offline-twin",
                                       Twin(properties=TwinProperties(desired={"offline_value": 42})), twin.etag)
    client.connect()
    t = client.get_twin()
    assert t["desired"]["offline_value"] == 42
    assert t["desired"]["$version"] == updated.properties.desired["$version"]


def test_device_reported_null_removes_and_refused_patch_raises(registry, devices):
    from azure.iot.device.exceptions import ClientError, ServiceError
    registry.create_device_with_certificate_authority("dev-reported-edit", "enabled")
    client = devices("dev-reported-edit")
    client.patch_twin_reported_properties({"a": 1, "b": {"c": 2, "keep": True}})
    client.patch_twin_reported_properties({"a": None, "b": {"c": None, "d": 3}})
    reported = registry.get_twin("dev-reported-edit").properties.reported
    assert "a" not in reported and reported["b"] == {"keep": True, "d": 3}
    version = reported["$version"]
    # Deeper than 10 levels: the hub answers the twin PATCH with status 400; the SDK raises
    # ClientError whose cause is ServiceError, and nothing changes.
    deep = {"l0": {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"l9": {"l10": 1}}}}}}}}}}}
    with pytest.raises(ClientError) as e:
        client.patch_twin_reported_properties(deep)
    assert isinstance(e.value.__cause__, ServiceError) and "400" in str(e.value.__cause__)
    assert registry.get_twin("dev-reported-edit").properties.reported["$version"] == version
    assert client.connected


def test_device_desired_patches_arrive_in_order_and_replace_is_delivered(registry, devices):
    registry.create_device_with_certificate_authority("dev-desired-seq", "enabled")
    client = devices("dev-desired-seq")
    patches = []
    client.on_twin_desired_properties_patch_received = patches.append   # returns after the SUBACK
    twin = registry.get_twin("dev-desired-seq")
    base = twin.properties.desired["$version"]

    def fresh():   # (an SDK may replay the full document it fetched on subscribing: not a patch)
        return [p for p in patches if p["$version"] > base]

    registry.update_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"n": 0, "gone": 1})), twin.etag)
    for i in range(1, 4):
        registry.update_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"n": i, "gone": None})))
    wait_for("4 desired patches", lambda: len(fresh()) >= 4, timeout=5)
    got = fresh()
    assert [p["$version"] for p in got] == [base + 1, base + 2, base + 3, base + 4]
    assert [p["n"] for p in got] == [0, 1, 2, 3]
    assert got[0]["gone"] == 1 and all(p["gone"] is None for p in got[1:])
    # Tags are not the device's business: no notification.
    registry.update_twin("dev-desired-seq", Twin(tags={"t": 1}))
    # replace_twin sends the whole new desired document.
    registry.replace_twin("dev-desired-seq", Twin(properties=TwinProperties(desired={"only": 1})))
    wait_for("the replacement", lambda: len(fresh()) >= 5, timeout=5)
    got = fresh()
    assert len(got) == 5, got
    assert {k: v for k, v in got[4].items() if k != "$version"} == {"only": 1}
    assert got[4]["$version"] == base + 5
    assert client.get_twin()["desired"] == {"only": 1, "$version": base + 5}
