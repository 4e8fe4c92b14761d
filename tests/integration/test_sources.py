"""A release of bytes built elsewhere (``artifact=``), end to end: real master, minions, nginx + PHP-FPM and HAProxy.

Uses the session cluster (``clean_cluster``): an artifact release is a release like any other once built.
"""

import hashlib
import io
import os
import tarfile

from sandbox import repo as sample_repo
from sandbox import web

from .conftest import NODES


def _artifact(cluster, version, name):
    """A tar.gz of the sample repository's head with VERSION set to ``version``, on the master's fileserver."""
    tree = os.path.join(cluster.work, f"artifact-{version}")
    sample_repo.export_release(cluster.repo, "master", tree)
    with open(os.path.join(tree, "VERSION"), "w", encoding="utf-8") as fh:
        fh.write(version)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for entry in sorted(os.listdir(tree)):
            tar.add(os.path.join(tree, entry), arcname=entry)
    folder = os.path.join(cluster.work, "file_roots", "ci")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as fh:
        fh.write(out.getvalue())
    return f"salt://ci/{name}", hashlib.sha256(out.getvalue()).hexdigest()


def test_an_artifact_built_elsewhere_is_released_and_a_mismatch_is_refused(clean_cluster):
    c = clean_cluster
    # a release to go back to, of a version of this module's own (an earlier module may have marked the
    # repository's head bad on a node)
    sample_repo.add_release(c.repo, "v53.1.0")
    assert c.run("deploy.release", project="rainbow", env="pro").returncode == 0
    url, digest = _artifact(c, "7.7.7", "rainbow-7.7.7.tar.gz")
    before = c.currents()
    bad = c.run("deploy.release", project="rainbow", env="pro", artifact=url, sha256="f" * 64, version="7.7.7")
    assert bad.returncode == 2, bad.stdout
    assert "does not match sha256" in bad.stdout and c.currents() == before

    ret = c.run("deploy.release", project="rainbow", env="pro", artifact=url, sha256=digest, version="7.7.7")
    assert ret.returncode == 0, ret.stdout
    release = ret.data["release"]
    assert release.startswith("rainbow_pro_7.7.7_artifact_") and ret.data["commit"] == digest
    assert c.currents() == {n: release for n in NODES}
    for addr, _ in NODES.values():
        assert "rainbow 7.7.7" in web.http_get(f"http://{addr}:8080/")[2]

    back = c.run("deploy.rollback", project="rainbow", env="pro")
    assert back.returncode == 0, back.stdout
    assert c.currents() == before
