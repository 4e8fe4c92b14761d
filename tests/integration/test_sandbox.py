"""The README's first command end to end: ``python -m sandbox up``, ``status``, ``down``.

Runs the real thing as a user would, in its own folder, on its own loopback addresses
and LB port (the cluster tests use 127.0.1.x, the web stack tests 127.0.3.x, a
developer's sandbox 127.0.1.x and port 8088), so it can run beside all of them.

Builds a sandbox of its own: what it proves is ``up`` from nothing and ``down`` leaving nothing.
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from sandbox import cluster, web
import contextlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _sandbox(*args, timeout):
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_of(path):
    """PIDs of any process still running from the sandbox folder (salt daemons, jobs, services)."""
    return cluster.processes_matching(path + "/")


@pytest.fixture
def sandbox_path():
    problems = cluster.missing_requirements()
    assert not problems, "sandbox cannot run here (.ci/run installs these): " + "; ".join(problems)
    path = f"/tmp/dpl-sbx-test-{uuid.uuid4().hex[:8]}"
    yield path
    # safety net: never leave a cluster behind, whatever the test did
    if os.path.exists(path):
        _sandbox("down", "--path", path, timeout=120)
    for pid in _processes_of(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_up_status_down(sandbox_path):
    path = sandbox_path
    net = f"127.0.{random.randint(100, 199)}"
    lb_port = _free_port()
    where = ["--path", path, "--lb-port", str(lb_port), "--net", net]

    up = _sandbox("up", "--web", "3", *where, timeout=300)
    out = up.stdout + up.stderr
    assert up.returncode == 0, out
    # both releases went through, the LB served 1.1.0 after the first and 1.2.0 after the second
    assert "release 1: succeeded" in out, out
    assert "release 2: succeeded" in out, out
    assert "LB served rainbow 1.1.0: yes" in out, out
    assert "LB served rainbow 1.2.0: yes" in out, out
    assert f"GET http://127.0.0.1:{lb_port}/ -> 200 from web-" in out
    assert "'rainbow 1.2.0'" in out
    # the runner's own progress and summary were streamed
    assert "rainbow/pro: release success" in out, out
    # and it says how to go on
    for hint in ("deploy.history project=rainbow env=pro", "deploy.releases project=rainbow env=pro",
                 "deploy.rollback project=rainbow env=pro", "'*' deploy.releases rainbow", "-m sandbox down"):
        assert hint in out, hint

    # everything outlived the `up` process
    status, headers, body = web.http_get(f"http://127.0.0.1:{lb_port}/")
    assert status == 200 and body.startswith("rainbow 1.2.0\n"), body
    assert headers["x-backend-server"] in ("web-1", "web-2", "web-3")
    conf = os.path.join(path, "etc", "salt")
    assert _processes_of(path), "nothing runs after up"

    st = _sandbox("status", "--path", path, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    assert "everything runs" in st.stdout
    assert re.search(r"^ +salt-master +running, pid [0-9]+$", st.stdout, re.M), st.stdout
    for node in ("lb-1", "pre-1", "web-1", "web-2", "web-3"):
        assert f"salt-minion {node}" in st.stdout
    for node in ("pre-1", "web-1", "web-2", "web-3"):
        line = next(ln for ln in st.stdout.splitlines() if ln.strip().startswith(node + " "))
        assert "running" in line and "current: rainbow_pro_v1.2.0_master_" in line, line

    # the printed commands work from another process
    ping = subprocess.run([cluster.salt_bin("salt"), "-c", conf, "--out=json", "--static", "*", "test.ping"],
                          capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0 and '"web-3": true' in ping.stdout, ping.stdout + ping.stderr

    # a second `up` on a running sandbox refuses
    again = _sandbox("up", *where, timeout=60)
    assert again.returncode == 1
    assert "already running" in again.stdout

    down = _sandbox("down", "--path", path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "killed leftover" not in down.stdout, down.stdout  # the daemons stopped on their own
    assert not os.path.exists(path)
    assert _processes_of(path) == []
    assert not web._tcp_open("127.0.0.1", lb_port)

    gone = _sandbox("status", "--path", path, timeout=60)
    assert gone.returncode == 1 and "no sandbox" in gone.stdout
