"""The hub's AMQP 1.0 endpoint (port 5671) driven by the official SDKs, unmodified:
azure-iot-hub's `send_c2d_message` (uamqp) reaches an SDK device with its properties, and
azure-eventhub's `EventHubConsumerClient` (its pure-Python AMQP stack and uamqp) reads devices'
telemetry from every start position, across a restart, in two consumer groups, with owner levels;
wrong keys, expired tokens, policies without ServiceConnect and unknown names are refused.
"""
import datetime
import threading
import time

import certifi
import pytest
from azure.eventhub import EventHubConsumerClient
from azure.eventhub.exceptions import AuthenticationError, EventHubError
from azure.iot.device import Message

from conftest import Hub, wait_for

EVENT_WAIT = 20.0


@pytest.fixture
def trust_hub_for_uamqp(hub, monkeypatch):
    """uamqp verifies the hub's certificate against certifi's bundle only."""
    monkeypatch.setattr(certifi, "where", lambda: hub.ca_file)


def eventhub_cs(hub, policy=None, key=None):
    args = ["connection-string", "--eventhub"] + (["--policy", policy] if policy else [])
    cs = hub.cli(*args).strip()
    if key is not None:
        cs = ";".join(f"SharedAccessKey={key}" if p.startswith("SharedAccessKey=") else p
                      for p in cs.split(";"))
    return cs


def consumer(hub, group="$Default", cs=None, **kwargs):
    return EventHubConsumerClient.from_connection_string(
        cs or eventhub_cs(hub), consumer_group=group, connection_verify=hub.ca_file, **kwargs)


def partition_ends(client):
    return {p: client.get_partition_properties(p)["last_enqueued_sequence_number"]
            for p in client.get_partition_ids()}


class Reader:
    """One partition read in a thread from `starting_position` until closed."""

    def __init__(self, client, partition, **receive_kwargs):
        self.client, self.events, self.errors = client, [], []
        self.thread = threading.Thread(target=client.receive, daemon=True, kwargs=dict(
            on_event=lambda _p, e: e is not None and self.events.append(e),
            on_error=lambda _p, e: self.errors.append(e),
            partition_id=partition, **receive_kwargs))
        self.thread.start()

    def wait(self, count, timeout=EVENT_WAIT):
        return wait_for(f"{count} events", lambda: len(self.events) >= count and self.events, timeout)

    def bodies(self):
        return [e.body_as_str() for e in self.events]

    def close(self):
        self.client.close()
        self.thread.join(10)


def device(hub, devices, device_id, connect=True):
    """A registered device (CA authentication) and its connected SDK client."""
    hub.cli("device", "add", device_id, "--auth", "ca")
    return devices(device_id, connect=connect)


def send(device, bodies, **props):
    for b in bodies:
        m = Message(b)
        m.message_id = f"mid-{b}"
        m.content_type = "application/json"
        m.custom_properties.update(props)
        device.send_message(m)


def sent_partition(client, before, count):
    """The partition whose end moved by `count` since `before`."""
    def moved():
        after = partition_ends(client)
        grown = [p for p in after if after[p] - before[p] == count]
        return grown[0] if grown else None
    return wait_for("the device's partition to grow", moved)


# ----- cloud-to-device over AMQP ---------------------------------------------------------------------

def test_send_c2d_message_reaches_an_sdk_device_with_its_properties(hub, devices, trust_hub_for_uamqp):
    dev = device(hub, devices, "amqp-c2d-1")
    registry = hub.registry_manager()
    registry.send_c2d_message("amqp-c2d-1", '{"led": "on"}', {
        "messageId": "m-amqp-1", "correlationId": "c-7", "contentType": "application/json",
        "contentEncoding": "utf-8", "colour": "blue"})
    m = dev.receive_message(timeout=15)
    assert m is not None, hub.log()
    assert m.data == b'{"led": "on"}'
    assert (m.message_id, m.correlation_id) == ("m-amqp-1", "c-7")
    assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
    assert m.custom_properties["colour"] == "blue"
    listed = hub.json("c2d", "list", "amqp-c2d-1")["value"]
    assert [x["messageId"] for x in listed] == ["m-amqp-1"], listed
    registry.amqp_svc_client.disconnect_sync()


def test_send_c2d_message_refusals_name_their_cause(hub, devices, trust_hub_for_uamqp):
    device(hub, devices, "amqp-c2d-2", connect=False)
    registry = hub.registry_manager()
    with pytest.raises(Exception, match="C2D message send failure"):
        registry.send_c2d_message("amqp-no-such-device", "x", {})
    registry.amqp_svc_client.disconnect_sync()
    assert hub.json("c2d", "list", "amqp-c2d-2")["value"] == []
    # A policy without ServiceConnect puts a good token, but its message is rejected.
    reader = hub.registry_manager(hub.cli("connection-string", "--policy", "registryRead").strip())
    with pytest.raises(Exception, match="C2D message send failure"):
        reader.send_c2d_message("amqp-c2d-2", "x", {})
    reader.amqp_svc_client.disconnect_sync()
    assert hub.json("c2d", "list", "amqp-c2d-2")["value"] == []
    denied = [a for a in hub.json("audit")["value"]
              if a["target"] == "device/amqp-c2d-2" and a["outcome"] != "success"]
    assert denied and "ServiceConnect" in denied[0]["detail"], denied


def test_send_c2d_message_with_a_wrong_key_is_refused(hub, trust_hub_for_uamqp):
    cs = ";".join("SharedAccessKey=" + "A" * 44 if p.startswith("SharedAccessKey=") else p
                  for p in hub.connection_string().split(";"))
    registry = hub.registry_manager(cs)
    started = time.monotonic()
    with pytest.raises(Exception):
        registry.send_c2d_message("anyone", "x", {})
    assert time.monotonic() - started < 120


# ----- Event Hubs-compatible reads --------------------------------------------------------------------

def test_the_event_hub_and_its_partitions_are_described(hub):
    client = consumer(hub)
    try:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]
        props = client.get_eventhub_properties()
        assert props["eventhub_name"] == "iothub"
        p = client.get_partition_properties("2")
        assert p["id"] == "2" and p["eventhub_name"] == "iothub"
        assert isinstance(p["last_enqueued_offset"], str)
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["pyamqp", "uamqp"])
def test_telemetry_is_read_from_every_start_position(hub, devices, transport):
    name = f"amqp-tele-{transport}"
    dev = device(hub, devices, name)
    kw = {"uamqp_transport": True} if transport == "uamqp" else {}
    probe = consumer(hub, **kw)
    before = partition_ends(probe)
    send(dev, ["a1", "a2", "a3"], phase="a")
    partition = sent_partition(probe, before, 3)
    first = before[partition] + 1
    # Every later batch starts in a later second than the last of this one.
    time.sleep(1.1)
    between = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.1)
    send(dev, ["b1", "b2"], phase="b")
    wait_for("b in the log", lambda: partition_ends(probe)[partition] == first + 4)
    probe.close()

    def read(position, count, inclusive=False):
        r = Reader(consumer(hub, **kw), partition, starting_position=position,
                   starting_position_inclusive=inclusive)
        try:
            events = r.wait(count)
            time.sleep(0.3)
            return [e for e in r.events if e.system_properties[b"iothub-connection-device-id"] == name.encode()]
        finally:
            r.close()

    everything = read("-1", first + 4)
    mine = [e.body_as_str() for e in everything]
    assert mine == ["a1", "a2", "a3", "b1", "b2"], mine
    e = everything[0]
    assert e.sequence_number == first and e.offset == str(first)
    assert e.properties[b"phase"] == b"a"
    assert e.system_properties[b"message-id"] == b"mid-a1"
    assert e.system_properties[b"content-type"] == b"application/json"
    assert isinstance(e.enqueued_time, datetime.datetime)
    # After an offset (exclusive), from a sequence number (inclusive), after a time.
    assert [x.body_as_str() for x in read(str(first + 1), 3)] == ["a3", "b1", "b2"]
    assert [x.body_as_str() for x in read(first + 3, 2, inclusive=True)] == ["b1", "b2"]
    assert [x.body_as_str() for x in read(between, 2)] == ["b1", "b2"]
    # @latest: only what comes after the reader attached.
    r = Reader(consumer(hub, **kw), partition, starting_position="@latest")
    try:
        time.sleep(2)
        send(dev, ["c1"], phase="c")
        r.wait(1)
        assert r.bodies() == ["c1"]
    finally:
        r.close()


def test_offsets_are_stable_across_a_restart(devices):
    own = Hub()
    try:
        own.verified_ca("sdk-device-root")
        own.cli("device", "add", "amqp-restart", "--auth", "ca")
        cert, key = own.device_cert("amqp-restart", "sdk-device-root")
        client = own.x509_client("amqp-restart", cert, key)
        client.connect()
        probe = consumer(own)
        before = partition_ends(probe)
        send(client, ["r1", "r2"])
        partition = sent_partition(probe, before, 2)
        probe.close()
        client.shutdown()
        r = Reader(consumer(own), partition, starting_position="-1")
        first = [(e.body_as_str(), e.offset, e.sequence_number) for e in r.wait(2)]
        r.close()
        own.restart()
        r = Reader(consumer(own), partition, starting_position="-1")
        again = [(e.body_as_str(), e.offset, e.sequence_number) for e in r.wait(2)]
        r.close()
        assert again == first, (first, again)
        # After the first offset: the second event, whose offset was kept.
        r = Reader(consumer(own), partition, starting_position=first[0][1])
        assert [e.body_as_str() for e in r.wait(1)] == ["r2"]
        r.close()
    finally:
        own.close()


def test_two_consumer_groups_read_the_same_events_and_an_unknown_one_is_refused(hub, devices):
    hub.cli("consumer-group", "add", "analytics")
    assert [g["name"] for g in hub.json("consumer-group", "list")] == ["$Default", "analytics"]
    dev = device(hub, devices, "amqp-groups")
    probe = consumer(hub)
    before = partition_ends(probe)
    send(dev, ["g1", "g2"])
    partition = sent_partition(probe, before, 2)
    probe.close()
    position = before[partition]
    readers = [Reader(consumer(hub, group), partition, starting_position=position)
               for group in ("$Default", "analytics")]
    try:
        for r in readers:
            assert r.wait(2) and r.bodies()[:2] == ["g1", "g2"]
    finally:
        for r in readers:
            r.close()
    bad = Reader(consumer(hub, "nobody", retry_total=0), partition, starting_position="-1")
    try:
        wait_for("the refusal", lambda: bad.errors, timeout=30)
        assert "consumer group 'nobody' does not exist" in str(bad.errors[0]), bad.errors
    finally:
        bad.close()
    hub.cli("consumer-group", "delete", "analytics")


def test_an_owner_level_takes_the_partition_from_a_plain_reader(hub):
    plain = Reader(consumer(hub), "1", starting_position="@latest")
    try:
        time.sleep(2)
        owner = Reader(consumer(hub), "1", starting_position="@latest", owner_level=5)
        try:
            wait_for("the plain reader to be displaced", lambda: plain.errors)
            assert "owner level 5 took partition 1" in str(plain.errors[0]), plain.errors
            assert not owner.errors
        finally:
            owner.close()
    finally:
        plain.close()


def test_wrong_key_no_rights_and_wrong_entity_are_refused(hub):
    wrong = consumer(hub, cs=eventhub_cs(hub, key="B" * 44), retry_total=0)
    with pytest.raises(AuthenticationError):
        wrong.get_partition_ids()
    wrong.close()
    reader = consumer(hub, cs=eventhub_cs(hub, policy="registryRead"), retry_total=0)
    with pytest.raises(EventHubError, match="ServiceConnect"):
        reader.get_partition_ids()
    reader.close()
    cs = eventhub_cs(hub).replace("EntityPath=iothub", "EntityPath=elsewhere")
    other = consumer(hub, cs=cs, retry_total=0)
    with pytest.raises(EventHubError, match="this hub's is 'iothub'"):
        other.get_partition_ids()
    other.close()


def test_an_expired_token_is_refused(hub):
    """A token that was good when made and has expired (the SDK takes it as a SAS credential)."""
    from azure.core.credentials import AzureSasCredential

    token = hub.cli("sas-token", "--ttl", "1").strip()
    time.sleep(2)
    client = EventHubConsumerClient(hub.ip, "iothub", "$Default", AzureSasCredential(token),
                                    connection_verify=hub.ca_file, retry_total=0)
    with pytest.raises(AuthenticationError):
        client.get_partition_ids()
    client.close()
    good = EventHubConsumerClient(hub.ip, "iothub", "$Default",
                                  AzureSasCredential(hub.cli("sas-token").strip()),
                                  connection_verify=hub.ca_file, retry_total=0)
    assert good.get_partition_ids() == ["0", "1", "2", "3"]
    good.close()
