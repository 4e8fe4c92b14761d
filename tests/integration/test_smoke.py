"""
The smallest real-daemon run of the main path: a release, a normal rollback, an emergency rollback.
``.ci/run`` runs it once more on every other Salt it supports (3006 LTS, 3007), each in a venv of its own.

Uses the session cluster (``clean_cluster``); on the other Salts ``.ci/smoke.py`` brings up a sandbox.
"""

import salt.version

from sandbox import repo as sample_repo

from .conftest import NODES
from .test_faults import run_retrying

_VERSION = [21, 0]


def _release(c):
    _VERSION[1] += 1
    sample_repo.add_release(c.repo, f"v{_VERSION[0]}.{_VERSION[1]}.0")
    ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert c.currents() == {n: ret.data["release"] for n in NODES}
    return ret.data["release"]


def test_release_rollback_and_emergency_rollback(clean_cluster):
    c = clean_cluster
    version = c.run("deploy.version")
    assert version.returncode == 0 and version.data["salt"] == salt.version.__version__, version.stdout
    first = _release(c)
    second = _release(c)
    assert first != second
    ret = run_retrying(c, "deploy.rollback", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["to"] == first and c.currents() == {n: first for n in NODES}
    third = _release(c)
    ret = run_retrying(c, "deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["to"] != third and c.currents() == {n: ret.data["to"] for n in NODES}
