"""Three `iothub serve` nodes sharing one PostgreSQL database act as one hub for the OFFICIAL,
unmodified Azure IoT SDKs (conftest.py): a CA proved on node 1 is Verified on node 3; a device on
node 3 gets C2D (the service SDK's, over AMQP), a direct method and a desired patch sent through
nodes 1 and 2; its telemetry is read by an Event Hubs consumer on node 2; a CA deleted on
node 2 drops the device on node 3 within a second; a device's new connection on one node takes
over from its session on another; PostgreSQL restarted under a publishing device; a node killed
with SIGKILL, its device admitted by another node at once.

The database is a private server started by `testpg` (crates/testpg: Debian's server binaries as
the postgres user under target/, on a free port), stopped when this module ends.
Run: python -m pytest tests/sdk/test_cluster.py -q
"""
import os
import subprocess
import threading
import time

import pytest
from azure.iot.device import Message, MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from conftest import BIN, Hub, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

TESTPG = os.environ.get("IOTHUB_TESTPG_BIN", os.path.join(os.path.dirname(BIN), "testpg"))


class Postgres:
    """The private server: `testpg` prints the database URL, then takes `stop` and `start` on its
    stdin; closing stdin stops the server and deletes it."""

    def __init__(self):
        if not os.path.exists(TESTPG):
            raise RuntimeError(f"{TESTPG} does not exist: cargo build -p iothub-testpg (scripts/test does)")
        self.proc = subprocess.Popen([TESTPG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("url "):
            raise RuntimeError(f"testpg did not start: {line!r}")
        self.url = line[4:].strip()

    def command(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"testpg {command}: {answer}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster():
    pg = Postgres()
    nodes = []
    try:
        for i in (1, 2, 3):
            nodes.append(Hub(extra=["--store", pg.url, "--node-id", f"n{i}"]))
        yield pg, nodes
    finally:
        for n in nodes:
            n.close()
        pg.close()


def device_on(node, owner, device_id, ca, clients):
    """An SDK device client of `device_id` (certificate signed by `ca`, files in `owner`'s
    directory, registered through `owner`) connected to `node`."""
    cert, key = owner.device_cert(device_id, ca)
    owner.cli("device", "add", device_id)
    client = node.x509_client(device_id, cert, key)
    clients.append(client)
    client.connect()
    return client


@pytest.fixture
def clients():
    made = []
    yield made
    for c in made:
        try:
            c.shutdown()
        except Exception:
            pass


def test_a_ca_proved_on_node_1_is_verified_on_node_3(cluster):
    _, (n1, _, n3) = cluster
    n1.verified_ca("cl-root")
    shown = wait_for("node 3 sees the CA Verified",
                     lambda: n3.json("cert", "show", "cl-root")["properties"]["isVerified"], timeout=2)
    assert shown is True


def test_a_device_on_node_3_gets_c2d_methods_and_patches_through_nodes_1_and_2(cluster, clients):
    _, (n1, n2, n3) = cluster
    n1.verified_ca("cl-root")
    client = device_on(n3, n1, "cl-cam", "cl-root", clients)
    received, patches = [], []
    client.on_message_received = received.append            # returns after the SUBACK
    client.on_twin_desired_properties_patch_received = patches.append

    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"answered": "on node 3", "got": request.payload}))

    client.on_method_request_received = on_method

    # The service SDK sends C2D over AMQP, to node 1's AMQP port; the device is on node 3.
    import certifi
    real_where = certifi.where
    certifi.where = lambda: n1.ca_file
    try:
        sender = n1.registry_manager()
        sender.send_c2d_message("cl-cam", "through node 1", {"colour": "blue"})
        sender.amqp_svc_client.disconnect_sync()
    finally:
        certifi.where = real_where
    wait_for("the C2D message through node 1", lambda: received, timeout=5)
    assert received[0].data == b"through node 1"
    assert received[0].custom_properties["colour"] == "blue"

    r = n2.registry_manager().invoke_device_method("cl-cam", CloudToDeviceMethod(
        method_name="ping", payload={"n": 2}, response_timeout_in_seconds=10))
    assert r.status == 200
    assert r.payload == {"answered": "on node 3", "got": {"n": 2}}

    n2.registry_manager().update_twin("cl-cam", Twin(properties=TwinProperties(desired={"rate": 7})), "*")
    wait_for("the desired patch through node 2", lambda: patches, timeout=5)
    assert patches[0]["rate"] == 7


def test_telemetry_sent_through_node_1_is_read_by_an_event_hubs_consumer_on_node_2(cluster, clients):
    _, (n1, n2, _) = cluster
    n1.verified_ca("cl-root")
    client = device_on(n1, n1, "cl-meter", "cl-root", clients)
    from azure.eventhub import EventHubConsumerClient
    reader = EventHubConsumerClient.from_connection_string(
        n2.cli("connection-string", "--eventhub").strip(), consumer_group="$Default",
        connection_verify=n2.ca_file)
    got = []
    thread = threading.Thread(target=reader.receive, daemon=True, kwargs=dict(
        on_event=lambda _p, e: e is not None and got.append(e), starting_position="@latest"))
    thread.start()
    time.sleep(3)
    client.send_message(Message("metered on node 1"))
    try:
        wait_for("the event on node 2", lambda: got, timeout=20)
        assert got[0].body_as_str() == "metered on node 1"
        assert got[0].system_properties[b"iothub-connection-device-id"] == b"cl-meter"
    finally:
        reader.close()
        thread.join(10)


def test_a_ca_deleted_on_node_2_drops_the_device_on_node_3_within_a_second(cluster, clients):
    _, (n1, n2, n3) = cluster
    n1.verified_ca("cl-doomed")
    client = device_on(n3, n1, "cl-doomed-dev", "cl-doomed", clients)
    assert client.connected
    n2.cli("cert", "delete", "cl-doomed")
    deleted = time.monotonic()
    wait_for("the device dropped on node 3", lambda: not client.connected, timeout=5, interval=0.01)
    took = time.monotonic() - deleted
    assert took < 1.0, f"dropped {took:.3f} s after the delete returned"
    reason = wait_for("node 3 recorded why", lambda: n3.connections()["live"] == [] or
                      all(s["deviceId"] != "cl-doomed-dev" for s in n3.connections()["live"]))
    assert reason


def test_a_new_connection_on_node_1_takes_over_from_node_2(cluster, clients):
    _, (n1, n2, _) = cluster
    n1.verified_ca("cl-root")
    first = device_on(n2, n1, "cl-mover", "cl-root", clients)
    cert, key = n1.path("cl-mover.pem"), n1.path("cl-mover.key")
    second = n1.x509_client("cl-mover", cert, key)
    clients.append(second)
    second.connect()
    connected = time.monotonic()
    wait_for("the old session on node 2 closed", lambda: not first.connected, timeout=5, interval=0.01)
    took = time.monotonic() - connected
    assert took < 1.0, f"old session closed {took:.3f} s after the takeover"
    assert second.connected
    assert "cl-mover" in n1.live_ids() and "cl-mover" not in n2.live_ids()


def test_postgresql_restarted_under_a_publishing_device(cluster, clients):
    pg, (n1, n2, _) = cluster
    n1.verified_ca("cl-root")
    client = device_on(n2, n1, "cl-steady", "cl-root", clients)
    client.send_message(Message("before"))
    pg.command("stop")
    sent = threading.Event()
    sender = threading.Thread(target=lambda: (client.send_message(Message("during")), sent.set()))
    sender.start()
    try:
        time.sleep(2)
        # No PUBACK while the message cannot be made durable, and the session is kept.
        assert not sent.is_set(), "a message was acknowledged while the database was down"
        assert client.connected
    finally:
        pg.command("start")
    assert sent.wait(20), "the message was not acknowledged after the database returned"
    assert client.connected
    client.send_message(Message("after"))
    bodies = [m["body"] for m in n1.monitor("cl-steady", 3)]
    assert bodies == ["before", "during", "after"]
    # The registry takes writes again, through any node.
    wait_for("the registry takes writes again",
             lambda: n1.run("device", "add", "cl-after-restart").returncode == 0, timeout=10, interval=0.2)


def test_a_node_killed_with_sigkill_its_device_moves_to_another(cluster, clients):
    _, (n1, _, n3) = cluster
    n1.verified_ca("cl-root")
    client = device_on(n3, n1, "cl-survivor", "cl-root", clients)
    for i in range(5):
        client.send_message(Message(f"m{i}"))
    n3._stop()  # SIGKILL
    cert, key = n1.path("cl-survivor.pem"), n1.path("cl-survivor.key")
    again = n1.x509_client("cl-survivor", cert, key)
    clients.append(again)
    started = time.monotonic()
    again.connect()
    assert time.monotonic() - started < 1.0
    assert [m["body"] for m in n1.monitor("cl-survivor", 5)] == [f"m{i}" for i in range(5)]
