"""A real-daemon smoke run on the Salt of the interpreter that runs it (``.ci/run`` runs it with each
supported Salt's venv): ``python -m sandbox up`` starts a salt-master, minions, nginx + PHP-FPM per node and
HAProxy, and releases two versions; then an emergency rollback, a third release and a normal rollback, each
with ``salt-run … --out=json``; then ``python -m sandbox down``. Exit 0 when every step did what it should.

Run from the repository's top folder:  <venv>/bin/python .ci/smoke.py [--classic]

``--classic``: the Salt of that venv has no salt-deploy installed; the sandbox puts this repository into the
master's ``file_roots`` and syncs (``saltutil.sync_all``, ``sync_runners``, ``sync_utils``, ``sync_output``),
the classic route.
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.getcwd())

import salt.version  # noqa: E402

from sandbox import repo as sample_repo  # noqa: E402
from sandbox.cluster import Sandbox  # noqa: E402

NET, LB_PORT = "127.0.251", "8251"


def main():
    path = tempfile.mkdtemp(prefix="dpl-smoke-", dir="/tmp")
    print(f"smoke on Salt {salt.version.__version__}, Python {sys.version.split()[0]}: sandbox in {path}", flush=True)
    try:
        up = subprocess.run([sys.executable, "-m", "sandbox", "up", "--web", "2", "--path", path, "--net", NET,
                             "--lb-port", LB_PORT, "--force", *sys.argv[1:]], timeout=1200, check=False)
        if up.returncode != 0:
            return fail("sandbox up (two releases) failed")
        box = Sandbox.load(path)
        nodes = ["pre-1", "web-1", "web-2"]

        def salt_run(*args):
            proc = subprocess.run([*box.salt_cmd("salt-run"), *args, "--out=json"], capture_output=True, text=True,
                                  timeout=600, check=False)
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                doc = {"error": proc.stdout[-2000:] + proc.stderr[-2000:]}
            print(f"salt-run {' '.join(args)}: exit {proc.returncode}, result {doc.get('result')}", flush=True)
            return proc.returncode, doc

        def currents():
            return {node: box.current(node) for node in nodes}

        second = currents()["web-1"]
        code, doc = salt_run("deploy.rollback", "project=rainbow", "env=pro", "emergency=True")
        if code != 0 or set(currents().values()) != {doc.get("to")} or doc.get("to") == second:
            return fail(f"emergency rollback: {doc.get('error') or currents()}")
        sample_repo.add_release(box.repo, "v1.3.0")
        code, doc = salt_run("deploy.release", "project=rainbow", "env=pro", "ref=v1.3.0")
        if code != 0 or set(currents().values()) != {doc.get("release")}:
            return fail(f"release v1.3.0: {doc.get('error') or currents()}")
        third = doc["release"]
        code, doc = salt_run("deploy.rollback", "project=rainbow", "env=pro")
        if code != 0 or set(currents().values()) != {doc.get("to")} or doc.get("to") in (second, third):
            return fail(f"normal rollback: {doc.get('error') or currents()}")
        print(f"smoke on Salt {salt.version.__version__}: passed", flush=True)
        return 0
    finally:
        subprocess.run([sys.executable, "-m", "sandbox", "down", "--path", path], capture_output=True, timeout=300,
                       check=False)


def fail(why):
    print(f"smoke on Salt {salt.version.__version__}: FAILED: {why}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
