"""Sample git repositories for the sandbox and the tests.

Everything here drives the ``git`` CLI with argument lists (never through a
shell), with an isolated git configuration (no system or global config is
read) so that results do not depend on the machine's git setup.

Layout of a ``kind='php'`` release (the repository root is the release root)::

    VERSION                   e.g. "1.0.0"
    public/index.php          prints "<project> <VERSION>", "greeting: ...", "release: <dir name>"
    public/health.php         prints "ok"
    config/app.ini.example    Jinja template rendered by the deploy system into config/app.ini
    config/crontab.xml        default job list
    storage/logs/.gitkeep

Layout of a ``kind='java'`` release (the repository root is the webapp root)::

    VERSION
    index.jsp                 prints "<project>-java <VERSION>" (version is part of the JSP text)
    health.jsp                prints "ok"
    WEB-INF/web.xml
"""

from __future__ import annotations

import atexit
import io
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
import uuid

__all__ = [
    "COMMITTER_NAME",
    "COMMITTER_EMAIL",
    "make_sample_repo",
    "add_release",
    "export_release",
    "activate_release",
    "git",
]

COMMITTER_NAME = "xuliangwei"
COMMITTER_EMAIL = "xuliangwei@example.com"

APPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
KINDS = ("php", "java")

_BROKEN_PHP = "http_response_code(500); // broken release\n"
_BROKEN_JSP = "    response.setStatus(500); // broken release\n"


class RepoError(RuntimeError):
    pass


_GLOBAL_CONFIG = None


def _global_config():
    """A private 'global' git config: only ``safe.directory = *`` (git ignores
    ``-c safe.directory`` in the upload-pack/receive-pack it spawns for local clones/pushes)."""
    global _GLOBAL_CONFIG
    if _GLOBAL_CONFIG is None or not os.path.exists(_GLOBAL_CONFIG):
        fd, name = tempfile.mkstemp(prefix="dpl-gitconfig-")
        with os.fdopen(fd, "w") as fh:
            fh.write("[safe]\n\tdirectory = *\n[init]\n\tdefaultBranch = master\n")
        os.chmod(name, 0o644)
        _GLOBAL_CONFIG = name
        atexit.register(lambda: os.path.exists(name) and os.unlink(name))
    return _GLOBAL_CONFIG


def _git_env():
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": tempfile.gettempdir(),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": _global_config(),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": COMMITTER_NAME,
        "GIT_AUTHOR_EMAIL": COMMITTER_EMAIL,
        "GIT_COMMITTER_NAME": COMMITTER_NAME,
        "GIT_COMMITTER_EMAIL": COMMITTER_EMAIL,
    }
    return env


def git(*args, cwd=None, check=True, binary=False) -> str | bytes:
    """Run ``git <args>`` (argument list, isolated config) and return stdout."""
    argv = [
        "git",
        "-c", "safe.directory=*",
        "-c", "init.defaultBranch=master",
        "-c", "commit.gpgsign=false",
        "-c", "tag.gpgsign=false",
        "-c", "core.hooksPath=" + os.devnull,
        *[str(a) for a in args],
    ]
    proc = subprocess.run(argv, cwd=cwd, env=_git_env(), capture_output=True)
    if check and proc.returncode != 0:
        raise RepoError(
            f"git {' '.join(map(str, args))} failed (rc={proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout if binary else proc.stdout.decode(errors="replace").strip()


def _mkdirs(path, mode=0o755):
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        os.mkdir(p)
        os.chmod(p, mode)


def _read_app(kind, relpath):
    with open(os.path.join(APPS_DIR, kind, relpath), encoding="utf-8") as fh:
        return fh.read()


def _pillar_path(project):
    if project.isidentifier():
        return f"pillar.deploy.projects.{project}"
    return f"pillar.deploy.projects[{project!r}]"


def _subst(text, project, version=None, broken=False, kind="php"):
    text = text.replace("@@PILLAR_PROJECT@@", _pillar_path(project)).replace("@@PROJECT@@", project)
    if version is not None:
        text = text.replace("@@VERSION@@", version)
    if kind == "java":
        text = text.replace("@@BROKEN@@", _BROKEN_JSP if broken else "")
    elif broken and text.startswith("<?php\n"):
        text = "<?php\n" + _BROKEN_PHP + text[len("<?php\n"):]
    return text


def _version_text(version):
    """Tag ``v1.2.0`` -> VERSION file content ``1.2.0``."""
    v = str(version)
    return v[1:] if v[:1] in ("v", "V") and v[1:2].isdigit() else v


def _release_files(kind, project, version, broken=False, initial=False):
    """{relpath: text} of the files that change per release (all files if initial)."""
    ver = _version_text(version)
    files = {"VERSION": ver + "\n"}
    if kind == "php":
        for rel in ("public/index.php", "public/health.php"):
            files[rel] = _subst(_read_app("php", rel), project, ver, broken, "php")
        if initial:
            for rel in ("config/app.ini.example", "config/crontab.xml"):
                files[rel] = _subst(_read_app("php", rel), project, ver, False, "php")
            files["storage/logs/.gitkeep"] = ""
    else:
        for rel in ("index.jsp", "health.jsp"):
            files[rel] = _subst(_read_app("java", rel + ".in"), project, ver, broken, "java")
        if initial:
            files["WEB-INF/web.xml"] = _subst(_read_app("java", "WEB-INF/web.xml"), project, ver, False, "java")
    return files


def _safe_relpath(rel):
    rel = str(rel).replace("\\", "/")
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm == "." or norm.startswith("..") or norm.split(os.sep)[0] == ".git":
        raise ValueError(f"bad relative path in files: {rel!r}")
    return norm


def _write_files(worktree, files):
    for rel, text in files.items():
        full = os.path.join(worktree, _safe_relpath(rel))
        if text is None:
            if os.path.lexists(full):
                os.remove(full)
            continue
        _mkdirs(os.path.dirname(full))
        with open(full, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(full, 0o644)


def _fix_tree(path, uid, gid):
    """Make the bare repo world-readable and owned like its top directory."""
    me = os.geteuid()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [None] + dirnames + filenames:
            p = dirpath if name is None else os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            want = st.st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode):
                want |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            if want != st.st_mode:
                os.chmod(p, stat.S_IMODE(want))
            if me == 0 and (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(p, uid, gid)


def _commit_and_push(worktree, message, tag_name=None):
    git("add", "-A", cwd=worktree)
    git("commit", "--allow-empty", "-q", "-m", message, cwd=worktree)
    if tag_name:
        git("tag", tag_name, cwd=worktree)
    git("push", "-q", "origin", "HEAD:refs/heads/master", cwd=worktree)
    if tag_name:
        git("push", "-q", "origin", f"refs/tags/{tag_name}:refs/tags/{tag_name}", cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree)


def make_sample_repo(path, project="rainbow", kind="php", owner=None) -> str:
    """Create a bare repository at ``path`` with two tagged releases and return its path.

    * ``v1.0.0``: first commit ("initial import"), VERSION 1.0.0
    * ``v1.1.0``: second commit, VERSION 1.1.0 (for java also the JSP text)

    Branch ``master``; author and committer ``xuliangwei``; lightweight tags.
    ``owner``: optional user name; the repository is chowned to it (when run as
    root), so that e.g. ``www-data`` can use it without git's dubious-ownership
    error.  Later :func:`add_release` calls keep that ownership.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = os.path.abspath(str(path))
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"{path} exists and is not empty")
    _mkdirs(path)
    git("init", "-q", "--bare", "--initial-branch=master", path)
    git("config", "sandbox.project", project, cwd=path)
    git("config", "sandbox.kind", kind, cwd=path)
    git("config", "receive.denyNonFastForwards", "false", cwd=path)

    with tempfile.TemporaryDirectory(prefix="dpl-repo-") as tmp:
        work = os.path.join(tmp, "w")
        git("clone", "-q", path, work)
        git("checkout", "-q", "-B", "master", cwd=work)
        _write_files(work, _release_files(kind, project, "1.0.0", initial=True))
        _commit_and_push(work, f"{project}: initial import (1.0.0)", "v1.0.0")
        _write_files(work, _release_files(kind, project, "1.1.0"))
        _commit_and_push(work, f"{project}: release 1.1.0", "v1.1.0")

    if owner is not None:
        pw = pwd.getpwnam(owner)
        uid, gid = pw.pw_uid, pw.pw_gid
    else:
        st = os.stat(path)
        uid, gid = st.st_uid, st.st_gid
    _fix_tree(path, uid, gid)
    return path


def add_release(path, version, files=None, broken=False, tag=True) -> str:
    """Commit a new release on ``master`` of the bare repo ``path``; return the commit sha.

    ``version``: tag name as given (e.g. ``"v1.2.0"``); the VERSION file gets it
    without a leading ``v`` (``1.2.0``).  For java the JSP text itself changes.
    ``files``: optional ``{relpath: text}`` written on top (``None`` deletes the file).
    ``broken=True``: index and health pages answer HTTP 500 (PHP
    ``http_response_code(500)``, JSP ``response.setStatus(500)``); a later
    non-broken release repairs them.
    ``tag``: also create and push the lightweight tag ``version``.
    """
    path = os.path.abspath(str(path))
    project = git("config", "--get", "sandbox.project", cwd=path, check=False) or "rainbow"
    kind = git("config", "--get", "sandbox.kind", cwd=path, check=False)
    st = os.stat(path)
    with tempfile.TemporaryDirectory(prefix="dpl-repo-") as tmp:
        work = os.path.join(tmp, "w")
        git("clone", "-q", "--branch", "master", path, work)
        if not kind:
            kind = "java" if os.path.exists(os.path.join(work, "index.jsp")) else "php"
        _write_files(work, _release_files(kind, project, version, broken=broken))
        if files:
            _write_files(work, files)
        label = "broken release" if broken else "release"
        sha = _commit_and_push(work, f"{project}: {label} {_version_text(version)}",
                               str(version) if tag else None)
    _fix_tree(path, st.st_uid, st.st_gid)
    return sha


def export_release(repo, ref, dest, owner=None) -> str:
    """``git archive <ref>`` of ``repo`` extracted into the new directory ``dest``.

    Directories are 0755, files keep git's modes; ``owner`` optionally chowns the tree.
    Returns ``dest``.
    """
    dest = os.path.abspath(str(dest))
    if os.path.exists(dest):
        raise FileExistsError(dest)
    data = git("archive", "--format=tar", str(ref), cwd=str(repo), binary=True)
    _mkdirs(os.path.dirname(dest))
    tmp = dest + ".tmp-" + uuid.uuid4().hex[:8]
    os.mkdir(tmp)
    os.chmod(tmp, 0o755)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for member in tf.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise RepoError(f"unsafe path in archive: {member.name!r}")
            tf.extractall(tmp, filter="tar") if hasattr(tarfile, "tar_filter") else tf.extractall(tmp)
        for dirpath, dirnames, _ in os.walk(tmp):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        if owner is not None:
            pw = pwd.getpwnam(owner)
            for dirpath, dirnames, filenames in os.walk(tmp):
                for n in [None] + dirnames + filenames:
                    os.lchown(dirpath if n is None else os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def activate_release(root, release_dir) -> str:
    """Atomically point ``<root>/current`` at ``release_dir`` (symlink + rename). Returns the link path."""
    root = os.path.abspath(str(root))
    link = os.path.join(root, "current")
    tmp = os.path.join(root, ".current-" + uuid.uuid4().hex[:8])
    os.symlink(os.path.abspath(str(release_dir)), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
    return link
