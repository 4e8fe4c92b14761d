"""
salt-run deploy.rollback refuses a kept release that is not what its manifest says on a node (a file
swapped for another root read-only file of the same size, a web shell added), on the real cluster.

Uses the session cluster (``clean_cluster``): the altered release is one it released for itself.
"""

import os
import stat

from .conftest import WEB
from .test_rollback import release_new


def _same_size_other_content(old, new):
    """A file path of both releases with the same size and another content (VERSION: 4.1.0 / 4.2.0)."""
    for dirpath, _, filenames in os.walk(old):
        for name in sorted(filenames):
            a = os.path.join(dirpath, name)
            b = os.path.join(new, os.path.relpath(a, old))
            sa, sb = os.lstat(a), os.lstat(b) if os.path.lexists(b) else None
            if sb and stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode) and sa.st_uid == sb.st_uid == 0 \
                    and sa.st_size == sb.st_size and sa.st_ino != sb.st_ino:
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    if fa.read() != fb.read():
                        return os.path.relpath(a, old)
    raise AssertionError("no file of the same size and another content in both releases")


def test_rollback_refuses_a_kept_release_altered_on_a_node_and_current_is_untouched(clean_cluster):
    c = clean_cluster
    old = release_new(c)
    new = release_new(c)
    releases = os.path.join(c.root("web-2"), "releases")
    rel = _same_size_other_content(os.path.join(releases, old), os.path.join(releases, new))
    # behind the node's back (the app user could, while it owned the releases' folders): the newer
    # release's root read-only file renamed into the kept one, and a web shell beside the code
    os.rename(os.path.join(releases, new, rel), os.path.join(releases, old, rel))
    with open(os.path.join(releases, old, "public", "shell.php"), "w", encoding="utf-8") as fh:
        fh.write("<?php system($_GET['c']);\n")
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=old)
    assert ret.returncode != 0, ret.stdout[-3000:]
    out = ret.stdout + ret.stderr
    assert f"{rel!r} is not the content" in out and "web-2" in out, out[-3000:]
    assert c.current("web-2") == new  # never switched to the altered release
    assert c.lb_states() == {n: "ready" for n in WEB}
    # the emergency rollback (one call to every node) refuses it on web-2 as well
    before = c.currents()
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=old, emergency=True, force=True)
    assert ret.returncode != 0, ret.stdout[-3000:]
    assert f"{rel!r} is not the content" in ret.stdout + ret.stderr
    assert c.current("web-2") == new
    # a node refused the target: the nodes that switched go back to what they served before the call
    assert c.currents() == before
