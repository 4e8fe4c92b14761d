"""
Functional tests of the node side: the ``deploy`` execution module and states, run
through Salt's loaders (pytest-salt-factories' ``Loaders``), no daemons.

One minion configuration for the session (``file_client: local``, our own
``pillar_roots`` and ``file_roots``); each test gets its own project root and
rewrites the pillar, then reloads the loaders so that ``__pillar__`` (read by
activate, switch, releases, cleanup) matches what ``prepare`` compiles afresh.
Everything on disk is real: tar archives, release trees, ownership, symlinks.
"""

import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading

import pytest
from tests.functional.fnlib import Project
from saltfactories.utils.functional import Loaders


@pytest.fixture(scope="session")
def base_dir():
    """A world-readable base (``cmd`` steps run as www-data and must reach the roots)."""
    path = tempfile.mkdtemp(prefix="dpl-fn-", dir="/tmp")
    os.chmod(path, 0o755)
    for sub in ("pillar", "files", "files/artifacts", "projects"):
        os.makedirs(os.path.join(path, sub), mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def minion_opts(salt_factories, base_dir):
    factory = salt_factories.salt_minion_daemon(
        "dpl-fn-minion",
        defaults={"root_dir": os.path.join(base_dir, "minion")},  # removed with base_dir
        overrides={
            "file_client": "local",
            "pillar_roots": {"base": [os.path.join(base_dir, "pillar")]},
            "file_roots": {"base": [os.path.join(base_dir, "files")]},
            # a local compile deep-merges the in-memory pillar under the fresh one (minion
            # default): off, so that prepare's fresh pillar is close to what a master compiles.
            # (It still starts from the in-memory top-level keys: change them, don't remove them.)
            "ssh_merge_pillar": False,
        },
    )
    return factory.config.copy()


@pytest.fixture(scope="session")
def loaders(minion_opts):
    return Loaders(minion_opts)


@pytest.fixture
def project(loaders, base_dir, request):
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    workdir = os.path.join(base_dir, "projects", "work")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir, mode=0o755)
    proj = Project(loaders, base_dir, workdir, label)
    try:
        yield proj
    finally:
        loaders.reset_state()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def shared_dir(project):
    """A world-writable directory (for files written by ``cmd`` steps run as www-data)."""
    path = os.path.join(project.workdir, "out")
    os.makedirs(path)
    os.chmod(path, 0o1777)
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``<root>/current/public/index.php`` as a web server would serve the release."""

    root = None

    def do_GET(self):  # noqa: N802
        index = os.path.join(self.server.root, "current", "public", "index.php")
        try:
            with open(index, "rb") as fh:
                body, status = fh.read(), 200
        except OSError:
            body, status = b"no current release", 404
        if b"status-500" in body:
            status = 500
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web(project):
    """A tiny web server on 127.0.0.1 serving the project's ``current``; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root = project.root
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_fs(project):
    """Mount a 2 MiB tmpfs as the project root (unmounted afterwards)."""
    os.makedirs(project.root)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", project.root], check=True)
    try:
        yield project.root
    finally:
        subprocess.run(["umount", project.root], check=True)


@pytest.fixture
def live(project):
    """A project with a served release r1: what must stay untouched."""
    project.deploy("r1")
    project.before = project.tree()
    yield project
    assert project.leftovers() == []
    assert project.current == "r1"
