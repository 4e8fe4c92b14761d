"""Unpacking a tar from the repository on the master, with the member checks the nodes use.

The stdlib ``data`` filter alone has had bypasses (CVE-2025-4517 on Python < 3.11.13: a
chain of symlinks longer than PATH_MAX stops ``os.path.realpath``, and a link through it
writes outside the destination).  The checks here are lexical and refuse the whole archive
before anything is written: they are the node module's ``_safe_members``
(``_modules/deploy.py``), which keeps its own copy; tests/unit/test_archive.py pins that
both refuse the same archives.
"""

import os
import tarfile

from deploy_master import DeployError


def safe_members(tar):
    """The members of ``tar``; DeployError naming the first one that could land outside."""
    members = tar.getmembers()
    # Paths are checked lexically, which only holds if no path goes through a symlink of the
    # archive (e.g. 'a/b/d' -> '../..' makes 'a/b/d/a/b/d/../../../../../../etc' reach '/etc').
    symlinks = {"/".join(p for p in m.name.split("/") if p not in ("", ".")) for m in members if m.issym()}
    for member in members:
        name = member.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise DeployError(f"archive member {name!r} is unsafe (absolute path or '..'): release refused")
        if member.isdev() or member.isfifo():
            raise DeployError(f"archive member {name!r} is a device or fifo: release refused")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise DeployError(
                    f"archive member {name!r} goes through the symlink {'/'.join(parts[:i])!r}: release refused"
                )
        if member.issym() or member.islnk():
            link = member.linkname
            walk = parts[:-1] if member.issym() else []
            outside = os.path.isabs(link)
            for step in [] if outside else link.split("/"):
                if step in ("", "."):
                    continue
                if walk and "/".join(walk) in symlinks:
                    raise DeployError(
                        f"archive member {name!r} links to {link!r} through the symlink {'/'.join(walk)!r}: "
                        "release refused"
                    )
                if step != "..":
                    walk.append(step)
                elif walk:
                    walk.pop()
                else:
                    outside = True
                    break
            if outside:
                raise DeployError(f"archive member {name!r} links to {link!r}, outside the release: release refused")
    return members


def unpack(archive, dest):
    """Unpack the tar file ``archive`` into the folder ``dest``: every member checked first
    (nothing is written if one is unsafe), then the stdlib ``data`` filter as a second guard."""
    with tarfile.open(archive) as tar:
        members = safe_members(tar)
        tar.extractall(dest, members=members, filter="data")
