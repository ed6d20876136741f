"""Fixtures: a real `iothub serve` per test module on its own loopback address (the device SDK's
MQTT port is fixed at 8883, so parallel hubs need distinct IPs), and helpers around its CLI."""
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("IOTHUB_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/iothub"))
_next_ip = iter(range(40, 60))


class Hub:
    def __init__(self, ip):
        self.ip = ip
        self.dir = tempfile.mkdtemp(prefix="iothub-sdk-")
        self.data = os.path.join(self.dir, "data")
        self.proc = subprocess.Popen(
            [BIN, "--data", self.data, "serve", "--https", f"{ip}:8443", "--mqtt", f"{ip}:8883", "--hostname", ip],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "IOTHUB_LOG": "warn"},
        )
        deadline = time.time() + 60
        for line in self.proc.stdout:
            if line.startswith("https listening on"):
                break
            if time.time() > deadline:
                raise RuntimeError("the hub did not start")
        self.ca_file = os.path.join(self.data, "tls", "ca.pem")
        self.ca = open(self.ca_file).read()
        self.base = f"https://{ip}:8443"

    def cli(self, *args, check=True):
        r = subprocess.run([BIN, "--data", self.data, *args], cwd=self.dir, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"iothub {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def json(self, *args):
        return json.loads(self.cli("-o", "json", *args))

    def path(self, name):
        return os.path.join(self.dir, name)

    def connection_string(self):
        return open(os.path.join(self.data, "connection-string")).read().strip()

    def refusal(self, client_id):
        for r in self.json("connections")["refusals"]:
            if r["clientId"] == client_id:
                return r["reason"]
        return None

    def verified_ca(self, name, parent=None):
        """Makes a CA with the CLI (an intermediate when `parent`), registers it alone, proves it;
        nothing to do when this hub already has it Verified."""
        shown = subprocess.run([BIN, "--data", self.data, "-o", "json", "cert", "show", name], capture_output=True, text=True)
        if shown.returncode == 0 and json.loads(shown.stdout)["properties"]["isVerified"]:
            return
        args = ["pki", "ca", name, "--force"] + (["--parent", parent] if parent else [])
        self.cli(*args)
        first = open(self.path(name + ".pem")).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        open(self.path(name + "-only.pem"), "w").write(first)
        self.cli("cert", "add", name, name + "-only.pem")
        self.cli("cert", "prove", name, "--key", name + ".key")

    def device_cert(self, device_id, ca):
        self.cli("pki", "device", device_id, "--ca-cert", ca + ".pem", "--ca-key", ca + ".key", "--force")
        return self.path(device_id + ".pem"), self.path(device_id + ".key")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def hub():
    h = Hub(f"127.0.0.{next(_next_ip)}")
    yield h
    h.close()


def wait_for(what, predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")
