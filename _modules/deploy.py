"""
Versioned releases of a project on one node: the node side of ``salt-run deploy.release``.

A project's tree on a node (``root`` comes from pillar ``deploy:projects:<project>:root``)::

    <root>/releases/<release>/   one directory per release, never modified once in place
    <root>/shared/               paths kept across releases (logs, uploads), linked into each release
    <root>/meta/                 release metadata and the switch record, beside the served tree
    <root>/current -> <root>/releases/<release>   switched atomically

The module implements the article's node steps: unpack a distributed artifact into a
new release directory, copy the per-node config and files into it, re-point the
``current`` symlink, restart the web service and test it, and roll back to the last
good release.  Everything it needs about the project comes from the node's pillar
(see docs/pillar.md).

:depends: jinja2 (ships with Salt)
"""

import contextlib
import copy
import datetime
import errno
import grp
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zlib

import salt.fileclient
from salt.exceptions import CommandExecutionError

try:  # Salt >= 3008 wraps pillar data to mask secrets in output
    from salt.utils.secret import expose as expose_secrets
except ImportError:
    expose_secrets = None

log = logging.getLogger(__name__)

__virtualname__ = "deploy"

# The minion has no deploy_master: what the node shares with the master is copied here (the names, the
# manifest's format, tree hash, file mode and link rules, the tar member checks, the rollback target), each
# copy pinned to the master's by a unit test (tests/unit: test_names, test_manifest, test_links, test_archive,
# test_policy).
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
STATUSES = ("prepared", "good", "bad")
FORCED = "forced: switched to although marked bad"  # the history event of a switch that took force=True
RESTART_ACTIONS = ("start", "stop", "restart", "reload")
STALE_TMP_SECONDS = 600
OUTPUT_TAIL = 200  # characters of a failing step's output that leave the node (redacted, see _redacted)
OUTPUT_LOG = 64 << 10  # characters of it that go to the minion's own log
REDACT_MIN = 4  # pillar values shorter than this are not redacted from output (they would only garble it)
# what a config template sees of the grains unless the project lists its own (template_grains)
TEMPLATE_GRAINS = ("id", "host", "nodename", "fqdn", "domain", "os", "os_family", "osrelease", "oscodename",
                   "num_cpus", "mem_total", "ipv4", "ipv6")
MAX_REDIRECTS = 5
BACKOFF_FIRST = 0.05  # seconds before a check's second attempt; doubled after each one, up to its delay
REDIRECTS = (301, 302, 303, 307, 308)
BLOB_RE = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_MEMBER = "manifest.json"
MANIFEST_MAX = 256 << 20  # bytes of a content archive's manifest.json
CHUNK = 1 << 20


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------- helpers


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_project(project):
    if not isinstance(project, str) or not PROJECT_RE.fullmatch(project):  # not match: '$' accepts a trailing newline
        raise CommandExecutionError(
            f"invalid project name {project!r}: use [a-z0-9][a-z0-9_-]* (no '/', '..', spaces)"
        )


def _check_release(release):
    # fullmatch, not match: '$' accepts a trailing newline; 'switch' would be meta/switch.json, the switch record
    if not isinstance(release, str) or not RELEASE_RE.fullmatch(release) or ".." in release or release == "switch":
        raise CommandExecutionError(
            f"invalid release name {release!r}: use [A-Za-z0-9._-] only, no '/', '..' or spaces ('switch' is reserved)"
        )


def _check_relpath(path, what):
    """A path inside a release: relative, no '..', no empty parts."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise CommandExecutionError(f"{what} {path!r} must be a relative path inside the release")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CommandExecutionError(f"{what} {path!r} must not contain '..', '.' or empty parts")
    return path


def _project(project, pillar=None):
    """Return the validated project definition from pillar (the node's own unless given)."""
    _check_project(project)
    if pillar is None:
        pillar = __pillar__
    conf = ((pillar.get("deploy") or {}).get("projects") or {}).get(project)
    if not isinstance(conf, dict) or not conf:
        raise CommandExecutionError(
            f"project {project!r} is not defined in this node's pillar (deploy:projects:{project})"
        )
    root = conf.get("root")
    if not isinstance(root, str) or not root:
        raise CommandExecutionError(f"project {project!r}: pillar has no 'root'")
    try:
        real = os.path.realpath(root)  # realpath: normpath keeps '//'
    except OSError:  # a link at the path that another user is changing: judge the text (links are refused later)
        real = os.path.normpath("/" + root.lstrip("/"))
    if not os.path.isabs(root) or real == "/":
        raise CommandExecutionError(
            f"project {project!r}: root {root!r} must be an absolute path other than '/'"
        )
    conf = dict(conf)
    conf["root"] = os.path.normpath(root)
    return conf


def _fresh_pillar():
    """This node's pillar compiled afresh by the master (secrets unmasked: Salt >= 3008 masks them)."""
    try:
        return __salt__["pillar.items"](unmask=True)
    except TypeError:  # Salt < 3008 has no masking
        return __salt__["pillar.items"]()


def _plain(data):
    """Pillar data as plain dicts and lists (Salt >= 3008 wraps it to mask secrets in output)."""
    if expose_secrets is not None:
        data = expose_secrets(data)
    return data


def _in_memory_pillar_is(fresh):
    """Whether the minion's in-memory pillar (what later jobs see as ``__pillar__``) equals ``fresh``.

    Refreshing it is a second pillar compile on the master for every node: asked for only when
    the pillar really changed since the minion last compiled it.  The minion keeps a ``schedule``
    key in its in-memory pillar whatever the pillar holds (``{}`` when it has none, and each of the
    pillar's schedule items with the scheduler's own ``_`` keys): compared as the minion holds it."""
    current = __pillar__.value() if hasattr(__pillar__, "value") else __pillar__
    try:
        current, fresh = _plain(dict(current)), _plain(dict(fresh))
        if _schedule_as_held(current.pop("schedule", None)) != _schedule_as_held(fresh.pop("schedule", None)):
            return False
        return current == fresh
    except Exception:  # pylint: disable=broad-except  # anything odd: refresh, as before
        return False


def _schedule_as_held(schedule):
    """A pillar's ``schedule`` as the minion's refresh keeps it: ``{}`` for none, each item without
    the keys starting with ``_`` (the scheduler's own, which a refresh leaves out of its comparison)."""
    if not schedule:
        return {}
    return {name: {k: v for k, v in item.items() if not str(k).startswith("_")} if isinstance(item, dict) else item
            for name, item in dict(schedule).items()}


def _paths(conf):
    """The project's paths on this node, after refusing a layout root does not control alone."""
    root = conf["root"]
    paths = {
        "root": root,
        "releases": os.path.join(root, "releases"),
        "shared": os.path.join(root, "shared"),
        "meta": os.path.join(root, "meta"),
        "current": os.path.join(root, "current"),
        "content": os.path.join(root, "content"),
        "manifests": os.path.join(root, "meta", "manifest"),
    }
    _check_layout(paths)
    return paths


def _root_only(st, sticky_ok=False):
    """Why a folder (its lstat) can be changed by someone other than root, or None."""
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}", "chown root:root"
    sticky = sticky_ok and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o002 and not sticky:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})", "chmod go-w"
    if st.st_mode & 0o020 and st.st_gid != 0 and not sticky:
        return f"is writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):04o})", "chmod go-w"
    return None


def _check_layout(paths):
    """
    Refuse a project whose root, releases/, meta/ or a folder above the root is a symlink or can
    be changed by anyone but root: whoever can swap releases/ or meta/ (forged metadata, a
    releases/ link) makes root serve, chown or delete what they want.  Folders not created yet
    are skipped (prepare creates them root-owned).  A root-owned sticky folder above the root
    (like /tmp, mode 1777) is accepted: nobody else can rename or remove what root made in it.
    """
    root = paths["root"]
    checks = [(a, True) for a in _ancestors(root)] + [
        (root, False), (paths["releases"], False), (paths["meta"], False), (paths["content"], False)]
    for path, is_ancestor in checks:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if is_ancestor or path == root:
                break  # nothing below a missing folder exists yet
            continue
        if stat.S_ISLNK(st.st_mode):
            fix = ("give the real path of the project root in pillar (deploy:projects:<project>:root)"
                   if is_ancestor or path == root else "make it a real directory owned by root, mode 0755")
            raise CommandExecutionError(f"{path} is a symlink: refusing the project layout; {fix}")
        if not stat.S_ISDIR(st.st_mode):
            raise CommandExecutionError(f"{path} is not a directory: refusing the project layout")
        why = _root_only(st, sticky_ok=is_ancestor)
        if why:
            raise CommandExecutionError(
                f"{path} {why[0]}: the project root, releases/, meta/, content/ and every folder above them must be "
                f"writable by root only, or another user could swap releases or metadata and make root act "
                f"on them; fix it with: {why[1]} {path} (salt/deploy/init.sls lays the root out right)"
            )


def _make_layout(paths):
    """
    Create the project root, releases/, shared/ and meta/ where missing, through descriptors.

    The nearest existing folder above a missing root may be one anyone can write (a root-owned
    sticky folder like /tmp): another user can plant a link or a folder of their own at the
    root's path at any moment.  So each folder is made with ``mkdir`` relative to its parent's
    descriptor, opened with ``O_NOFOLLOW`` and kept only if it is root's and nobody else can
    write it (``fstat``); its mode is set with ``fchmod``.  Anything else is refused.
    """
    missing, top = [], paths["root"]
    while not os.path.lexists(top):
        missing.insert(0, os.path.basename(top))
        top = os.path.dirname(top)
    try:
        fd, _ = _open_real_dir(top, f"project root {paths['root']}")
    except FileNotFoundError:
        raise CommandExecutionError(
            f"{top} changed while the project root {paths['root']} was created: refusing the project layout"
        ) from None
    try:
        for name in missing:
            top = os.path.join(top, name)
            sub = _mkdir_at(fd, name, 0o755, top)
            os.close(fd)
            fd = sub
        os.fchmod(fd, 0o755)  # the root (checked by _check_layout, or just made)
        for key, mode in (("releases", 0o755), ("meta", 0o750)):
            os.close(_mkdir_at(fd, os.path.basename(paths[key]), mode, paths[key]))
        with contextlib.suppress(FileExistsError):
            os.mkdir("shared", 0o755, dir_fd=fd)  # the app user's once salt/deploy/init.sls hands it over
    finally:
        os.close(fd)


def _mkdir_at(parent, name, mode, path):
    """Descriptor of the folder ``name`` in ``parent`` (made if missing), root's, ``mode``; refuses
    a link, a non-folder, or a folder someone else owns or can write."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):  # ENOENT: a link there, gone again
            raise
        raise CommandExecutionError(
            f"{path} is a symlink or not a directory (made by another user while it was created?): refusing the "
            "project layout; create it by hand, root's, mode 0755 (salt/deploy/init.sls lays the root out right)"
        ) from None
    why = _root_only(os.fstat(fd))
    if why:
        os.close(fd)
        raise CommandExecutionError(
            f"{path} {why[0]} (made by another user while it was created?): refusing the project layout; "
            f"fix it with: {why[1]} {path}"
        )
    os.fchmod(fd, mode)
    return fd


def _ancestors(path):
    """'/a/b/c' -> ['/', '/a', '/a/b']."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


def _ids(conf):
    user = conf.get("user") or "root"
    group = conf.get("group") or user
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise CommandExecutionError(f"project user {user!r} does not exist on this node") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise CommandExecutionError(f"project group {group!r} does not exist on this node") from None
    return uid, gid


def _write_json(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=str)  # str: dates given in meta=
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # full disk, unserialisable data: leave no temporary file behind
        raise


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except ValueError:
        log.warning("deploy: ignoring unreadable metadata file %s", path)
        return default


def _meta_path(paths, release):
    return os.path.join(paths["meta"], f"{release}.json")


def _read_meta(paths, release):
    return _read_json(_meta_path(paths, release))


def _update_meta(paths, release, event, status=None):
    meta = _read_meta(paths, release)
    if meta is None:
        raise CommandExecutionError(f"release {release!r} is not prepared on this node")
    meta.setdefault("history", []).append({"event": event, "at": _now()})
    if status:
        meta["status"] = status
    if event == "activated":
        meta["activated_at"] = time.time()
    _write_json(_meta_path(paths, release), meta)
    return meta


def _current_target(paths):
    """Name of the release ``current`` points to, None if absent; refuse anything unexpected."""
    current = paths["current"]
    if not os.path.lexists(current):
        return None
    if not os.path.islink(current):
        raise CommandExecutionError(
            f"{current} is not a symlink: refusing to touch it (move it away by hand first)"
        )
    target = os.readlink(current)
    if not os.path.isabs(target):
        target = os.path.join(paths["root"], target)
    target = os.path.normpath(target)
    if os.path.dirname(target) != paths["releases"]:
        raise CommandExecutionError(
            f"{current} points to {target}, outside {paths['releases']}: refusing to touch it"
        )
    return os.path.basename(target)


def _switch_link(paths, release):
    """Point ``current`` at a release: new link under a temporary name, renamed over ``current``."""
    tmp = os.path.join(paths["root"], f".current-{os.getpid()}-{time.monotonic_ns()}")
    os.symlink(os.path.join(paths["releases"], release), tmp)
    try:
        os.replace(tmp, paths["current"])
    except OSError:
        os.unlink(tmp)
        raise


def _safe_members(tar):
    """Refuse the whole archive if any member could land outside the release."""
    members = tar.getmembers()
    # Paths are checked lexically, which only holds if no path goes through a symlink of the
    # archive (e.g. 'a/b/d' -> '../..' makes 'a/b/d/a/b/d/../../../../../../etc' reach '/etc').
    symlinks = {"/".join(p for p in m.name.split("/") if p not in ("", ".")) for m in members if m.issym()}
    for member in members:
        name = member.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise CommandExecutionError(
                f"archive member {name!r} is unsafe (absolute path or '..'): release refused"
            )
        if member.isdev() or member.isfifo():
            raise CommandExecutionError(f"archive member {name!r} is a device or fifo: release refused")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise CommandExecutionError(
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
                    raise CommandExecutionError(
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
                raise CommandExecutionError(
                    f"archive member {name!r} links to {link!r}, outside the release: release refused"
                )
    return members


def _unpack(archive, dest):
    try:
        with tarfile.open(archive, "r:*") as tar:
            _safe_members(tar)
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise CommandExecutionError(f"cannot unpack {archive}: {exc}") from exc


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _file_mode(st_mode):
    """0o755 when the file's owner may execute it, else 0o644: git's rule, as the master's manifest keeps a
    file's mode (a copy of deploy_master.manifest.file_mode, pinned by tests/unit/test_manifest.py)."""
    return 0o755 if st_mode & 0o100 else 0o644


def _root_modes(tmp, files):
    """
    Make everything in the release being built root's: folders root:root 0755 and, with ``files``
    (a tree unpacked from a tar), regular files root:root 0644 (0755 if executable).  A release
    is root's code: the app user can create, rename or remove nothing in it.

    Walked with descriptors (``os.fwalk``, no link followed), and ``tmp`` itself stays root's 0700
    until prepare renames it into place: nobody else can reach into it meanwhile.  Files of a
    release built from the store are its blobs' hard links (root's, read-only): never touched.
    """
    for top, _, names, dfd in os.fwalk(tmp, follow_symlinks=False):
        st = os.fstat(dfd)
        if (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(dfd, 0, 0)
        os.fchmod(dfd, 0o700 if top == tmp else 0o755)
        if not files:
            continue
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    continue  # a symlink: root's already (made by root), its mode means nothing
                raise
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    if (st.st_uid, st.st_gid) != (0, 0):
                        os.fchown(fd, 0, 0)
                    os.fchmod(fd, _file_mode(st.st_mode))
            finally:
                os.close(fd)


def _writable(conf):
    """The project's ``writable`` paths, refusing one that is not a clean relative path or that
    overlaps a shared, config or files path (each path of a release has one role)."""
    writable = conf.get("writable") or []
    if not isinstance(writable, list):
        raise CommandExecutionError(f"writable: give a list of relative paths, not {writable!r}")
    roles = [(p, "shared") for p in conf.get("shared") or []]
    roles += [(p, "config") for p in conf.get("config") or {}] + [(p, "files") for p in conf.get("files") or {}]
    for rel in writable:
        _check_relpath(rel, "writable path")
        for other, role in roles:
            if isinstance(other, str) and (other == rel or other.startswith(rel + "/") or rel.startswith(other + "/")):
                raise CommandExecutionError(
                    f"writable path {rel!r} overlaps the {role} path {other!r}: give each path of a release one role"
                )
    return writable


def _make_writable(conf, tmp, uid, gid):
    """
    Each ``writable`` path: an empty folder of the project user inside the release (what the build
    shipped there is removed), its parents root's 0755.  Made last, through descriptors: a link
    on the way (the build's) is refused, never followed.
    """
    for rel in _writable(conf):
        parts = rel.split("/")
        fd = os.open(tmp, _DIR_FLAGS)
        try:
            for i, name in enumerate(parts):
                if i == len(parts) - 1:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        # its parents were opened without following a link, in a tree only root can reach
                        shutil.rmtree(os.path.join(tmp, *parts))
                    elif st is not None:
                        os.unlink(name, dir_fd=fd)
                    os.mkdir(name, 0o700, dir_fd=fd)
                else:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise CommandExecutionError(
                            f"writable path {rel!r}: {'/'.join(parts[:i + 1])} is a symlink or not a folder in the "
                            "release: root never follows a link there; make it a real folder in the build"
                        ) from None
                    raise
                os.close(fd)
                fd = sub
                os.fchmod(fd, 0o755)
            os.fchown(fd, uid, gid)  # the folder made above, still empty
        finally:
            os.close(fd)


def _inside(base, relpath, what):
    """Absolute path of relpath inside base, refusing anything that resolves outside it."""
    _check_relpath(relpath, what)
    full = os.path.realpath(os.path.join(base, relpath))
    if full != os.path.realpath(base) and not full.startswith(os.path.realpath(base) + os.sep):
        raise CommandExecutionError(f"{what} {relpath!r} resolves outside the release")
    return full


def _make_shared(paths, rel, uid, gid):
    """
    Create ``shared/<rel>`` if missing, each new folder handed to the project user.

    shared/ belongs to the project user, so it is walked with ``openat``/``O_NOFOLLOW``: a
    symlink there is refused, never followed, and only a folder this call has just made (still
    empty and root's) is chowned, through its descriptor.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(paths["shared"], flags)  # its parent, the root, is root's only (_check_layout)
    done = ["shared"]
    try:
        for name in rel.split("/"):
            done.append(name)
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            try:
                sub = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise CommandExecutionError(
                        f"shared path {rel!r}: {'/'.join(done)} is a symlink or not a directory: the project "
                        "user can write shared/, so root never follows a link there; make it a real directory"
                    ) from None
                raise
            os.close(fd)
            fd = sub
            if created:
                st = os.fstat(fd)
                if st.st_uid == 0 and st.st_nlink == 2:  # still the empty folder made above
                    os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _link_shared(conf, paths, tmp, uid, gid):
    for rel in conf.get("shared") or []:
        _check_relpath(rel, "shared path")
        if os.path.dirname(rel):  # 'storage/logs' under a shared 'storage' is the shared dir itself: never rmtree it
            _inside(tmp, os.path.dirname(rel), f"shared path {rel!r}: its parent")
        _make_shared(paths, rel, uid, gid)
        target = os.path.join(paths["shared"], rel)
        link = os.path.join(tmp, rel)
        if os.path.lexists(link):
            if os.path.isdir(link) and not os.path.islink(link):
                shutil.rmtree(link)
            else:
                os.unlink(link)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)  # root's link: the app user cannot repoint it


def _write_file(path, text, mode, uid, gid):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)  # a fresh file: never written through a link (a store blob's hard link)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _mode(value, default, what):
    if value is None:
        return default
    try:
        mode = int(str(value), 8)
    except ValueError:
        raise CommandExecutionError(f"{what}: mode {value!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise CommandExecutionError(f"{what}: mode {value!r} is out of range")
    return mode


def _template_source(spec, dest, tmp):
    source = spec.get("source") if isinstance(spec, dict) else None
    if not source:
        raise CommandExecutionError(f"config {dest}: no 'source' given")
    if source.startswith("salt://"):
        text = __salt__["cp.get_file_str"](source)
        if text is False or text is None:
            raise CommandExecutionError(f"config {dest}: source {source} does not exist on the master")
        return text
    path = _inside(tmp, source, f"config {dest}: source")
    if not os.path.isfile(path):
        raise CommandExecutionError(f"config {dest}: source {source!r} is not a file in the release")
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _declared(conf, key, default):
    """A project's list of pillar or grains keys its templates may read (``a:b:c`` for nested keys)."""
    value = conf.get(key, default)
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) and k and ".." not in k for k in value):
        raise CommandExecutionError(
            f"project {conf.get('name')!r}: {key} must be a list of keys, e.g. [{conf.get('name')}_secrets, 'a:b']"
        )
    return value


def _subset(data, keys):
    """Only the declared keys of ``data`` (pillar or grains), nested as in ``data``.

    The folders on the way to a declared key are there even when the key itself is missing, so
    that ``{{ pillar.a.b.c | default('x') }}`` works for a declared ``a:b:c``.
    """
    out = {}
    for key in keys:
        parts = key.split(":")
        src, dst = data, out
        for i, part in enumerate(parts):
            if not isinstance(src, dict) or part not in src or not isinstance(dst, dict):
                break
            if i == len(parts) - 1:
                dst[part] = copy.deepcopy(src[part])
            else:
                src = src[part]
                dst = dst.setdefault(part, {})
    return out


# What one config file's rendering may take (pillar ``template_limits`` overrides any of them):
# ``seconds`` of CPU, ``bytes`` of output, ``memory`` beyond the renderer's own start.
TEMPLATE_LIMITS = {"seconds": 5, "bytes": 1 << 20, "memory": 256 << 20}
# The renderer's wall time is bounded too, as a backstop: ``seconds`` times this plus the start
# grace.  A renderer on a busy node waits for a core; only its own CPU time counts against ``seconds``.
TEMPLATE_WALL_FACTOR = 4
TEMPLATE_START_GRACE = 2  # wall seconds the renderer may take to start, on top of the limit

# The renderer: a child of the minion's own Python, fed the template, the (already subset) context
# and the limits on stdin; it answers one JSON object on stdout.  Jinja's sandbox (no attribute
# starting with '_', no mutation of the data, no product of a string or list over the size limit)
# under RLIMIT_CPU and RLIMIT_AS, streaming its output against the size limit.  It sees nothing of
# the minion but what it is given: no pillar beyond the template's context, no loader, no opts.
_RENDER_CHILD = r"""
import json, os, resource, sys
job = json.loads(sys.stdin.buffer.read())
sys.path[:0] = job["path"]
import jinja2, jinja2.sandbox
limits = job["limits"]
reserve = bytearray(1 << 16)

def answer(obj):
    os.write(1, json.dumps(obj).encode())
    os._exit(0)

import re
WIDTHS = re.compile(r"[0-9]+")
AMPLIFIERS = {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map", "replace", "indent",
              "wordwrap", "join", "truncate"}
WIDENING = {"center", "ljust", "rjust", "zfill", "expandtabs", "indent"}

def guard(name, value, args, kwargs):
    # refuse before computing a string the size limit forbids (RLIMIT_AS is the backstop)
    most = limits["bytes"]
    formatting = name in ("format", "format_map", "%")
    if name in WIDENING or (formatting and isinstance(value, str) and "*" in value):  # a width argument
        nums = [a for a in list(args) + list(kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
        if any(n > most for n in nums):
            answer({"limit": "bytes"})
    if formatting and isinstance(value, str):  # a width written in the format string itself
        if any(len(w) >= 30 or int(w) > most for w in WIDTHS.findall(value)):
            answer({"limit": "bytes"})
    if name == "replace" and isinstance(value, str) and len(args) >= 2 \
            and isinstance(args[0], str) and isinstance(args[1], str):
        hits = value.count(args[0]) if args[0] else len(value) + 1
        if len(value) + hits * max(len(args[1]) - len(args[0]), 0) > most:
            answer({"limit": "bytes"})

class Env(jinja2.sandbox.ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "%"])

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        for name in AMPLIFIERS & set(self.filters):
            self.filters[name] = self.guarded_filter(name, self.filters[name])

    @staticmethod
    def guarded_filter(name, func):
        def wrapper(*args, **kwargs):
            start = 1 if args and not isinstance(args[0], str) and hasattr(args[0], "environment") else 0
            rest = args[start:]
            if rest:
                guard(name, rest[0], rest[1:], kwargs)
            return func(*args, **kwargs)
        for attr in ("jinja_pass_arg",):
            if hasattr(func, attr):
                setattr(wrapper, attr, getattr(func, attr))
        return wrapper

    def call(__self, __context, __obj, *args, **kwargs):
        if isinstance(getattr(__obj, "__self__", None), str) and getattr(__obj, "__name__", "") in AMPLIFIERS:
            guard(__obj.__name__, __obj.__self__, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise jinja2.sandbox.SecurityError("power too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and len(seq) * times > limits["bytes"]:
                    answer({"limit": "bytes"})
        if operator == "%" and isinstance(left, str):
            guard("%", left, right if isinstance(right, tuple) else (right,), {})
        return super().call_binop(context, operator, left, right)

def line_of(exc):
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line

with open("/proc/self/statm") as fh:
    base = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
cpu = max(int(-(-limits["seconds"] // 1)), 1)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (base + limits["memory"], base + limits["memory"]))
try:
    env = Env(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    out, size = [], 0
    for chunk in env.from_string(job["source"]).generate(job["context"]):
        size += len(chunk.encode("utf-8", "surrogatepass"))
        if size > limits["bytes"]:
            answer({"limit": "bytes"})
        out.append(chunk)
    text = "".join(out)
except MemoryError:
    del reserve
    answer({"limit": "memory"})
except Exception as exc:
    answer({"error": type(exc).__name__, "line": line_of(exc)})
answer({"text": text})
"""


def _template_limits(conf):
    """The project's ``template_limits`` over :data:`TEMPLATE_LIMITS`, validated."""
    given = conf.get("template_limits") or {}
    if not isinstance(given, dict) or set(given) - set(TEMPLATE_LIMITS) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in given.values()):
        raise CommandExecutionError(
            f"project {conf.get('name')!r}: template_limits must map some of {', '.join(TEMPLATE_LIMITS)} "
            "to positive numbers, e.g. {seconds: 5, bytes: 1048576, memory: 268435456}"
        )
    limits = {**TEMPLATE_LIMITS, **given}
    limits["bytes"], limits["memory"] = int(limits["bytes"]), int(limits["memory"])
    return limits


_TEMPLATE_HINTS = {
    "UndefinedError": "an undefined variable, or pillar or grains the project does not list in "
                      "template_pillar / template_grains",
    "SecurityError": "the sandbox refused it (attributes starting with '_', changing data, huge results)",
    "TemplateSyntaxError": "syntax error",
}

_LIMIT_TEXT = {
    "seconds": "takes longer than the time limit of {seconds:g} s",
    "bytes": "produces more than the size limit of {bytes} bytes",
    "memory": "needs more than the memory limit of {memory} bytes",
}


def _render(dest, source, context, limits):
    """Render one template in the bounded child (see :data:`_RENDER_CHILD`); a failure names the
    file, the line and the exception type, or the limit it went over, never a value."""
    job = json.dumps({
        "source": source,
        "context": context,
        "limits": limits,
        "path": [p for p in sys.path if os.path.isabs(p)],
    }, default=str).encode()
    proc = None
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _RENDER_CHILD], input=job, capture_output=True, cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            timeout=limits["seconds"] * TEMPLATE_WALL_FACTOR + TEMPLATE_START_GRACE, check=False,
        )
        answer = json.loads(proc.stdout) if proc.returncode == 0 else None
    except subprocess.TimeoutExpired:
        answer = {"limit": "seconds"}
    except (OSError, ValueError):
        answer = None
    if answer is None and proc is not None and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        answer = {"limit": "seconds"}
    if isinstance(answer, dict) and isinstance(answer.get("text"), str):
        return answer["text"]
    if isinstance(answer, dict) and answer.get("limit") in _LIMIT_TEXT:
        limit = answer["limit"]
        raise CommandExecutionError(
            f"config {dest}: the template {_LIMIT_TEXT[limit].format(**limits)} "
            f"(template_limits: {limit}); nothing was switched"
        )
    if isinstance(answer, dict) and answer.get("error"):
        kind, line = str(answer["error"]), answer.get("line")
        hint = _TEMPLATE_HINTS.get(kind)
        raise CommandExecutionError(
            f"config {dest}: template error at line {line if line else '?'}: {kind}"
            f"{f' ({hint})' if hint else ''}; values are never shown"
        )
    raise CommandExecutionError(
        f"config {dest}: the template renderer failed (exit {getattr(proc, 'returncode', None)}); "
        "values are never shown"
    )


def _template_context(conf, pillar, release):
    """What a config template sees (see :func:`_render_config`)."""
    grains = __grains__.value() if hasattr(__grains__, "value") else dict(__grains__)
    context = {
        "pillar": _subset(pillar, _declared(conf, "template_pillar", [])),
        "grains": _subset(grains, _declared(conf, "template_grains", TEMPLATE_GRAINS)),
        "project": conf.get("name"),
        "release": release,
        "root": conf["root"],
    }
    return context


def _render_config(conf, pillar, tmp, release, uid, gid):
    """Render the ``config`` templates in Jinja's sandbox, with only what the project declares.

    A template sees ``pillar`` (the keys listed in ``template_pillar``), ``grains`` (those in
    ``template_grains``, default :data:`TEMPLATE_GRAINS`), ``project``, ``release`` and ``root``.
    Each file is rendered in a child process bounded by ``template_limits`` (:data:`TEMPLATE_LIMITS`).
    """
    configs = conf.get("config") or {}
    if not configs:
        return
    limits = _template_limits(conf)
    context = _template_context(conf, pillar, release)
    for dest, spec in configs.items():
        path = _inside(tmp, dest, "config file")
        source = _template_source(spec, dest, tmp)
        text = _render(dest, source, context, limits)
        _write_file(path, text, _mode(spec.get("mode"), 0o640, f"config {dest}"), uid, gid)


def _write_files(conf, tmp, uid, gid):
    for dest, spec in (conf.get("files") or {}).items():
        path = _inside(tmp, dest, "file")
        if not isinstance(spec, dict) or "contents" not in spec:
            raise CommandExecutionError(f"file {dest}: give 'contents' (and optionally 'mode')")
        _write_file(path, str(spec["contents"]), _mode(spec.get("mode"), 0o644, f"file {dest}"), uid, gid)


def _sha256(path=None, fh=None):
    """The hex sha256 of the file at ``path``, or of what is left to read of the open file ``fh``, read in
    1 MiB blocks (``hashlib.file_digest`` is Python 3.11+)."""
    if fh is None:
        with open(path, "rb") as opened:
            return _sha256(fh=opened)
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _fetch(source, saltenv):
    if source.startswith("salt://"):
        cached = __salt__["cp.cache_file"](source, saltenv=saltenv)
        if not cached:
            raise CommandExecutionError(f"cannot fetch {source}: not found on the master's fileserver")
        return cached
    if os.path.isabs(source) and os.path.isfile(source):
        return source
    raise CommandExecutionError(f"artifact source {source!r} is neither salt:// nor an existing local file")


def _remove_stale_tmp(paths):
    for base in (paths["releases"], paths["root"]):
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            continue
        for name in names:
            if not (name.startswith(".tmp-") or name.startswith(".current-")):
                continue
            full = os.path.join(base, name)
            try:
                if time.time() - os.lstat(full).st_mtime < STALE_TMP_SECONDS:
                    continue
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
            except OSError as exc:
                log.warning("deploy: cannot remove stale %s: %s", full, exc)


# --------------------------------------------------------------------------- content store
#
# <root>/content/<sha256> holds each file content once: root's, mode 0444 (0555 for an executable
# file, named <sha256>.x), in a folder only root can enter (0700).  A release built from a
# manifest (see deploy_master.manifest on the master) is made of hard links to these blobs, so an
# unchanged file costs no transfer and no disk.  Nobody but root can write or chmod a blob, so
# nothing writes through a link of a release; per-node files (config, files) are written fresh.
# A blob whose only link left is the store's belongs to no release: cleanup removes it.


def _tree_hash(entries):
    """sha256 of a manifest's entries, one compact JSON array per line (deploy_master.manifest.tree_hash:
    a copy, pinned by tests/unit/test_manifest.py)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(json.dumps(list(entry), separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n")
    return digest.hexdigest()


def _check_hex(value, what):
    if not isinstance(value, str) or not BLOB_RE.fullmatch(value):
        raise CommandExecutionError(f"{what} {value!r} is not a sha256 hex digest")
    return value


def _open_store(paths, create=False):
    """A descriptor of <root>/content (made root's 0700 if ``create``), or None if there is none."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(paths["content"], 0o700)
    try:
        fd = os.open(paths["content"], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        if create and st.st_uid == 0:
            os.fchmod(fd, 0o700)
        else:
            os.close(fd)
            raise CommandExecutionError(f"{paths['content']} must be root's, mode 0700 (chown root:root; chmod 0700)")
    return fd


def _blob_exists(cfd, name):
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=cfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _has_blob(cfd, sha):
    return cfd is not None and (_blob_exists(cfd, sha) or _blob_exists(cfd, sha + ".x"))


def _store_tmp(cfd):
    for _ in range(100):
        name = f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            return name, os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=cfd)
        except FileExistsError:
            continue
    raise CommandExecutionError("cannot create a temporary file in the content store")


def _put_blob(cfd, name, reader, expect=None, mtime=None):
    """Write a blob from ``reader`` (a file object) under ``name``, read-only; with ``expect``, only
    if its sha256 is that (else CommandExecutionError, nothing kept).  ``mtime``: the build's
    modification time of the content (servers and Tomcat's JSP compiler read it)."""
    tmp, fd = _store_tmp(cfd)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb", closefd=False) as out:
            while True:
                chunk = reader.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
        if expect is not None and digest.hexdigest() != expect:
            raise CommandExecutionError(
                f"content {expect} of the archive does not match its name (its sha256 is {digest.hexdigest()}): "
                "release refused"
            )
        if mtime:
            os.utime(fd, (mtime, mtime))
        os.fchmod(fd, 0o555 if name.endswith(".x") else 0o444)
        os.rename(tmp, name, src_dir_fd=cfd, dst_dir_fd=cfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=cfd)
        raise
    finally:
        os.close(fd)


def _blob_for(cfd, sha, mode):
    """The store name of ``sha`` with the mode a release file needs (``<sha>`` or ``<sha>.x``),
    made from the other one if only that is there; None if the store has neither."""
    name, other = (sha + ".x", sha) if mode & 0o100 else (sha, sha + ".x")
    if _blob_exists(cfd, name):
        return name
    if not _blob_exists(cfd, other):
        return None
    src = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cfd)
    with os.fdopen(src, "rb") as reader:
        _put_blob(cfd, name, reader)
    return name


def _check_manifest(doc, tree, source):
    """Refuse a manifest that is not the release's (tree hash) or holds an entry that could land
    outside the release: an absolute, '.', '..' or empty part, a path whose folder is not a folder
    entry (so never through a symlink), a symlink pointing outside or through another symlink
    (:func:`_link_problem`, once every entry is read)."""
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 5 for e in entries):
        raise CommandExecutionError(f"{source} holds no valid manifest: release refused")
    actual = _tree_hash(entries)
    if actual != tree:
        raise CommandExecutionError(
            f"the manifest of {source} does not match the release's tree hash {tree} (it hashes to {actual}): "
            "release refused"
        )
    kinds, seen = {}, None
    for path, kind, mode, size, ref in entries:
        if not isinstance(path, str) or seen is not None and path <= seen:
            raise CommandExecutionError(f"manifest entry {path!r} is out of order or twice: release refused")
        seen = path
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise CommandExecutionError(
                f"manifest entry {path!r} is unsafe (absolute path, '.', '..' or empty part): release refused")
        parent = "/".join(parts[:-1])
        if parent and kinds.get(parent) != "d":
            raise CommandExecutionError(
                f"manifest entry {path!r}: {parent!r} is not a folder of the release: release refused")
        if kind == "f":
            if mode not in (0o644, 0o755) or not isinstance(size, int) or size < 0:
                raise CommandExecutionError(f"manifest entry {path!r}: bad mode or size: release refused")
            _check_hex(ref, f"manifest entry {path!r}: content")
        elif kind == "d":
            pass
        elif kind != "l":
            raise CommandExecutionError(f"manifest entry {path!r}: unknown kind {kind!r}: release refused")
        kinds[path] = kind
    problem = _link_problem(entries)  # every link known first: the order of the entries does not matter
    if problem:
        raise CommandExecutionError(f"manifest entry {problem}: release refused")
    return entries


def _link_problem(entries):
    """What is wrong with the symlinks of ``entries`` (any order), or None: a symlink is relative, stays
    inside the release and never goes through another symlink of it (deploy_master.manifest.link_problem:
    a copy, pinned by tests/unit/test_links.py)."""
    links = {e[0] for e in entries if e[1] == "l"}
    for path, kind, _, _, ref in entries:
        if kind != "l":
            continue
        if not isinstance(ref, str) or not ref or ref.startswith("/"):
            return f"{path!r} links to {ref!r}, outside the release"
        walk = path.split("/")[:-1]
        for step in ref.split("/"):
            if step in ("", "."):
                continue
            if walk and "/".join(walk) in links:
                return f"{path!r} links to {ref!r} through the symlink {'/'.join(walk)!r}"
            if step != "..":
                walk.append(step)
            elif walk:
                walk.pop()
            else:
                return f"{path!r} links to {ref!r}, outside the release"
    return None


class _SaltStream(io.RawIOBase):
    """A file on the master's fileserver, read as it arrives: the chunks of Salt's own file transfer
    (``_serve_file``, as ``cp.get_file`` asks for them).  Nothing is written to the minion's cache:
    the content store is the only copy.  No hash of the whole file: each content is checked against
    its sha256 as it enters the store and the manifest against the tree hash, and a short transfer
    fails the tar reader."""

    def __init__(self, client, source, saltenv):
        super().__init__()
        self.client, self.source, self.saltenv = client, source, saltenv
        self.path = source[len("salt://"):]
        self.loc, self.buf, self.eof = 0, memoryview(b""), False

    def readable(self):
        return True

    def _next(self):
        data = self.client._channel_send(  # pylint: disable=protected-access
            {"path": self.path, "saltenv": self.saltenv, "cmd": "_serve_file", "loc": self.loc}, raw=True)
        data = {k.decode() if isinstance(k, bytes) else k: v for k, v in (data or {}).items()}
        chunk = data.get("data") or b""
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if data.get("gzip"):
            chunk = gzip.decompress(chunk)
        if not chunk:
            self.eof = True
            if not self.loc:
                raise CommandExecutionError(f"cannot fetch {self.source}: not found on the master's fileserver")
            return
        self.loc += len(chunk)
        self.buf = memoryview(chunk)

    def readinto(self, b):
        while not self.buf and not self.eof:
            self._next()
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


@contextlib.contextmanager
def _open_source(source, saltenv):
    """The artifact ``source`` as a file object: streamed from the master (salt://), or a local file."""
    if not source.startswith("salt://"):
        with open(_fetch(source, saltenv), "rb") as fh:
            yield fh
        return
    try:
        client = __file_client__.value()  # pylint: disable=undefined-variable
    except Exception:  # pylint: disable=broad-except  # not packed by this loader
        client = None
    if not hasattr(client, "_channel_send"):  # none packed: a minion's job gets {}
        client = None
    own = client is None
    if own:
        client = salt.fileclient.get_file_client(__opts__)
    try:
        if not hasattr(client, "_channel_send"):  # a file client without Salt's chunked transfer
            cached = _fetch(source, saltenv)
            try:
                with open(cached, "rb") as fh:
                    yield fh
            finally:
                os.unlink(cached)
            return
        with io.BufferedReader(_SaltStream(client, source, saltenv), CHUNK) as fh:
            yield fh
    finally:
        if own:
            client.destroy()


def _ingest(saltenv, cfd, tree, source):
    """Read a content archive as it arrives: its manifest (checked against ``tree``), then each content
    the store lacks, verified against its name, into the store.  Returns (entries, bytes written)."""
    written, entries = 0, None
    try:
        with _open_source(source, saltenv) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if entries is None:
                    if member.name != MANIFEST_MEMBER or not member.isfile() or member.size > MANIFEST_MAX:
                        raise CommandExecutionError(f"{source} is not a content archive (no {MANIFEST_MEMBER} first)")
                    try:
                        doc = json.loads(tar.extractfile(member).read())
                    except ValueError:
                        doc = None
                    entries = _check_manifest(doc, tree, source)
                    continue
                if not BLOB_RE.fullmatch(member.name) or not member.isfile():
                    raise CommandExecutionError(
                        f"archive member {member.name!r} of {source} is not a content: release refused")
                if _has_blob(cfd, member.name):
                    continue
                _put_blob(cfd, member.name, tar.extractfile(member), expect=member.name, mtime=member.mtime)
                written += member.size
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CommandExecutionError(f"cannot read {source}: {exc}") from None
    if entries is None:
        raise CommandExecutionError(f"{source} is not a content archive (it is empty)")
    return entries, written


def _assemble(release, entries, cfd, tmp):
    """Build the tree of ``entries`` inside the fresh folder ``tmp``: folders, symlinks, and hard
    links to the store's blobs (a private read-only copy if the blob has all the links it can)."""
    tfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for path, kind, mode, _, ref in entries:
            if kind == "d":
                os.mkdir(path, 0o755, dir_fd=tfd)
            elif kind == "l":
                os.symlink(ref, path, dir_fd=tfd)
            else:
                name = _blob_for(cfd, ref, mode)
                if name is None:
                    raise CommandExecutionError(
                        f"release {release!r}: this node lacks content {ref} ({path}): it is neither in the "
                        "archive nor in the content store (removed since the master asked?): release refused"
                    )
                try:
                    os.link(name, path, src_dir_fd=cfd, dst_dir_fd=tfd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno != errno.EMLINK:
                        raise
                    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cfd)
                    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=tfd)
                    try:
                        with os.fdopen(src, "rb") as reader, os.fdopen(dst, "wb", closefd=False) as writer:
                            shutil.copyfileobj(reader, writer, CHUNK)
                        os.fchmod(dst, 0o555 if mode & 0o100 else 0o444)
                    finally:
                        os.close(dst)
    finally:
        os.close(tfd)


def _verify_tree(release, entries, cfd, tmp, tree):
    """The tree hash of what ``tmp`` really holds must be ``tree``: paths, kinds, modes, sizes, link
    targets, and each file's content (a link to a store blob is that blob, verified when it entered
    the store; anything else is hashed)."""
    known = {}
    for _, kind, _mode, _, ref in entries:
        if kind == "f":
            for name in (ref, ref + ".x"):
                try:
                    st = os.stat(name, dir_fd=cfd, follow_symlinks=False)
                    known[(st.st_dev, st.st_ino)] = ref
                except FileNotFoundError:
                    pass
    found = []

    def walk(rel):
        with os.scandir(os.path.join(tmp, rel) if rel else tmp) as it:
            items = list(it)
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                found.append([path, "l", 0o777, 0, os.readlink(item.path)])
            elif stat.S_ISDIR(st.st_mode):
                found.append([path, "d", 0o755, 0, ""])
                walk(path)
            else:
                sha = known.get((st.st_dev, st.st_ino))
                if sha is None:
                    sha = _sha256(item.path)
                found.append([path, "f" if stat.S_ISREG(st.st_mode) else "?", _file_mode(st.st_mode), st.st_size, sha])

    walk("")
    found.sort(key=lambda e: e[0])
    actual = _tree_hash(found)
    if actual != tree:
        want = {e[0]: e for e in entries}
        got = {e[0]: e for e in found}
        diff = next((p for p in sorted(set(want) | set(got)) if want.get(p) != got.get(p)), "?")
        raise CommandExecutionError(
            f"release {release!r}: the tree built on this node does not match its manifest (tree hash {actual}, "
            f"expected {tree}; first difference at {diff!r}): release refused"
        )


def _overrides(conf):
    """Paths of a release that prepare replaces per node: shared links, config, files, writable folders."""
    out = set(conf.get("shared") or [])
    out.update(conf.get("writable") or [])
    out.update(conf.get("config") or {})
    out.update(conf.get("files") or {})
    return sorted(p for p in out if isinstance(p, str))


def _manifest_path(paths, release):
    return os.path.join(paths["manifests"], f"{release}.json")


def _check_complete(paths, release):
    """Refuse to switch to a release built from the store that is not what its manifest says: every
    entry of the manifest there, and nothing else, but the per-node paths prepare wrote (``skip``:
    :func:`_overrides` when it was prepared) and what lies under them.  A folder is a folder, a symlink
    points where it did, and a file is the store's blob for its content and mode itself (the same
    inode); a file that is not (a private copy made when the blob had all the links it can, or a blob
    gone from the store since) must be root's, read-only, and is hashed.  Walked with descriptors,
    in path order: no symlink is followed; the first difference is named."""
    record = _read_json(_manifest_path(paths, release))
    if not record:
        return  # a release unpacked from a tree archive (by hand, or before the content store)
    cfd = _open_store(paths)
    try:
        base = os.open(os.path.join(paths["releases"], release), _DIR_FLAGS)
        try:
            _TreeCheck(release, record, cfd).walk(base, "")
        finally:
            os.close(base)
    finally:
        if cfd is not None:
            os.close(cfd)


class _TreeCheck:
    """One walk of :func:`_check_complete`: a release's tree against its manifest ``record``, with the
    content store open at ``cfd`` (None: there is none)."""

    def __init__(self, release, record, cfd):
        self.release = release
        self.cfd = cfd
        self.skip = set(record.get("skip") or [])
        # the folders prepare made to hold a per-node path that the tree lacks (config/ for config/app.ini)
        self.holders = {"/".join(p.split("/")[:i]) for p in self.skip for i in range(1, p.count("/") + 1)}
        self.children = {}
        for entry in record.get("entries") or []:
            parent, _, name = entry[0].rpartition("/")
            self.children.setdefault(parent, {})[name] = entry
        self.blobs = {}

    def refuse(self, path, why):
        raise CommandExecutionError(
            f"release {self.release!r} is incomplete on this node: {path!r} {why}; refusing to switch to it "
            "(choose another release; to use this one again, remove it on this node with deploy.cleanup or by "
            "hand and release it again)"
        )

    def blob(self, sha, mode):
        """``(st_dev, st_ino)`` of the store's blob for a content and mode, None when there is none."""
        key = sha + (".x" if mode & 0o100 else "")
        if key not in self.blobs:
            try:
                st = os.stat(key, dir_fd=self.cfd, follow_symlinks=False) if self.cfd is not None else None
                self.blobs[key] = (st.st_dev, st.st_ino) if st else None
            except FileNotFoundError:
                self.blobs[key] = None
        return self.blobs[key]

    def same_content(self, dfd, name, path, st, sha):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as fh:
            fst = os.fstat(fh.fileno())
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                self.refuse(path, "changed while it was checked")
            return _sha256(fh=fh) == sha

    def check_file(self, dfd, name, path, st, entry):
        _, _, mode, size, sha = entry
        if not stat.S_ISREG(st.st_mode):
            self.refuse(path, "is not a file")
        if (st.st_dev, st.st_ino) == self.blob(sha, mode):
            return
        if st.st_uid != 0 or st.st_mode & 0o222 or bool(st.st_mode & 0o100) != bool(mode & 0o100) \
                or st.st_size != size or not self.same_content(dfd, name, path, st, sha):
            self.refuse(path, f"is not the content {sha} of the store (mode {mode:o}) nor a read-only root copy of it")

    def kind(self, path, st, entry):
        """The kind the manifest gives ``path`` ("d", "l", "f"); a folder that holds a per-node path is "d"."""
        if entry is not None:
            return entry[1]
        if path not in self.holders or not stat.S_ISDIR(st.st_mode):
            self.refuse(path, "is not in the release's manifest")
        return "d"

    def walk(self, dfd, rel):
        want = self.children.get(rel, {})
        with os.scandir(dfd) as it:
            found = {item.name: item for item in it}
        for name in sorted(set(want) | set(found)):
            path = f"{rel}/{name}" if rel else name
            if path in self.skip:
                continue
            entry, item = want.get(name), found.get(name)
            if item is None:
                self.refuse(path, "is missing")
            st = item.stat(follow_symlinks=False)
            kind = self.kind(path, st, entry)
            if kind == "d":
                self.walk_folder(dfd, name, path, st)
            elif kind == "l":
                if not stat.S_ISLNK(st.st_mode) or os.readlink(name, dir_fd=dfd) != entry[4]:
                    self.refuse(path, "is not the symlink it was")
            else:
                self.check_file(dfd, name, path, st, entry)

    def walk_folder(self, dfd, name, path, st):
        if not stat.S_ISDIR(st.st_mode):
            self.refuse(path, "is not a folder")
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError:
            self.refuse(path, "is not a folder")
        try:
            self.walk(sub, path)
        finally:
            os.close(sub)


def _gc_store(paths):
    """Remove the blobs no release uses (their only link is the store's) and stale temporary files."""
    cfd = _open_store(paths)
    if cfd is None:
        return 0, 0
    count = size = 0
    try:
        for name in os.listdir(cfd):
            try:
                st = os.stat(name, dir_fd=cfd, follow_symlinks=False)
                if name.startswith(".tmp-"):
                    if time.time() - st.st_mtime >= STALE_TMP_SECONDS:
                        os.unlink(name, dir_fd=cfd)
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.unlink(name, dir_fd=cfd)
                    count += 1
                    size += st.st_size
            except FileNotFoundError:
                continue
    finally:
        os.close(cfd)
    return count, size


def _ranges(flags):
    """``[[start, stop], ...]``: the runs of True in ``flags`` (a few numbers for "all" or a 1 % change)."""
    out, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append([start, i])
            start = None
    return out


def _manifest_blobs(manifest, tree, saltenv):
    """The sorted contents of the release whose manifest the master serves at ``manifest``
    (checked against ``tree``, so a wrong or changed file is refused)."""
    try:
        with _open_source(manifest, saltenv) as fh:
            data = fh.read(MANIFEST_MAX + 1)
    except OSError as exc:
        raise CommandExecutionError(f"cannot read the manifest {manifest}: {exc.strerror or exc}") from None
    if len(data) > MANIFEST_MAX:
        raise CommandExecutionError(f"the manifest {manifest} is larger than {MANIFEST_MAX} bytes: refused")
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    entries = _check_manifest(doc, tree, manifest)
    return sorted({e[4] for e in entries if e[1] == "f"})


def lacking(project, release, tree, blobs=None, manifest=None, saltenv="base"):
    """
    Which contents of a release this node lacks: the first half of an incremental distribution.

    The runner asks every node in one batched call, then publishes one archive with only the
    contents some node lacks, and ``deploy.prepare`` (with ``tree=``) builds the release from the
    node's content store (``<root>/content``) and that archive.  The call stays small whatever
    the release's size: the node reads the release's contents from ``manifest`` on the master's
    fileserver (a Salt return and its arguments are read by the master at a few hundred kB/s).

    project
        Project name.
    release
        Release name.
    tree
        The release's tree hash (from its manifest).
    manifest
        ``salt://`` URL of the release's manifest (``<release>.manifest.json`` beside its
        artifact); it must hash to ``tree``.
    blobs
        Instead of ``manifest``: the sha256 of the release's contents.

    Returns ``{release, prepared, lacking}``: ``prepared`` is True when the release is already
    prepared here with this tree (nothing to send); ``lacking`` lists ``[start, stop]`` ranges of
    indexes into the release's distinct contents in sorted order (``[[0, total]]``: all of them;
    ``[]``: none), and ``have`` and ``total`` count them.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.lacking rainbow rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei <tree> \\
            manifest=salt://deploy_artifacts/rainbow/rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei.manifest.json
    """
    _check_release(release)
    _check_hex(tree, "tree")
    if (blobs is None) == (manifest is None):
        raise CommandExecutionError("give the release's contents as either manifest (a salt:// URL) or blobs")
    if blobs is not None:
        if not isinstance(blobs, (list, tuple)):
            raise CommandExecutionError("blobs must be a list of sha256 hex digests")
        for sha in blobs:
            _check_hex(sha, "content")
    elif not isinstance(manifest, str) or not manifest.startswith("salt://"):
        raise CommandExecutionError(f"manifest {manifest!r} is not a salt:// URL")
    paths = _paths(_project(project))
    meta = _read_meta(paths, release)
    if os.path.isdir(os.path.join(paths["releases"], release)) and meta and meta.get("tree") == tree \
            and not _old_layout(paths, release):
        return {"release": release, "prepared": True, "lacking": []}
    blobs = sorted(set(blobs)) if blobs is not None else _manifest_blobs(manifest, tree, saltenv)
    cfd = _open_store(paths)
    try:
        missing = [not _has_blob(cfd, sha) for sha in blobs]
    finally:
        if cfd is not None:
            os.close(cfd)
    return {"release": release, "prepared": False, "lacking": _ranges(missing),
            "have": missing.count(False), "total": len(blobs)}


# --------------------------------------------------------------------------- prepare


def _discard(paths, release, tmp, final):
    """What a failed prepare leaves: nothing, and no blob that no release links (a full disk stays usable)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isdir(final):
        for path in (_meta_path(paths, release), _manifest_path(paths, release)):
            if os.path.isfile(path):
                os.unlink(path)
    try:
        _gc_store(paths)
    except (OSError, CommandExecutionError) as exc:
        log.warning("deploy: cannot clean the content store after a failed prepare: %s", exc)


def prepare(project, release, source, checksum, meta=None, saltenv="base", inventory=False, tree=None):
    """
    Prepare a release on this node, ready to be switched to.

    Fetches the artifact (``salt://`` from the master's fileserver), verifies its
    sha256, unpacks it into a temporary directory beside the releases, links the
    ``shared`` paths, renders the ``config`` templates in Jinja's sandbox with the pillar
    keys and grains the project declares (``template_pillar``, ``template_grains``),
    writes the per-node ``files``, hands everything to the project's
    ``user``/``group`` and renames the directory into ``<root>/releases/<release>``.
    Nothing is left behind on failure.  If the release is already prepared with the
    same checksum (with ``tree``: the same tree hash) nothing is done.

    With ``tree`` (what ``salt-run deploy.release`` sends), ``source`` is a content archive
    (``manifest.json`` and contents named by their sha256, see ``deploy.lacking``): the contents
    this node lacks go into its content store ``<root>/content`` (each verified against its name),
    the release is built from the manifest as hard links to the store's read-only blobs, and its
    tree hash is verified before anything else is done; the archive is not kept in the minion's
    cache.  Without ``tree``, ``source`` is a tar of the release tree, unpacked as it is.

    project
        Project name (pillar ``deploy:projects:<project>``).
    release
        Release name, ``[A-Za-z0-9._-]``.
    source
        ``salt://`` URL of the artifact (a tar archive, compressed or not).
    checksum
        Expected sha256 of the artifact.
    meta
        Optional dict stored with the release: version, branch, commit, committer, time.
    saltenv
        Fileserver environment of ``source``.
    inventory
        ``True``: add this node's inventory (as ``deploy.releases`` gives it) to the
        return; the runner keeps it as its record of the node.
    tree
        The release's tree hash: ``source`` is a content archive (see above).

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.prepare rainbow rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei \\
            salt://deploy_artifacts/rainbow/rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei.tar.gz \\
            <sha256>
    """
    _check_release(release)
    if not isinstance(checksum, str) or not BLOB_RE.match(checksum):
        raise CommandExecutionError(f"checksum {checksum!r} is not a sha256 hex digest")
    called = time.monotonic()
    pillar = _fresh_pillar()
    steps = {"pillar": round(time.monotonic() - called, 3)}
    conf = _project(project, pillar)
    conf["name"] = project
    paths = _paths(conf)
    uid, gid = _ids(conf)
    final = os.path.join(paths["releases"], release)
    if tree is not None:
        _check_hex(tree, "tree")
    done = _prepared_already(paths, release, final, checksum, tree)
    if done:
        return _report(done, paths, inventory)

    _current_target(paths)  # refuse a broken tree before doing any work
    _writable(conf)
    _make_layout(paths)
    # with a tree: the archive is read as it arrives, each content is checked against its name as it
    # enters the store, and the release against its tree hash
    artifact = _fetch_checked(source, checksum, saltenv) if tree is None else None

    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix=f".tmp-{release}-", dir=paths["releases"])
    try:
        if tree is None:
            entries = _unpack_artifact(artifact, tmp)
        else:
            entries = _build_from_store(paths, release, source, saltenv, tree, tmp, steps)
        _per_node(conf, paths, pillar, tmp, release, uid, gid)
        _write_records(paths, conf, release, tmp, tree, entries,
                       _release_record(meta, project, release, checksum, source, tree))
        os.rename(tmp, final)
    except OSError as exc:
        _discard(paths, release, tmp, final)
        raise CommandExecutionError(
            f"preparing release {release!r} failed: {exc.strerror or exc} ({exc.filename or paths['root']}); "
            "nothing was kept"
        ) from None
    except BaseException:
        _discard(paths, release, tmp, final)
        raise
    # Later jobs (switch, checks) read the in-memory pillar: let the minion pick up what we just
    # compiled, if it differs from what the minion holds (a refresh is one more compile on the master).
    if not _in_memory_pillar_is(pillar):
        __salt__["saltutil.refresh_pillar"](wait=False)
    return _report(
        {"release": release, "changed": True, "path": final, "seconds": round(time.monotonic() - started, 3),
         **({"timings": steps} if tree else {})},
        paths,
        inventory,
    )


def _prepared_already(paths, release, final, checksum, tree):
    """The return of a prepare with nothing to do (the release is in place with this checksum, with ``tree``:
    this tree hash), or None: it is to be built.  A release in place with other contents is refused; one in
    place in an old layout is removed, to be built again."""
    existing = _read_meta(paths, release)
    if not os.path.isdir(final):
        return None
    same = existing and (existing.get("tree") == tree if tree else existing.get("checksum") == checksum)
    if same and _old_layout(paths, release):
        shutil.rmtree(final)  # descriptor-based, follows no link: built again, root's
        return None
    if same:
        return {"release": release, "changed": False, "path": final, "comment": "already prepared"}
    raise CommandExecutionError(
        f"release {release!r} already exists on this node with a different checksum: refusing to replace it"
    )


def _fetch_checked(source, checksum, saltenv):
    """The local path of the artifact ``source``, whose sha256 is ``checksum`` (a wrong one is not kept)."""
    artifact = _fetch(source, saltenv)
    actual = _sha256(artifact)
    if actual != checksum:
        if source.startswith("salt://"):
            os.unlink(artifact)
        raise CommandExecutionError(f"checksum mismatch for {source}: expected {checksum}, got {actual}")
    return artifact


def _unpack_artifact(artifact, tmp):
    """The release's tree from a tar of it, root's and read-only; no manifest entries (None)."""
    _unpack(artifact, tmp)
    _root_modes(tmp, files=True)  # before config and files: they keep their own modes
    return None


def _build_from_store(paths, release, source, saltenv, tree, tmp, steps):
    """The release's tree from the content store, after the contents this node lacks arrived from the content
    archive ``source``; verified against ``tree``.  Returns the manifest's entries; ``steps`` gets the
    timings and the bytes stored."""
    cfd = _open_store(paths, create=True)
    try:
        t = time.monotonic()
        entries, steps["stored_bytes"] = _ingest(saltenv, cfd, tree, source)
        steps["transfer"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        _assemble(release, entries, cfd, tmp)
        _verify_tree(release, entries, cfd, tmp, tree)
        steps["build"] = round(time.monotonic() - t, 3)
    finally:
        os.close(cfd)
    return entries


def _per_node(conf, paths, pillar, tmp, release, uid, gid):
    """What prepare adds to a release's tree on this node, in this order: the shared links, the config
    rendered from templates, the per-node files, root's modes on the folders those made, the writable
    folders."""
    _link_shared(conf, paths, tmp, uid, gid)
    _render_config(conf, pillar, tmp, release, 0, gid)  # root's, readable by the app's group
    _write_files(conf, tmp, 0, 0)
    _root_modes(tmp, files=False)  # the folders config and files made too
    _make_writable(conf, tmp, uid, gid)


def _release_record(meta, project, release, checksum, source, tree):
    """The release's metadata as prepare writes it: ``meta`` and what this node knows of it."""
    record = dict(meta or {})
    record.update(
        {
            "name": release,
            "project": project,
            "checksum": checksum,
            "source": source,
            **({"tree": tree} if tree else {}),
            "prepared_at": time.time(),
            "status": "prepared",
            "history": [{"event": "prepared", "at": _now()}],
        }
    )
    return record


def _write_records(paths, conf, release, tmp, tree, entries, record):
    """The last step before the rename: the manifest of a release built from the store (what
    :func:`_check_complete` checks before a switch), the tree's own mode, and the release's metadata."""
    if tree is not None:
        os.makedirs(paths["manifests"], mode=0o750, exist_ok=True)
        _write_json(_manifest_path(paths, release), {"tree": tree, "skip": _overrides(conf), "entries": entries})
    os.chmod(tmp, 0o755)
    _write_json(_meta_path(paths, release), record)


# --------------------------------------------------------------------------- switch, restart, checks


def _refuse_bad(paths, release, force):
    """Whether a switch to ``release`` forces past its ``bad`` mark; refuses one without ``force``."""
    if (_read_meta(paths, release) or {}).get("status") != "bad":
        return False
    if not force:
        raise CommandExecutionError(
            f"release {release!r} is marked bad on this node: refusing to switch to it (force=True switches "
            "anyway, and is recorded)"
        )
    return True


def activate(project, release, force=False):
    """
    Point ``current`` at a prepared release, atomically.

    The new link is created under a temporary name and renamed over ``current``;
    the previous target is remembered in ``<root>/meta/switch.json``.  Refuses a
    ``current`` that is not a symlink or points outside ``releases/``, and a release
    marked ``bad`` on this node unless ``force=True``.

    project
        Project name.
    release
        A release prepared on this node.
    force
        ``True``: switch to the release even if it is marked bad; the release's history
        records it (``forced: switched to although marked bad``) and the return has
        ``forced: True``.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.activate rainbow rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
        salt '*' deploy.activate rainbow rainbow_pro_v1.0.0_master_2016-08-10_10-00-00_xuliangwei force=True
    """
    return _activate(project, release, force=force)


def _activate(project, release, force=False, back=False):
    """activate; ``back``: switching back to the release that was live a moment ago (a failed
    switch's revert), which is not refused for its ownership nor for its status."""
    _check_release(release)
    conf = _project(project)
    paths = _paths(conf)
    previous = _current_target(paths)
    if not os.path.isdir(os.path.join(paths["releases"], release)) or _read_meta(paths, release) is None:
        raise CommandExecutionError(f"release {release!r} is not prepared on this node")
    if previous == release:
        return {"previous": previous, "current": release, "changed": False}
    if not back:
        _check_roots(paths, release)
    forced = _refuse_bad(paths, release, force or back)
    _check_complete(paths, release)
    _switch_link(paths, release)
    _write_json(
        os.path.join(paths["meta"], "switch.json"),
        {"previous": previous, "current": release, "at": _now()},
    )
    _update_meta(paths, release, "activated")
    if forced:
        _update_meta(paths, release, FORCED)
        return {"previous": previous, "current": release, "changed": True, "forced": True}
    return {"previous": previous, "current": release, "changed": True}


def _old_layout(paths, release):
    """A release prepared by an older version of this module (its folder is the app user's) that is
    not ``current``: preparing it again builds it anew, root's."""
    st = os.lstat(os.path.join(paths["releases"], release))  # in releases/, which only root can write
    return st.st_uid != 0 and _current_target(paths) != release


def _check_roots(paths, release):
    """Refuse to switch to a release prepared by an older version of this module, which handed the
    release's folders to the app user: whoever owns them could have changed its code."""
    path = os.path.join(paths["releases"], release)
    st = os.lstat(path)  # in releases/, which only root can write (_check_layout)
    if st.st_uid == 0:
        return
    try:
        owner = f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except KeyError:
        owner = f"uid {st.st_uid}"
    raise CommandExecutionError(
        f"release {release!r} was prepared by an older version of the deploy module: its folders belong to {owner}, "
        "who could have changed its code; refusing to switch to it. Release it again (salt-run deploy.release "
        "with its ref, or deploy.prepare with its artifact): it is built anew, root's; or, after checking its "
        f"code, make it root's by hand: chown -R root:root {path}"
    )


def _run_cmd(command, conf, paths, timeout, cwd=None, extra_env=None):
    """Run ``command`` as the project's user: a string through ``/bin/sh -c`` (a restart step), a list
    as the arguments themselves, no shell (a hook step); in ``cwd`` (default ``current``)."""
    uid, gid = _ids(conf)
    user = pwd.getpwuid(uid)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LANG": "C.UTF-8",
        "DEPLOY_ROOT": paths["root"],
        "DEPLOY_CURRENT": paths["current"],
        **(extra_env or {}),
    }
    cwd = cwd or (paths["current"] if os.path.isdir(paths["current"]) else paths["root"])
    kwargs = {}
    if os.geteuid() == 0:
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    proc = subprocess.run(
        list(command) if isinstance(command, (list, tuple)) else ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    secrets = _secret_values(conf)
    if proc.returncode:
        log.warning(
            "deploy: %s: command exited %s; its output (last %s characters, pillar values redacted):\n"
            "--- stdout\n%s\n--- stderr\n%s", paths["root"], proc.returncode, OUTPUT_LOG,
            _redacted(proc.stdout or "", secrets)[-OUTPUT_LOG:], _redacted(proc.stderr or "", secrets)[-OUTPUT_LOG:],
        )
    return proc.returncode, _tail(proc.stderr or proc.stdout or "", secrets)


def _secret_values(conf):
    """Every value under the project's ``template_pillar`` keys, nested ones too, longest first:
    what no output leaving the node may carry (values shorter than :data:`REDACT_MIN` excepted)."""
    pillar = __pillar__.value() if hasattr(__pillar__, "value") else __pillar__
    try:
        keys = _declared(conf, "template_pillar", [])
    except CommandExecutionError:
        keys = [k for k in conf.get("template_pillar") or [] if isinstance(k, str)]
    found, todo = set(), [_subset(pillar, keys)]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            todo.extend(value)
        elif value is not None and not isinstance(value, bool):
            text = str(value)
            found.update(t for t in [text, text.strip(), *text.splitlines()] if len(t.strip()) >= REDACT_MIN)
    return sorted(found, key=len, reverse=True)


def _redacted(text, secrets):
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _tail(text, secrets):
    """What of a step's output leaves the node: its last :data:`OUTPUT_TAIL` characters, pillar values redacted."""
    return _redacted(str(text), secrets)[-OUTPUT_TAIL:]


def _trusted_link(dir_st, link_st):
    """A symlink only root can change: root's own, in a folder only root may write (or sticky)."""
    return link_st.st_uid == 0 and _root_only(dir_st, sticky_ok=True) is None


def _open_real_dir(path, what):
    """
    Open the directory ``path`` without following a symlink anyone but root could change.

    Walks from '/' one name at a time (``openat`` with ``O_NOFOLLOW``): a symlink is followed
    only if root owns it and its folder (see :func:`_trusted_link`), any other one is refused.
    Returns (fd, real path).  FileNotFoundError if a part is missing.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    todo, hops = os.path.normpath(path), 0
    while True:
        fd, real = os.open("/", flags), []
        try:
            parts = [p for p in todo.split("/") if p]
            for i, name in enumerate(parts):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                here = "/" + "/".join(real + [name])
                if stat.S_ISLNK(st.st_mode):
                    if not _trusted_link(os.fstat(fd), st):
                        raise CommandExecutionError(
                            f"{what}: {here} is a symlink that a user other than root can change: "
                            "refusing to follow it"
                        )
                    target = os.readlink(name, dir_fd=fd)
                    base = "/" if target.startswith("/") else "/" + "/".join(real)
                    todo = os.path.normpath(os.path.join(base, target, *parts[i + 1:]))
                    break
                if not stat.S_ISDIR(st.st_mode):
                    raise CommandExecutionError(f"{what}: {here} is not a directory")
                try:
                    sub = os.open(name, flags, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link since the stat
                        raise CommandExecutionError(f"{what}: {here} changed while it was opened: refused") from None
                    raise
                os.close(fd)
                fd = sub
                real.append(name)
            else:
                return fd, "/" + "/".join(real)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        hops += 1
        if hops > 40:
            raise CommandExecutionError(f"{what}: too many symlinks")


def _clear_dir(path):
    """Empty a directory, keep it.  Never leaves the real directory it was given: no symlink an
    ordinary user controls is followed, on the way or inside (removal is relative to open fds)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise CommandExecutionError(f"clear: {path!r} must be an absolute directory other than '/'")
    try:
        fd, real = _open_real_dir(path, f"clear {path}")
    except FileNotFoundError:
        return 0
    try:
        if real == "/":
            raise CommandExecutionError(f"clear: {path!r} must be an absolute directory other than '/' (it is '/')")
        count = 0
        for name in os.listdir(fd):
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                # relative to the open fd through its /proc link (rmtree's dir_fd is Python 3.11+): rmtree
                # itself is fd-based and refuses symlinks (shutil.rmtree.avoids_symlink_attacks)
                shutil.rmtree(f"/proc/self/fd/{fd}/{name}")
            else:
                os.unlink(name, dir_fd=fd)
            count += 1
        return count
    finally:
        os.close(fd)


def _restart_steps(conf, paths):
    results = []
    for step in conf.get("restart") or []:
        started = time.monotonic()
        entry = {}
        try:
            if "service" in step:
                action = step.get("action", "restart")
                if action not in RESTART_ACTIONS:
                    raise CommandExecutionError(
                        f"restart: action {action!r} for service {step['service']!r} is not one of {RESTART_ACTIONS}"
                    )
                entry = {"step": f"service {action} {step['service']}"}
                ok = __salt__[f"service.{action}"](step["service"])
                entry["result"] = bool(ok)
            elif "cmd" in step:
                entry = {"step": f"cmd {step.get('name') or step['cmd']}"}
                code, tail = _run_cmd(step["cmd"], conf, paths, step.get("timeout", 120))
                entry["result"] = code == 0
                entry["retcode"] = code
                if code:
                    entry["output"] = tail
            elif "clear" in step:
                dirs = step["clear"] if isinstance(step["clear"], list) else [step["clear"]]
                entry = {"step": f"clear {' '.join(dirs)}"}
                entry["removed"] = sum(_clear_dir(d) for d in dirs)
                entry["result"] = True
            else:
                raise CommandExecutionError(f"restart: unknown step {sorted(step)}: use service, cmd or clear")
        except subprocess.TimeoutExpired:
            entry["result"] = False
            entry["output"] = "timed out"
        except (CommandExecutionError, OSError) as exc:
            entry.setdefault("step", str(step))
            entry["result"] = False
            entry["output"] = _tail(exc, _secret_values(conf))
        entry["seconds"] = round(time.monotonic() - started, 3)
        results.append(entry)
        if not entry["result"]:
            break
    return results


def restart(project):
    """
    Run the project's ``restart`` steps in order; stop at the first failing one.

    Steps (pillar ``deploy:projects:<project>:restart``):

    - ``{service: NAME, action: reload}``: Salt's service module (start/stop/restart/reload)
    - ``{cmd: 'COMMAND'}``: a shell command run as the project's ``user``, in ``current``,
      with ``DEPLOY_ROOT``/``DEPLOY_CURRENT`` in its environment
    - ``{clear: [DIR, ...]}``: directories emptied but kept (Tomcat ``work``/``temp``); a
      symlink another user could change, at the path, above it or inside it, is never followed

    project
        Project name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.restart rainbow
    """
    conf = _project(project)
    steps = _restart_steps(conf, _paths(conf))
    result = all(s["result"] for s in steps)
    if not result:
        __context__["retcode"] = 1
    return {"result": result, "steps": steps}


def _origin(url):
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _get(url, headers, timeout, expected):
    """
    One check attempt: GET ``url`` and read up to 1 MiB of the answer, all within ``timeout``
    seconds (a watchdog shuts the socket down at the deadline, so a slow-drip answer cannot
    hold the check longer).  Redirects are followed on the same scheme, host and port only
    (the check's headers may carry credentials), unless the check expects the redirect itself.

    Returns (status, body, error).
    """
    deadline = time.monotonic() + timeout
    origin = _origin(url)
    status, body = None, b""
    for _ in range(MAX_REDIRECTS + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            return None, b"", f"timed out after {timeout:g}s"
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=left)
        expired, socks = threading.Event(), []

        def _expire(expired=expired, socks=socks):
            expired.set()
            for sock in socks:  # the response keeps reading from it after conn lets go of it
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(left, _expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()  # bounded by timeout=left
            socks.append(conn.sock)
            if expired.is_set():
                raise TimeoutError
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            status, body = resp.status, resp.read(1 << 20)
            location = resp.getheader("Location")
        except (http.client.HTTPException, OSError, ValueError) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                return None, b"", f"timed out after {timeout:g}s"
            return None, b"", str(exc) or type(exc).__name__
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():
            return None, b"", f"timed out after {timeout:g}s"
        if status not in REDIRECTS or status == expected or not location:
            return status, body, None
        url = urllib.parse.urljoin(url, location)
        if _origin(url) != origin:
            scheme, host, port = _origin(url)
            return status, body, (f"status {status}: redirect to another host ({scheme}://{host}:{port}) refused; "
                                  "checks follow redirects on the same scheme, host and port only")
    return status, body, f"status {status}: more than {MAX_REDIRECTS} redirects"


def _one_check(check, release=None):
    """
    Run one check: the first attempt at once, then again after 50 ms, 100 ms, 200 ms … (at most
    ``delay`` apart) while the check's window lasts, and at least ``retries`` attempts in all.

    The window (``deadline``, seconds from the first attempt) defaults to ``(retries - 1) * delay``:
    the time the earlier fixed-delay retries spanned, so a failing check still fails about as soon
    as before, and a passing one passes as soon as the service answers.  Each attempt is bounded by
    ``timeout`` as a whole.
    """
    url = check.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return {"url": url, "ok": False, "error": "check needs an http(s) url"}
    expected = int(check.get("status", 200))
    contains = check.get("contains")
    if contains and release:
        # "{release}" checks that the node serves the release just switched to, not a cached one
        contains = str(contains).replace("{release}", release)
    retries = max(int(check.get("retries", 3)), 1)
    delay = max(float(check.get("delay", 1)), 0.0)
    timeout = float(check.get("timeout", 5))
    window = float(check.get("deadline", (retries - 1) * delay))
    cap = max(delay, BACKOFF_FIRST)
    headers = {str(k): str(v) for k, v in (check.get("headers") or {}).items()}
    result = {"url": url, "expected": expected, "ok": False}
    started, pause, attempt = time.monotonic(), BACKOFF_FIRST, 0
    while True:
        attempt += 1
        status, body, error = _get(url, headers, timeout, expected)
        result.update({"status": status, "attempts": attempt})
        if error is None and status == expected and (not contains or contains.encode() in body):
            result["ok"] = True
            result.pop("error", None)
            break
        if error is not None:
            result["error"] = error
        elif status != expected:
            result["error"] = f"status {status}, expected {expected}"
        else:
            result["error"] = f"response does not contain {contains!r}"
        left = window - (time.monotonic() - started)
        if attempt >= retries and left <= 0:
            break
        wait = min(pause, cap)
        if attempt >= retries:
            wait = min(wait, left)  # the last attempt at the window's end, not after it
        time.sleep(wait)
        pause *= 2
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _check_told(result, conf):
    """A check's result as it leaves the node: its error redacted and cut to :data:`OUTPUT_TAIL`."""
    if result.get("error"):
        result["error"] = _tail(result["error"], _secret_values(conf))
    return result


def check(project):
    """
    Run the project's smoke checks from this node (key pages, API, admin).

    Each check (pillar ``deploy:projects:<project>:checks``) is
    ``{url: ..., status: 200, contains: TEXT, retries: 3, delay: 1, timeout: 5, headers: {}}``
    (``deadline`` optional): attempts start at once and back off from 50 ms, doubling up to
    ``delay``, for ``deadline`` seconds (default ``(retries - 1) * delay``), at least ``retries`` times;
    a check passes when the status matches and the body contains ``contains``.  In
    ``contains``, ``{release}`` stands for the release ``current`` points to, so a check
    can prove the node serves the new code (not a stale OPcache or JSP cache).
    ``timeout`` bounds each attempt as a whole; redirects are followed on the same scheme,
    host and port only.

    project
        Project name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.check rainbow
    """
    conf = _project(project)
    started = time.monotonic()
    release = _current_target(_paths(conf))
    results = [_check_told(_one_check(c, release), conf) for c in conf.get("checks") or []]
    ok = all(r["ok"] for r in results)
    if not ok:
        __context__["retcode"] = 1
    return {"result": ok, "checks": results, "seconds": round(time.monotonic() - started, 3)}


def _step(name, started, **data):
    data.update({"step": name, "seconds": round(time.monotonic() - started, 3)})
    return data


def switch(project, release, checks="gate", mark_left=None, expect=None, inventory=False, force=False,
           before_switch=None):
    """
    Switch this node to a release: activate, restart, check — and switch back on failure.

    This is what ``salt-run deploy.release`` and ``deploy.rollback`` run on each node of
    a batch, in one call.  With ``checks=gate`` a failing restart or check switches
    ``current`` back to the previous release, restarts again and marks the new release
    bad; passing checks mark it good.  With ``checks=report`` (emergency rollback) the
    checks run and are reported but never switch back; ``checks=skip`` runs none.

    project
        Project name.
    release
        A release prepared on this node.
    checks
        ``gate`` (default), ``report`` or ``skip``.
    mark_left
        ``bad`` to mark the release switched away from as bad (rollbacks).
    expect
        The state this node must be in, as the ``fingerprint`` of ``deploy.releases``:
        a string, or a dict of minion id -> fingerprint (one batched call to many
        nodes).  If this node's differs, or the dict has no entry for it, nothing is
        changed and the return has ``refused: True``, ``why: state`` and the node's
        inventory.  The emergency rollback uses it to act on the master's record of
        every node in a single call.  A node's entry may also be a dict
        ``{fingerprint, release, status, current, current_status}``: the target, its
        status and the release served with its status, in the master's record; the
        node then refuses (``why: target``) unless it serves that release with that
        status and ``release`` is the one named in this call, is prepared and complete
        here, has that status here and is not marked bad (unless ``force``).
    inventory
        ``True``: add this node's inventory, after the switch, to the return.
    force
        ``True``: switch even to a release this node marked bad (see ``deploy.activate``);
        the return has ``forced: True``.  Without it such a switch is refused.
    before_switch
        Hook steps (see ``deploy.hooks``) run in the release's folder before ``current`` moves;
        the first failing one stops the switch, ``current`` untouched (a step ``before_switch``
        with the failing step's name, exit code and output's redacted tail).  Not run when
        ``current`` already points to the release.

    CLI Example:

    .. code-block:: bash

        salt 'web-*' deploy.switch rainbow rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
        salt '*' deploy.switch rainbow <release> checks=report mark_left=bad
        salt 'web-1' deploy.switch rainbow <release> expect=3f9c0a1d2b4e5f60
        salt 'web-1' deploy.switch rainbow <release marked bad> force=True
    """
    if checks not in ("gate", "report", "skip"):
        raise CommandExecutionError(f"checks={checks!r}: use gate, report or skip")
    if mark_left not in (None, "bad"):
        raise CommandExecutionError(f"mark_left={mark_left!r}: only 'bad' is supported")
    conf = _project(project)
    paths = _paths(conf)
    started = time.monotonic()
    steps = []

    if expect is not None:
        refused = _refuse_unexpected(paths, release, expect, force)
        if refused:
            return refused

    if before_switch and _before_switch(conf, paths, release, before_switch, force, steps):
        __context__["retcode"] = 1
        current = _current_target(paths)
        return _report({"result": False, "release": release, "previous": current, "current": current,
                        "reverted": False, "checks": None, "steps": steps,
                        "seconds": round(time.monotonic() - started, 3)}, paths, inventory)

    t = time.monotonic()
    act = _activate(project, release, force=force)
    previous = act["previous"]
    steps.append(_step("switch", t, result=True, changed=act["changed"]))

    t = time.monotonic()
    restarted = _restart_steps(conf, paths)
    ok = all(s["result"] for s in restarted)
    steps.append(_step("restart", t, result=ok, details=restarted))

    check_ok = None
    if ok and checks != "skip":
        t = time.monotonic()
        results = [_check_told(_one_check(c, release), conf) for c in conf.get("checks") or []]
        check_ok = all(r["ok"] for r in results)
        steps.append(_step("checks", t, result=check_ok, details=results))
        if checks == "gate":
            ok = check_ok

    reverted = False
    if checks == "gate" and not ok:
        _update_meta(paths, release, "failed", status="bad")
        if previous and previous != release:
            t = time.monotonic()
            _activate(project, previous, back=True)  # back to what it served, even a release marked bad
            again = _restart_steps(conf, paths)
            steps.append(
                _step("revert", t, result=all(s["result"] for s in again), to=previous, details=again)
            )
            reverted = True
    elif checks == "gate":
        _update_meta(paths, release, "passed checks", status="good")
    if ok and mark_left and previous and previous != release:
        _update_meta(paths, previous, "rolled back from", status="bad")
    if not ok:
        __context__["retcode"] = 1
    result = {
        "result": ok,
        "release": release,
        "previous": previous,
        "current": previous if reverted else release,
        "reverted": reverted,
        "checks": check_ok,
        "steps": steps,
        "seconds": round(time.monotonic() - started, 3),
    }
    if act.get("forced"):
        result["forced"] = True
    return _report(result, paths, inventory)


# --------------------------------------------------------------------------- hooks


HOOK_PHASES = ("before_switch", "once", "after_release", "on_rollback")
HOOK_FUN_RE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
HOOK_ROOT_RUNNERS = ("cmd", "state", "saltutil", "event", "cp")  # a fun step never runs commands or files as root


def _check_hook_steps(conf, steps):
    """Hook steps as the master sends them (``deploy_master.hooks``): refuse anything else."""
    if not isinstance(steps, (list, tuple)):
        raise CommandExecutionError("hooks: steps must be a list")
    for index, step in enumerate(steps, 1):
        where = f"hooks: step {index}"
        if not isinstance(step, dict) or not isinstance(step.get("name"), str) or not step["name"]:
            raise CommandExecutionError(f"{where} must be a dict with a name")
        if "cmd" in step:
            argv = step["cmd"]
            if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) and "\0" not in a
                                                                          for a in argv):
                raise CommandExecutionError(f"{where} ({step['name']}): cmd must be a non-empty list of arguments")
            if isinstance(step.get("timeout", 1), bool) or not isinstance(step.get("timeout", 1), (int, float)) \
                    or step.get("timeout", 1) <= 0:
                raise CommandExecutionError(f"{where} ({step['name']}): timeout must be seconds > 0")
            if _ids(conf)[0] == 0:
                raise CommandExecutionError(f"{where} ({step['name']}): cmd steps run as the project's user, "
                                            "and it is root: refused (the release's files are not run as root)")
        elif "fun" in step:
            fun = step["fun"]
            if not isinstance(fun, str) or not HOOK_FUN_RE.match(fun) or fun.split(".")[0] in HOOK_ROOT_RUNNERS:
                raise CommandExecutionError(f"{where} ({step['name']}): fun {fun!r} is not a function a hook may run")
            if fun not in __salt__:
                raise CommandExecutionError(f"{where} ({step['name']}): no Salt function {fun!r} on this node")
            if not isinstance(step.get("args", []), (list, tuple)) or not isinstance(step.get("kwargs", {}), dict):
                raise CommandExecutionError(f"{where} ({step['name']}): args must be a list, kwargs a dict")
        else:
            raise CommandExecutionError(f"{where} ({step['name']}): give cmd or fun")


def _hook_fun(step, secrets):
    """A fun step, run by root: failed if it raises, returns False, a dict with ``result: False``, or sets a retcode."""
    __context__.pop("retcode", None)
    try:
        ret = __salt__[step["fun"]](*step.get("args", []), **step.get("kwargs", {}))
    except Exception as exc:  # pylint: disable=broad-except  # any module's error fails the step, named
        return 1, _tail(f"{type(exc).__name__}: {exc}", secrets)
    code = __context__.pop("retcode", 0) or 0
    if ret is False or (isinstance(ret, dict) and ret.get("result") is False) or code:
        log.warning("deploy: hook %s: %s returned %s", step["name"], step["fun"],
                    _redacted(str(ret), secrets)[-OUTPUT_LOG:])
        return code or 1, _tail(ret, secrets)
    return 0, ""


def _hook_steps(conf, paths, release, phase, steps):
    """Run hook ``steps`` in order in the folder of ``release``; stop at the first failing one.
    cmd steps run as the project's user, without a shell, with a minimal environment; fun steps by root."""
    _check_hook_steps(conf, steps)
    folder = os.path.join(paths["releases"], release)
    if not os.path.isdir(folder) or _read_meta(paths, release) is None:
        raise CommandExecutionError(f"hooks {phase}: release {release!r} is not prepared on this node")
    secrets = _secret_values(conf)
    extra_env = {"DEPLOY_RELEASE": release, "DEPLOY_RELEASE_DIR": folder, "DEPLOY_HOOK": phase}
    results = []
    for step in steps:
        started = time.monotonic()
        entry = {"step": step["name"]}
        timeout = step.get("timeout", 300)
        try:
            if "cmd" in step:
                code, tail = _run_cmd(step["cmd"], conf, paths, timeout, cwd=folder, extra_env=extra_env)
            else:
                code, tail = _hook_fun(step, secrets)
        except subprocess.TimeoutExpired:
            code, tail = None, f"timed out after {timeout}s"
        except (CommandExecutionError, OSError) as exc:  # e.g. the command does not exist
            code, tail = None, _tail(exc, secrets)
        entry.update({"result": code == 0, "retcode": code})
        if code != 0:
            entry["output"] = tail or f"exit code {code}"
        entry["seconds"] = round(time.monotonic() - started, 3)
        log.info("deploy: hook %s %s in %s: %s", phase, step["name"], release,
                 "ok" if code == 0 else f"failed ({code})")
        results.append(entry)
        if code != 0:
            break
    return results


def _before_switch(conf, paths, release, steps, force, out):
    """``switch``'s hook steps: appends their step to ``out``; True if one failed (nothing switched)."""
    if _current_target(paths) == release:
        return False
    _refuse_bad(paths, release, force)  # refused before any step runs, as the switch would refuse it
    t = time.monotonic()
    details = _hook_steps(conf, paths, release, "before_switch", steps)
    ok = all(d["result"] for d in details)
    out.append(_step("before_switch", t, result=ok, details=details))
    return not ok


def hooks(project, phase, steps, release=None):
    """
    Run hook steps of a release on this node (what ``salt-run deploy.release`` and ``deploy.rollback``
    send for the pillar's ``hooks``, see docs/hooks.md); stop at the first failing one.

    A step is ``{name, cmd: [arg, ...], timeout}``: run as the project's ``user`` (never root), in the
    release's folder, without a shell, with a minimal environment (``PATH``, ``HOME``, ``USER``,
    ``LANG``, ``DEPLOY_ROOT``, ``DEPLOY_CURRENT``, ``DEPLOY_RELEASE``, ``DEPLOY_RELEASE_DIR``,
    ``DEPLOY_HOOK``); or ``{name, fun, args, kwargs}``: a Salt function run by root (none that runs
    commands: ``cmd.*``, ``state.*``... are refused).  The output goes to the minion's log; the
    return carries each step's name, exit code and, for a failing one, the output's last characters
    with the project's pillar values redacted.

    project
        Project name.
    phase
        ``before_switch``, ``once``, ``after_release`` or ``on_rollback`` (named in the log and in
        the child's ``DEPLOY_HOOK``).
    steps
        The steps, as the master sends them.
    release
        The release whose folder the steps run in (default: the one ``current`` points to).

    CLI Example:

    .. code-block:: bash

        salt pre-1 deploy.hooks rainbow once '[{"name": "migrate", "cmd": ["php", "artisan", "migrate"]}]' release=<rel>
        salt pre-1 deploy.hooks rainbow on_rollback '[{"name": "ping", "fun": "test.true"}]'
    """
    if phase not in HOOK_PHASES:
        raise CommandExecutionError(f"hooks: phase {phase!r} must be one of {', '.join(HOOK_PHASES)}")
    conf = _project(project)
    paths = _paths(conf)
    if release is None:
        release = _current_target(paths)
        if release is None:
            raise CommandExecutionError(f"hooks {phase}: {paths['current']} points to no release")
    _check_release(release)
    results = _hook_steps(conf, paths, release, phase, steps)
    ok = all(r["result"] for r in results)
    if not ok:
        __context__["retcode"] = 1
    return {"result": ok, "phase": phase, "release": release, "steps": results}


def _refuse_unexpected(paths, release, expect, force=False):
    """The refusal ``switch`` returns when this node is not in the state the caller expects, or does not
    see the expected target as the caller's record does (``why``: ``state`` or ``target``)."""
    want = expect.get(__opts__["id"]) if isinstance(expect, dict) else expect
    target = want if isinstance(want, dict) else None
    if target is not None:
        want = target.get("fingerprint")
    inv = _inventory(paths)

    def refusal(why, error):
        __context__["retcode"] = 1
        return {"result": False, "refused": True, "why": why, "release": release, "previous": inv["current"],
                "current": inv["current"], "error": f"refused: {error}; nothing was changed", "inventory": inv}

    if want is None or str(want) != inv["fingerprint"]:
        seen = f"expected state {want}" if want is not None else f"no expected state for {__opts__['id']}"
        return refusal("state", f"the releases on this node changed since the master's record ({seen}, "
                                f"found {inv['fingerprint']})")
    if target is None or "release" not in target:
        return None
    # the same fingerprint, yet the record may lie about the target: the node's own view decides
    if target["release"] != release:
        return refusal("target", f"the master's record names {target['release']} as the target, the call {release}")
    served = next((r["status"] for r in inv["releases"] if r["current"]), None)
    for key, value, seen in (("current", inv["current"], "this node serves"),
                             ("current_status", served, "the release this node serves is")):
        if key in target and target[key] != value:
            return refusal("target", f"{seen} {value}, the master's record says {target[key]}")
    mine = next((r for r in inv["releases"] if r["name"] == release), None)
    if mine is None or _read_meta(paths, release) is None:
        return refusal("target", f"release {release} is not prepared on this node")
    recorded = target.get("status")
    if mine["status"] == "bad" and not force:
        says = f" (the master's record says {recorded})" if recorded != "bad" else ""
        return refusal("target", f"release {release} is marked bad on this node{says}: a rollback does not go "
                                 "there without force")
    if recorded is not None and recorded != mine["status"]:
        return refusal("target", f"release {release} is {mine['status']} on this node, the master's record says "
                                 f"{recorded}")
    try:
        _check_complete(paths, release)
    except CommandExecutionError as exc:
        return refusal("target", str(exc))
    return None


# --------------------------------------------------------------------------- inventory


def _inventory(paths):
    current = _current_target(paths)
    switch_rec = _read_json(os.path.join(paths["meta"], "switch.json"), {}) or {}
    try:
        names = sorted(
            n for n in os.listdir(paths["releases"])
            if not n.startswith(".") and os.path.isdir(os.path.join(paths["releases"], n))
        )
    except FileNotFoundError:
        names = []
    releases = []
    for name in names:
        meta = _read_meta(paths, name) or {"name": name, "status": "prepared"}
        releases.append(
            {
                "name": name,
                "version": meta.get("version"),
                "branch": meta.get("branch"),
                "commit": meta.get("commit"),
                "committer": meta.get("committer"),
                "time": meta.get("time"),
                "checksum": meta.get("checksum"),
                "status": meta.get("status", "prepared"),
                "current": name == current,
                "prepared_at": meta.get("prepared_at", 0),
                "activated_at": meta.get("activated_at"),
            }
        )
    # newest first: by last activation, never-activated ones by when they were prepared
    releases.sort(key=lambda r: (r["activated_at"] or r["prepared_at"] or 0), reverse=True)
    return {
        "current": current,
        "previous": switch_rec.get("previous"),
        "releases": releases,
        "fingerprint": _fingerprint(current, releases),
    }


def _fingerprint(current, releases):
    """A short digest of what a rollback target depends on: current, names, statuses, release times.

    The master keeps each node's last reported inventory; an emergency rollback sends the
    digest it expects and a node whose digest differs refuses before changing anything.
    """
    state = [current, sorted([r["name"], r["status"], r["prepared_at"] or 0] for r in releases)]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def _report(result, paths, inventory):
    if inventory:
        result["inventory"] = _inventory(paths)
    return result


def releases(project):
    """
    List the releases on this node, newest first, with their status.

    Status is ``prepared`` (never passed checks), ``good`` (passed checks after
    activation) or ``bad`` (failed, or rolled back from); ``current`` flags the
    one served.

    project
        Project name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.releases rainbow
    """
    conf = _project(project)
    return _inventory(_paths(conf))


def current(project):
    """
    Name of the release ``current`` points to (None if there is none yet).

    project
        Project name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.current rainbow
    """
    return _current_target(_paths(_project(project)))


def info(project, release):
    """
    The metadata of one release on this node (None if it is not prepared).

    project
        Project name.
    release
        Release name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.info rainbow rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
    """
    _check_release(release)
    paths = _paths(_project(project))
    if not os.path.isdir(os.path.join(paths["releases"], release)):
        return None
    meta = _read_meta(paths, release)
    if meta is not None and _old_layout(paths, release):
        meta["old_layout"] = True  # prepared by an older version: preparing it again builds it anew
    return meta


def mark(project, release, status, inventory=False):
    """
    Mark a release ``good``, ``bad`` or ``prepared``.

    project
        Project name.
    release
        Release name.
    status
        good, bad or prepared.
    inventory
        ``True``: add this node's inventory to the return (see ``deploy.prepare``).

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.mark rainbow rainbow_pro_v1.2.0_master_2016-08-12_09-00-00_xuliangwei bad
    """
    _check_release(release)
    if status not in STATUSES:
        raise CommandExecutionError(f"status {status!r}: use one of {', '.join(STATUSES)}")
    paths = _paths(_project(project))
    meta = _update_meta(paths, release, f"marked {status}", status=status)
    return _report({"release": release, "status": meta["status"]}, paths, inventory)


def rollback_target(project):
    """
    The release this node would roll back to: of the good releases prepared before ``current``
    whose commit differs from ``current``'s, the newest (by prepare time); None if none.

    project
        Project name.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.rollback_target rainbow
    """
    # a copy of the master's rule (deploy_master.policy.node_target; tests/unit/test_policy.py pins them)
    releases = _inventory(_paths(_project(project)))["releases"]

    def age(rel):
        return rel.get("prepared_at") or rel.get("activated_at") or 0

    cur = next((r for r in releases if r["current"]), None)
    candidates = [
        r for r in releases
        if r["status"] == "good" and not r["current"]
        and (cur is None or (age(r) < age(cur) and not (r.get("commit") and r.get("commit") == cur.get("commit"))))
    ]
    return max(candidates, key=lambda r: (age(r), r["name"]))["name"] if candidates else None


def rollback(project, to=None, checks="gate", force=False):
    """
    Roll this node back: switch to ``to`` (default: the newest good release other than
    ``current``), restart, check, and mark the release left as bad.

    The cluster-wide commands are ``salt-run deploy.rollback``; this is for one node.

    project
        Project name.
    to
        Release to roll back to.
    checks
        ``gate`` (switch back again if the checks fail), ``report`` or ``skip``.
    force
        ``True``: go to ``to`` even if this node marked it bad (recorded, see ``deploy.activate``).

    CLI Example:

    .. code-block:: bash

        salt 'web-3' deploy.rollback rainbow
        salt 'web-3' deploy.rollback rainbow to=rainbow_pro_v1.0.0_master_2016-08-10_10-00-00_xuliangwei
        salt 'web-3' deploy.rollback rainbow to=<release marked bad> force=True
    """
    target = to or rollback_target(project)
    if not target:
        raise CommandExecutionError(
            f"project {project!r}: no good release to roll back to on this node; give to=<release>"
        )
    return switch(project, target, checks=checks, mark_left="bad", force=force)


def cleanup(project, keep=None, inventory=False):
    """
    Remove old releases, keeping ``keep_releases`` (pillar, default 5).

    Never removes ``current``, the previous release or the newest good one.  Bad and
    never-activated releases do not use up the keep count: they are removed only once
    they are older than the oldest release kept.  Leftovers of interrupted prepares are
    removed too, and then every blob of the content store that no release left links to
    (its only link is the store's): what a kept release uses is never removed.

    project
        Project name.
    keep
        Override ``keep_releases``.
    inventory
        ``True``: add this node's inventory to the return (see ``deploy.prepare``).

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.cleanup rainbow
        salt '*' deploy.cleanup rainbow keep=3
    """
    conf = _project(project)
    paths = _paths(conf)
    keep = int(keep if keep is not None else conf.get("keep_releases", 5))
    if keep < 1:
        raise CommandExecutionError(f"keep={keep}: keep at least 1 release")
    inv = _inventory(paths)
    protected = {inv["current"], inv["previous"]}
    good = [r["name"] for r in inv["releases"] if r["status"] == "good"]
    if good:
        protected.add(good[0])
    kept, removed, counted = [], [], 0
    for rel in inv["releases"]:
        counts = rel["activated_at"] is not None and rel["status"] != "bad"
        if rel["name"] in protected or counted < keep:
            kept.append(rel["name"])
            counted += 1 if counts else 0
            continue
        shutil.rmtree(os.path.join(paths["releases"], rel["name"]))
        for path in (_meta_path(paths, rel["name"]), _manifest_path(paths, rel["name"])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(rel["name"])
    _remove_stale_tmp(paths)
    result = {"kept": kept, "removed": removed}
    if os.path.isdir(paths["content"]):  # after the releases: a blob goes once no kept release links it
        result["blobs_removed"], result["blob_bytes_removed"] = _gc_store(paths)
    return _report(result, paths, inventory)


# --------------------------------------------------------------------------- validate (read-only)


def _shape(value):
    """``value`` with every leaf an empty value of its type: keys and types, never a value (the master
    checks them against the one definition of the pillar, deploy_master.pillar_schema)."""
    if isinstance(value, dict):
        return {str(key): _shape(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shape(item) for item in value]
    if isinstance(value, bool) or value is None:
        return False if value is not None else None
    return type(value)() if isinstance(value, (str, int, float)) else ""


def _has_key(data, key):
    for part in key.split(":"):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def validate(project, lb=None):
    """
    What this node would use of a project, checked without changing anything: the project in its
    pillar (compiled afresh), its root layout (root-only folders), the project user and group, and
    its ``config`` templates rendered (output discarded) in the sandbox with what they would see,
    from the sources of the release ``current`` points to (``salt://`` ones from the master).
    Declared template keys this node's pillar or grains lack are listed under ``missing`` (a template
    may give them a default).  On the load balancer's minion (``lb`` given and naming it in
    ``minion``) the LB's answer for the servers listed in ``lb:servers_asked`` goes under ``lb``.
    ``shape`` is the node's project pillar with every value emptied (keys and types only), for the
    master's schema check: no pillar value leaves the node.

    project
        Project name (pillar ``deploy:projects:<project>``).
    lb
        The env's ``lb`` (``salt-run deploy.validate`` passes it): asked only on its minion; a list
        of LB definitions (each with a ``name``): each one naming this minion, under ``lbs:<name>``.

    CLI Example:

    .. code-block:: bash

        salt '*' deploy.validate rainbow
    """
    problems = []
    out = {"result": True, "problems": problems, "missing": [], "shape": None}
    for one in lb if isinstance(lb, list) else [lb]:
        if isinstance(one, dict) and one.get("minion") == __grains__.get("id"):
            one = dict(one)
            asked = one.pop("servers_asked", None) or []
            try:
                answer = __salt__["deploy_lb.status"](one, asked)
            except Exception as exc:  # pylint: disable=broad-except  # the LB's own message names what failed
                answer = {"error": str(exc)}
            if isinstance(lb, list):  # several LBs: each one's answer under its name
                out.setdefault("lbs", {})[str(one.get("name"))] = answer
            else:
                out["lb"] = answer
    pillar = _plain(_fresh_pillar())
    defined = ((pillar.get("deploy") or {}).get("projects") or {}).get(project)
    try:
        conf = _project(project, pillar)
    except CommandExecutionError as exc:
        problems.append(str(exc))
        out["result"] = False
        return out
    conf["name"] = project
    out["shape"] = _shape(defined)
    try:
        paths = _paths(conf)
        _ids(conf)
        context = _template_context(conf, pillar, None)
        limits = _template_limits(conf)
    except CommandExecutionError as exc:
        problems.append(str(exc))
        out["result"] = False
        return out
    grains = __grains__.value() if hasattr(__grains__, "value") else dict(__grains__)
    for key, data in (("template_pillar", pillar), ("template_grains", grains)):
        for name in _declared(conf, key, TEMPLATE_GRAINS if key == "template_grains" else []):
            if not _has_key(data, name):
                out["missing"].append(f"{key} {name!r}")
    current = os.path.realpath(paths["current"]) if os.path.islink(paths["current"]) else None
    if current and os.path.dirname(current) == paths["releases"]:
        context["release"] = os.path.basename(current)
    else:
        current = None
    for dest, spec in (conf.get("config") or {}).items():
        source = spec.get("source") if isinstance(spec, dict) else None
        if not isinstance(source, str) or (current is None and not source.startswith("salt://")):
            continue  # a source in the release: nothing to render before the first release
        try:
            _render(dest, _template_source(spec, dest, current), context, limits)
        except CommandExecutionError as exc:
            problems.append(str(exc))
    out["result"] = not problems
    return out
