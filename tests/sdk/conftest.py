"""The one hub fixture of the Azure SDK suite: a real `iothub serve` per test module, and the OFFICIAL
Azure IoT SDKs (azure-iot-device, azure-iot-hub, azure-mgmt-iothub, azure-mgmt-iothubprovisioningservices;
pinned in requirements.txt, unmodified) pointed at it.

Addresses: the device SDK's MQTT port is hard-coded to 8883, so every hub needs its own loopback IP;
this suite takes the first of 127.0.0.60-127.0.0.99 whose port 8883 is free (a range no other test
of this repository uses, so a suite running in another checkout at the same time only costs an
address). The HTTPS port is 0: the kernel picks it, `serve` prints it on its `https listening on`
line (read below) and writes it into DATA/connection-string, which the CLI and the service SDK use.

The hub's stdout (the readiness lines) and stderr (its log, with every refusal and its cause) go to
one file, DIR/serve.log: nothing can block on a full pipe, and `Hub.log()` / `Hub.log_lines()` put
it into failure messages. Every hub started is killed at exit even if a fixture finalizer never ran.

Fixtures: `hub` (module), `mgmt`, `dps`, `registry` (module; the SDK clients), `device_clients`
(shuts down the device clients a test registers) and `devices` (connected CA-signed device clients).
Test modules import plain helpers from here (`from conftest import wait_for, ...`).
"""
import atexit
import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from azure.core.credentials import AccessToken

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("IOTHUB_BIN", os.path.join(REPO, "target", "debug", "iothub"))
HUB_NAME = "iothub"          # the hub's `--name` (the default, passed anyway); also the ARM/DPS resource name
SUBSCRIPTION = "sub-1"       # any value: the hub checks neither, only echoes them in resource ids
RG = "rg"                    # (test_mgmt_create_or_update_new_certificate_is_unverified reads them there)
IPS = [f"127.0.0.{n}" for n in range(60, 100)]
MQTT_PORT = 8883             # the device SDK's, not configurable
AMQP_PORT = 5671             # the service SDK's C2D sends and Event Hubs clients: always 5671
START_TIMEOUT = 60.0         # a debug build on a loaded machine can be slow to start
CLI_TIMEOUT = 60.0

_running = []  # every hub process started, killed at exit even if a fixture finalizer never ran


@atexit.register
def _kill_leftovers():
    for proc in _running:
        if proc.poll() is None:
            proc.kill()


def _ensure_binary():
    if os.path.exists(BIN):
        return
    if "IOTHUB_BIN" in os.environ:
        raise RuntimeError(f"IOTHUB_BIN={BIN} does not exist")
    subprocess.run(["cargo", "build", "-p", "iothub"], cwd=REPO, check=True)


def _port_free(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ----- plain helpers -------------------------------------------------------------------------------

def wait_for(what, predicate, timeout=10.0, interval=0.02):
    """Polls `predicate` until it returns something truthy and returns that value; the predicate
    gets one last call after the deadline, so a slow poll never fails a condition that holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def pem_blocks(text):
    """Every certificate of a PEM text, each as its own PEM text, in order."""
    parts = text.split("-----END CERTIFICATE-----")
    return [p[p.index("-----BEGIN CERTIFICATE-----"):] + "-----END CERTIFICATE-----\n"
            for p in parts if "-----BEGIN CERTIFICATE-----" in p]


def first_certificate(pem_text):
    return pem_blocks(pem_text)[0]


def sha1_thumbprint(pem_text):
    """Uppercase hex SHA-1 of the DER of the first certificate in a PEM text."""
    body = pem_text.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return hashlib.sha1(base64.b64decode("".join(body.split()))).hexdigest().upper()


def error_code(e):
    """The `code` of an ARM error body as the management SDK parsed it (int or string in the body)."""
    return None if getattr(e, "error", None) is None else str(e.error.code)


class SasCredential:
    """The ARM credential the management SDKs get: `get_token` returns a hub policy SAS token (the
    output of `iothub sas-token`), which the SDK sends as `Authorization: Bearer <token>`."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


# ----- the hub -------------------------------------------------------------------------------------

class Hub:
    """One running `iothub serve` in a temporary directory, its CLI, and the SDK clients aimed at it."""

    def __init__(self, extra=()):
        """`extra`: more `serve` arguments (a cluster node's `--store` and `--node-id`)."""
        _ensure_binary()
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="iothub-sdk-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.proc = None
        self._token = None
        errors = []
        for ip in IPS:
            if not (_port_free(ip, MQTT_PORT) and _port_free(ip, AMQP_PORT)):
                continue
            try:
                self._start(ip)
                break
            except RuntimeError as e:  # lost a race for the address: try the next one
                errors.append(str(e))
                self._stop()
                shutil.rmtree(self.data, ignore_errors=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"no usable loopback address among {IPS[0]}..{IPS[-1]}: {errors}")
        self.ca_file = os.path.join(self.data, "tls", "ca.pem")
        self.ca = self.read("data", "tls", "ca.pem")

    def _start(self, ip):
        self.ip = ip
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [BIN, "--data", self.data, "serve", "--name", HUB_NAME,
                 "--https", f"{ip}:0", "--mqtt", f"{ip}:{MQTT_PORT}", "--amqp", f"{ip}:{AMQP_PORT}",
                 "--hostname", ip, "--metrics", "off", *self.extra],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _running.append(self.proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            lines = self.log().splitlines()
            https = [line for line in lines if line.startswith("https listening on ")]
            if https:
                if not any(line.startswith(f"mqtt listening on {ip}:{MQTT_PORT}") for line in lines):
                    raise RuntimeError(f"the hub on {ip} printed no 'mqtt listening on {ip}:{MQTT_PORT}':\n{self.log()}")
                self.https_port = int(https[0].rsplit(":", 1)[1])
                self.base = f"https://{ip}:{self.https_port}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"iothub serve on {ip} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"iothub serve on {ip} printed no 'https listening on' within {START_TIMEOUT} s:\n{self.log()}")

    def log(self):
        """The hub's stdout and log so far."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_lines(self, needle):
        return [line for line in self.log().splitlines() if needle in line]

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self):
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self):
        """Stops the hub (SIGKILL) and starts it again on the same address and data directory."""
        self._stop()
        with open(self.log_path, "a") as log:
            log.write("----- restarted -----\n")
        self._start(self.ip)

    # ----- the CLI (cwd: the hub's directory, so relative file names land there) -------------------

    def run(self, *args):
        return subprocess.run([BIN, "--data", self.data, *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)

    def cli(self, *args, check=True):
        r = self.run(*args)
        if check and r.returncode != 0:
            raise AssertionError(f"`iothub {' '.join(args)}` failed ({r.returncode}):\n{r.stderr}{r.stdout}")
        return r.stdout

    def json(self, *args):
        return json.loads(self.cli("-o", "json", *args))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def read(self, *parts):
        with open(self.path(*parts)) as f:
            return f.read()

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def connection_string(self):
        return self.read("data", "connection-string").strip()

    @property
    def token(self):
        """An owner SAS token (`iothub sas-token`), made once per hub."""
        if self._token is None:
            self._token = self.cli("sas-token").strip()
        return self._token

    # ----- observations ----------------------------------------------------------------------------

    def connections(self):
        return self.json("connections")

    def live_ids(self):
        return [s["deviceId"] for s in self.connections()["live"]]

    def refusals(self, client_id):
        """The recorded refusal reasons of `client_id`, newest first."""
        return [r["reason"] for r in self.connections()["refusals"] if r["clientId"] == client_id]

    def refusal(self, client_id):
        """The newest recorded refusal reason of `client_id`, or None."""
        return next(iter(self.refusals(client_id)), None)

    def monitor(self, device_id, count, timeout=15):
        out = self.cli("-o", "json", "monitor", "--from", "1", "--device", device_id,
                       "--count", str(count), "--timeout", str(timeout))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # ----- test PKI, made by `iothub pki` ----------------------------------------------------------

    def make_ca(self, name, parent=None, out_dir=".", cn=None):
        """A CA OUT_DIR/NAME.pem + NAME.key (an intermediate under PARENT.pem/.key when `parent`; its
        file then also holds the parents); returns the PEM text."""
        os.makedirs(self.path(out_dir), exist_ok=True)
        args = ["pki", "ca", name, "--out-dir", self.path(out_dir), "--force"]
        if parent:
            args += ["--parent", parent]
        if cn:
            args += ["--cn", cn]
        self.cli(*args)
        return self.read(out_dir, name + ".pem")

    def register_ca(self, name, prove=True):
        """Uploads the first certificate of NAME.pem alone (an intermediate's file also holds its
        parents) under NAME, then proves possession of NAME.key unless `prove` is false; returns
        the hub's view of it."""
        only = self.write(name + "-only.pem", first_certificate(self.read(name + ".pem")))
        self.cli("cert", "add", name, only)
        if prove:
            self.cli("cert", "prove", name, "--key", self.path(name + ".key"))
        status = self.json("cert", "show", name)["properties"]
        assert status["isVerified"] is prove, status
        return status

    def verified_ca(self, name, parent=None):
        """A CA made, registered alone and proven (setup for device connections); when this hub
        already has NAME Verified, only its status. Returns the hub's view of it."""
        shown = self.run("-o", "json", "cert", "show", name)
        if shown.returncode == 0 and json.loads(shown.stdout)["properties"]["isVerified"]:
            return json.loads(shown.stdout)["properties"]
        self.make_ca(name, parent=parent)
        return self.register_ca(name)

    def verification_cert(self, ca_pem, ca_key, code, out):
        """A verification certificate (CN = code) signed by the given CA files; returns its PEM."""
        self.cli("pki", "verification-cert", "--ca-cert", self.path(ca_pem), "--ca-key", self.path(ca_key),
                 "--code", code, "--out", self.path(out), "--force")
        return self.read(out)

    def device_cert(self, device_id, ca, chain_len=None):
        """ID.pem (leaf + CA chain, as `pki device` writes it) and ID.key, signed by CA.pem/CA.key;
        with `chain_len`, the file keeps only that many certificates (leaf first)."""
        self.cli("pki", "device", device_id, "--ca-cert", self.path(ca + ".pem"),
                 "--ca-key", self.path(ca + ".key"), "--out-dir", self.dir, "--force")
        cert = self.path(device_id + ".pem")
        if chain_len is not None:
            blocks = pem_blocks(self.read(device_id + ".pem"))
            assert len(blocks) >= chain_len, blocks
            self.write(device_id + ".pem", "".join(blocks[:chain_len]))
        return cert, self.path(device_id + ".key")

    # ----- the official SDK clients ----------------------------------------------------------------

    def x509_client(self, device_id, cert, key, **kwargs):
        """azure-iot-device over MQTT/TLS with an X.509 certificate; no automatic reconnect, so a
        refusal or a dropped session shows as it happened."""
        from azure.iot.device import X509, IoTHubDeviceClient
        return IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(cert_file=cert, key_file=key), hostname=self.ip, device_id=device_id,
            server_verification_cert=self.ca, **{"connection_retry": False, "keep_alive": 30, **kwargs})

    def sas_client(self, device_id, key, **kwargs):
        from azure.iot.device import IoTHubDeviceClient
        return IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=self.ip, device_id=device_id,
            server_verification_cert=self.ca, **{"connection_retry": False, "keep_alive": 30, **kwargs})

    def registry_manager(self, connection_string=None):
        """azure-iot-hub's registry manager from the owner connection string (or another one)."""
        from azure.iot.hub import IoTHubRegistryManager
        rm = IoTHubRegistryManager.from_connection_string(connection_string or self.connection_string())
        rm.protocol.config.connection.verify = self.ca_file
        return rm

    def mgmt_client(self, token=None):
        """azure-mgmt-iothub with an owner token (or `token`); retries off, so every status shows."""
        from azure.mgmt.iothub import IotHubClient
        return IotHubClient(SasCredential(token or self.token), SUBSCRIPTION, base_url=self.base,
                            connection_verify=self.ca_file, retry_total=0)

    def dps_client(self, token=None):
        from azure.mgmt.iothubprovisioningservices import IotDpsClient
        return IotDpsClient(SasCredential(token or self.token), SUBSCRIPTION, base_url=self.base,
                            connection_verify=self.ca_file, retry_total=0)


# ----- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub():
    h = Hub()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def mgmt(hub):
    return hub.mgmt_client()


@pytest.fixture(scope="module")
def dps(hub):
    return hub.dps_client()


@pytest.fixture(scope="module")
def registry(hub):
    return hub.registry_manager()


@pytest.fixture
def device_clients():
    """Registers SDK clients for shutdown at teardown: `device_clients(client)` returns the client."""
    clients = []

    def track(client):
        clients.append(client)
        return client

    yield track
    for c in clients:
        try:
            c.shutdown()
        except Exception:
            pass


@pytest.fixture
def devices(hub, device_clients):
    """A factory of azure-iot-device clients (X.509, signed by a proven CA), connected unless
    `connect=False`, shut down after the test."""

    def make(device_id, connect=True, **kwargs):
        hub.verified_ca("sdk-device-root")
        cert, key = hub.device_cert(device_id, "sdk-device-root")
        client = device_clients(hub.x509_client(device_id, cert, key, **kwargs))
        if connect:
            client.connect()
        return client

    return make
