"""A throw-away etcd v3 server on loopback (Debian's ``etcd-server``): for the sandbox, the tests and bench/.

It runs as the calling user with its own data folder and free ports; ``stop()`` kills it
(the data folder stays, so ``start()`` again is an etcd restart with the same keys and leases).
"""

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EtcdServer:
    """``EtcdServer(folder).start()``; ``endpoint`` is its client URL.

    ``tls``: ``{"cert", "key", "ca"}`` (PEM files): clients speak https and must show a
    certificate signed by ``ca`` (etcd's ``--client-cert-auth``)."""

    def __init__(self, folder, host="127.0.0.1", port=None, peer_port=None, tls=None):
        self.folder, self.host = str(folder), host
        self.port = port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.tls = tls
        self.proc = None

    @property
    def endpoint(self):
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def _tls_args(self):
        if not self.tls:
            return []
        return ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]

    def _health_context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls.get("client_cert", self.tls["cert"]), self.tls.get("client_key", self.tls["key"]))
        return ctx

    def start(self, timeout=20):
        os.makedirs(self.folder, exist_ok=True)
        peer = f"http://{self.host}:{self.peer_port}"
        with open(os.path.join(self.folder, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [ETCD, "--name", "deploy", "--data-dir", os.path.join(self.folder, "data"),
                 "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"deploy={peer}", "--log-level", "warn", *self._tls_args()],
                stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.folder}/etcd.log")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1,
                                            context=self._health_context()) as resp:
                    if b'"true"' in resp.read():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy on {self.endpoint}; see {self.folder}/etcd.log")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()
