"""Fixtures for test_device_sdk.py: a real `iothub serve` per test module, and the OFFICIAL Azure IoT
device SDK (azure-iot-device 2.14.0, unmodified) pointed at it.

The device SDK's MQTT port is hard-coded to 8883, so every hub needs its own loopback IP: this suite
uses 127.0.0.2-127.0.0.9 (sdk_hub.py uses 127.0.0.20-29). The hub's HTTPS port is 0 (the kernel
picks one); the CLI finds it in DATA/connection-string, which `serve` writes.

Public names here are fixtures `hub` and `device_clients`; helpers are methods of `Hub`, so the test
module never imports this file.
"""
import atexit
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("IOTHUB_BIN", os.path.join(REPO, "target", "debug", "iothub"))
IPS = [f"127.0.0.{n}" for n in range(2, 10)]
START_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0

_running = []  # every hub process started, killed at exit even if a fixture finalizer never ran


@atexit.register
def _kill_leftovers():
    for proc in _running:
        if proc.poll() is None:
            proc.kill()


def _port_free(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(what, predicate, timeout=10.0, interval=0.02):
    """Polls `predicate` until it returns something truthy and returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def first_pem_block(text):
    return text.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"


def pem_blocks(text):
    parts = text.split("-----END CERTIFICATE-----")
    return [p[p.index("-----BEGIN CERTIFICATE-----"):] + "-----END CERTIFICATE-----\n"
            for p in parts if "-----BEGIN CERTIFICATE-----" in p]


class Hub:
    """One running `iothub serve` in a temporary directory, plus its CLI."""

    def __init__(self):
        if not os.path.exists(BIN):
            raise RuntimeError(f"the iothub binary {BIN} does not exist: run `cargo build -p iothub` "
                               "or set IOTHUB_BIN")
        self.dir = tempfile.mkdtemp(prefix="iothub-device-sdk-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.proc = None
        errors = []
        for ip in IPS:
            if not _port_free(ip, 8883):
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
        self.ca = open(self.ca_file).read()

    def _start(self, ip):
        self.ip = ip
        # stdout (the readiness lines) and stderr (the log, with every refusal) go to one file,
        # polled below: nothing can block on a full pipe, and the log is there for failure reports.
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [BIN, "--data", self.data, "serve", "--https", f"{ip}:0", "--mqtt", f"{ip}:8883",
                 "--hostname", ip],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _running.append(self.proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            lines = self.log().splitlines()
            if any(line.startswith("https listening on") for line in lines):
                if not any(line.startswith(f"mqtt listening on {ip}:8883") for line in lines):
                    raise RuntimeError(f"the hub on {ip} printed no 'mqtt listening on {ip}:8883':\n{self.log()}")
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"iothub serve on {ip} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"iothub serve on {ip} printed no 'https listening on' within {START_TIMEOUT} s:\n{self.log()}")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self):
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- the CLI ----------------------------------------------------------------------------------

    def run(self, *args):
        return subprocess.run([BIN, "--data", self.data, *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)

    def cli(self, *args):
        r = self.run(*args)
        if r.returncode != 0:
            raise AssertionError(f"`iothub {' '.join(args)}` failed ({r.returncode}):\n{r.stderr}{r.stdout}")
        return r.stdout

    def json(self, *args):
        return json.loads(self.cli("-o", "json", *args))

    def path(self, name):
        return os.path.join(self.dir, name)

    def read(self, name):
        with open(self.path(name)) as f:
            return f.read()

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    wait_for = staticmethod(wait_for)

    # ----- observations -----------------------------------------------------------------------------

    def connections(self):
        return self.json("connections")

    def live_ids(self):
        return [s["deviceId"] for s in self.connections()["live"]]

    def refusals(self, client_id):
        """The recorded refusal reasons of `client_id`, newest first."""
        return [r["reason"] for r in self.connections()["refusals"] if r["clientId"] == client_id]

    def monitor(self, device_id, count, timeout=15):
        out = self.cli("-o", "json", "monitor", "--from", "1", "--device", device_id,
                       "--count", str(count), "--timeout", str(timeout))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def log_lines(self, needle):
        return [line for line in self.log().splitlines() if needle in line]

    # ----- PKI made by the CLI ----------------------------------------------------------------------

    def make_ca(self, name, parent=None):
        args = ["pki", "ca", name, "--force"] + (["--parent", parent] if parent else [])
        self.cli(*args)
        return self.path(name + ".pem"), self.path(name + ".key")

    def register_ca(self, name, prove=True):
        """Uploads the first certificate of NAME.pem alone (an intermediate's file also holds its
        parents) under NAME, then proves possession of NAME.key unless `prove` is false."""
        only = self.write(name + "-only.pem", first_pem_block(self.read(name + ".pem")))
        self.cli("cert", "add", name, only)
        if prove:
            self.cli("cert", "prove", name, "--key", self.path(name + ".key"))
        status = self.json("cert", "show", name)["properties"]
        assert status["isVerified"] is prove, status
        return status

    def device_cert(self, device_id, ca, chain_len=None):
        """ID.pem (leaf + CA chain, as `pki device` writes it) and ID.key, signed by CA.pem/CA.key;
        with `chain_len`, the file keeps only that many certificates (leaf first)."""
        self.cli("pki", "device", device_id, "--ca-cert", self.path(ca + ".pem"),
                 "--ca-key", self.path(ca + ".key"), "--force")
        cert = self.path(device_id + ".pem")
        if chain_len is not None:
            blocks = pem_blocks(self.read(device_id + ".pem"))
            assert len(blocks) >= chain_len, blocks
            self.write(device_id + ".pem", "".join(blocks[:chain_len]))
        return cert, self.path(device_id + ".key")

    # ----- the official device SDK ------------------------------------------------------------------

    def x509_client(self, device_id, cert, key, **kwargs):
        from azure.iot.device import X509, IoTHubDeviceClient
        return IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(cert_file=cert, key_file=key), hostname=self.ip, device_id=device_id,
            server_verification_cert=self.ca, **{"connection_retry": False, "keep_alive": 30, **kwargs})

    def sas_client(self, device_id, key, **kwargs):
        from azure.iot.device import IoTHubDeviceClient
        return IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=self.ip, device_id=device_id,
            server_verification_cert=self.ca, **{"connection_retry": False, "keep_alive": 30, **kwargs})


@pytest.fixture(scope="module")
def hub():
    h = Hub()
    try:
        yield h
    finally:
        h.close()


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
