"""Fixtures and helpers for test_service_sdks.py: a real `iothub serve` per test module on its own
loopback address, and the OFFICIAL Azure SDK clients (unmodified) pointed at it.

Everything public here is prefixed `sdk_` where pytest could see it (fixtures), so that it never
clashes with the fixtures of tests/python/conftest.py, which another suite owns.

Addresses: 127.0.0.20-127.0.0.29 (other suites use 127.0.0.2-127.0.0.9 and 127.0.0.40-59). The
device SDK's MQTT port is hard-coded to 8883, so every hub needs its own IP.
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
HUB_NAME = "iothub"          # the hub's `--name` (default); also the ARM/DPS resource name
SUBSCRIPTION = "sub-1"
RG = "rg"
IPS = [f"127.0.0.{n}" for n in range(20, 30)]
START_TIMEOUT = 60.0

_running = []   # every hub process started here, killed at exit even if a finalizer never ran


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


def wait_for(what, predicate, timeout=10.0, interval=0.05):
    """Polls `predicate` until it returns something truthy, and returns that."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def sha1_thumbprint(pem_text):
    """Uppercase hex SHA-1 of the DER of the first certificate in a PEM text."""
    body = pem_text.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return hashlib.sha1(base64.b64decode("".join(body.split()))).hexdigest().upper()


def first_certificate(pem_text):
    return pem_text.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"


class SdkCredential:
    """The ARM credential the mgmt SDKs get: `get_token` returns a hub policy SAS token (the output
    of `iothub sas-token`), which the SDK sends as `Authorization: Bearer <token>`."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


class SdkHub:
    """One running `iothub serve` in a temporary directory."""

    def __init__(self):
        _ensure_binary()
        self.dir = tempfile.mkdtemp(prefix="iothub-svc-sdk-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.proc = None
        last_error = None
        for ip in IPS:
            if not (_port_free(ip, 8883) and _port_free(ip, 8443)):
                continue
            try:
                self._start(ip)
                break
            except RuntimeError as e:       # lost a race for the address: try the next one
                last_error = e
                self._stop()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"no free loopback address among {IPS[0]}..{IPS[-1]}: {last_error}")
        self.ca_file = os.path.join(self.data, "tls", "ca.pem")
        self.ca = open(self.ca_file).read()
        self.base = f"https://{self.ip}:8443"
        self.token = self.cli("sas-token").strip()

    def _start(self, ip):
        self.ip = ip
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [BIN, "--data", self.data, "serve", "--name", HUB_NAME,
             "--https", f"{ip}:8443", "--mqtt", f"{ip}:8883", "--hostname", ip],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        _running.append(self.proc)
        log.close()
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if "https listening on" in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"iothub serve on {ip} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"iothub serve on {ip} did not print 'https listening on':\n{self.log()}")

    def log(self):
        try:
            return open(self.log_path, errors="replace").read()
        except FileNotFoundError:
            return ""

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self):
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- the CLI against this hub ---------------------------------------------------------------

    def cli(self, *args, check=True):
        r = subprocess.run([BIN, "--data", self.data, *args], cwd=self.dir, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"iothub {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r.stdout

    def cli_json(self, *args):
        return json.loads(self.cli("-o", "json", *args))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def read(self, *parts):
        return open(self.path(*parts)).read()

    def connection_string(self):
        return open(os.path.join(self.data, "connection-string")).read().strip()

    # ----- test PKI (made by `iothub pki`) -------------------------------------------------------

    def make_ca(self, name, out_dir=".", cn=None):
        """A root CA `name` (files OUT_DIR/NAME.pem, NAME.key); returns the certificate PEM text."""
        os.makedirs(self.path(out_dir), exist_ok=True)
        args = ["pki", "ca", name, "--out-dir", self.path(out_dir), "--force"]
        if cn:
            args += ["--cn", cn]
        self.cli(*args)
        return self.read(out_dir, name + ".pem")

    def verification_cert(self, ca_pem, ca_key, code, out):
        """A verification certificate (CN = code) signed by the given CA files; returns its PEM."""
        self.cli("pki", "verification-cert", "--ca-cert", self.path(ca_pem), "--ca-key", self.path(ca_key),
                 "--code", code, "--out", self.path(out), "--force")
        return self.read(out)

    def device_cert(self, device_id, ca):
        """A device certificate (CN = device_id) signed by CA files `ca`.pem/.key: returns (pem, key) paths."""
        self.cli("pki", "device", device_id, "--ca-cert", self.path(ca + ".pem"), "--ca-key", self.path(ca + ".key"),
                 "--out-dir", self.dir, "--force")
        return self.path(device_id + ".pem"), self.path(device_id + ".key")

    def verified_ca(self, name):
        """A CA registered and proven with the CLI (setup for device connections); idempotent."""
        shown = subprocess.run([BIN, "--data", self.data, "-o", "json", "cert", "show", name], capture_output=True, text=True)
        if shown.returncode == 0 and json.loads(shown.stdout)["properties"]["isVerified"]:
            return
        pem = self.make_ca(name)
        open(self.path(name + "-only.pem"), "w").write(first_certificate(pem))
        self.cli("cert", "add", name, self.path(name + "-only.pem"))
        self.cli("cert", "prove", name, "--key", self.path(name + ".key"))

    # ----- the official SDK clients -------------------------------------------------------------

    def mgmt_client(self, token=None):
        from azure.mgmt.iothub import IotHubClient
        return IotHubClient(SdkCredential(token or self.token), SUBSCRIPTION, base_url=self.base,
                            connection_verify=self.ca_file, retry_total=0)

    def dps_client(self, token=None):
        from azure.mgmt.iothubprovisioningservices import IotDpsClient
        return IotDpsClient(SdkCredential(token or self.token), SUBSCRIPTION, base_url=self.base,
                            connection_verify=self.ca_file, retry_total=0)

    def registry_manager(self):
        from azure.iot.hub import IoTHubRegistryManager
        rm = IoTHubRegistryManager.from_connection_string(self.connection_string())
        rm.protocol.config.connection.verify = self.ca_file
        return rm

    def device_client(self, device_id, cert, key, **kwargs):
        from azure.iot.device import IoTHubDeviceClient, X509
        return IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(cert, key), hostname=self.ip, device_id=device_id,
            server_verification_cert=self.ca, connection_retry=False, **kwargs)


# ----- fixtures (imported by the test module; all prefixed sdk_) -----------------------------------

@pytest.fixture(scope="module")
def sdk_server():
    hub = SdkHub()
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture(scope="module")
def sdk_mgmt(sdk_server):
    return sdk_server.mgmt_client()


@pytest.fixture(scope="module")
def sdk_dps(sdk_server):
    return sdk_server.dps_client()


@pytest.fixture(scope="module")
def sdk_registry(sdk_server):
    return sdk_server.registry_manager()


@pytest.fixture
def sdk_devices(sdk_server):
    """A factory of connected azure-iot-device clients (X.509, CA-signed) shut down after the test."""
    clients = []

    def make(device_id, connect=True, **kwargs):
        sdk_server.verified_ca("sdk-device-root")
        cert, key = sdk_server.device_cert(device_id, "sdk-device-root")
        client = sdk_server.device_client(device_id, cert, key, **kwargs)
        clients.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for c in clients:
        try:
            c.shutdown()
        except Exception:
            pass
