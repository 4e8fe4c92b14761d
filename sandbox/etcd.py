"""A throw-away etcd v3 server on loopback (Debian's ``etcd-server``): for the sandbox, the tests and bench/.

It runs as the calling user with its own data folder and free ports; ``stop()`` kills it
(the data folder stays, so ``start()`` again is an etcd restart with the same keys and leases).
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EtcdServer:
    """``EtcdServer(folder).start()``; ``endpoint`` is its client URL."""

    def __init__(self, folder, host="127.0.0.1", port=None, peer_port=None):
        self.folder, self.host = str(folder), host
        self.port = port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.proc = None

    @property
    def endpoint(self):
        return f"http://{self.host}:{self.port}"

    def start(self, timeout=20):
        os.makedirs(self.folder, exist_ok=True)
        peer = f"http://{self.host}:{self.peer_port}"
        log = open(os.path.join(self.folder, "etcd.log"), "ab")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [ETCD, "--name", "deploy", "--data-dir", os.path.join(self.folder, "data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"deploy={peer}", "--log-level", "warn"],
            stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.folder}/etcd.log")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
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
