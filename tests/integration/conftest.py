"""
A real cluster for the integration tests, started once per test process and shared by every module that
process runs (``pytest -n 3 --dist loadfile``: each of the 3 processes has a cluster of its own, and a
module's tests all run in one process, so its module-scoped daemons are started once):

- a salt-master and minions lb-1, pre-1, web-1, web-2, web-3 (pytest-salt-factories);
- nginx + PHP-FPM (OPcache on, validate_timestamps=0) on pre-1 and web-1..3, as www-data,
  each on its own loopback address (NET.N:8080), serving <node root>/current/public;
- HAProxy in front of web-1..3 with its admin socket, driven by lb-1;
- the sample git repository `rainbow` with tags.

Each node has its own project root (one machine plays all of them), given to it by its
own pillar file; everything else comes from the project pillar as a user would write it.

The web services start in a thread of their own while the Salt daemons start (``web_services``);
the minions start, and everything stops, in parallel.

Shared fixtures, for a new module to reuse (they are session-scoped unless said otherwise):

- ``cluster`` (a ``Cluster``): the daemons and handles: ``run`` (salt-run deploy.*), ``call`` (salt
  <node>), ``set_pillar`` (rewrite the pillar, refresh only the minions it changes), ``currents``,
  ``lb_states``, paths (``root``, ``release_dirs``, ``state_dir``), ``php`` and ``lb`` (the services);
- ``clean_cluster`` (per test): ``cluster`` with the default pillar, no lock of rainbow/pro, every web
  node ready in HAProxy.  A test that needs other state sets it through ``set_pillar`` (which the next
  test's ``clean_cluster`` undoes) or names a project or env of its own (``other_projects``,
  ``node_projects``): tests stay independent of their order;
- ``php_nodes``, ``haproxy``, ``rainbow_repo``, ``work_dir`` (the session's folder, 0755 under /tmp);
- ``in_parallel(fun, items)``: start or stop independent daemons at the same time.

A module builds daemons of its own only when a test needs what the shared cluster cannot be (it
kills or adds minions for good, needs a second master or another store, or tests the services
themselves), once for the module (``scope="module"``), and says why in its docstring.  Loopback
addresses: the session's nodes are NET.10-13; a module's own services take free numbers in NET
(stg-1 NET.20, the nginx-LB project's nodes NET.21-23, Tomcat NET.31-32, LBs NET.100).

Every integration test is marked ``slow`` except the real-daemon core in ``CORE`` (a release, a
normal and an emergency rollback), which ``pytest -m "not slow" tests`` runs beside the unit and
functional tests (README, "The two set-up commands").
"""

import concurrent.futures
import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import uuid

import pytest
import salt.client

from sandbox import console, pillar
from sandbox import repo as sample_repo
from sandbox import web

USER = "www-data"
# Each test process gets its own loopback /24 (127.0.0.0/8 needs no set-up), so that the processes of one
# run, and two runs on one machine (two checkouts tested at once), never collide.
NET = os.environ.get("DPL_TEST_NET") or f"127.{random.randint(2, 254)}.{random.randint(1, 254)}"
NODES = {  # minion id -> (address, grains)
    "pre-1": (f"{NET}.10", {"region": "west"}),
    "web-1": (f"{NET}.11", {"region": "east"}),
    "web-2": (f"{NET}.12", {"region": "west"}),
    "web-3": (f"{NET}.13", {"region": "west"}),
}
WEB = ["web-1", "web-2", "web-3"]
# the integration tests that `-m "not slow"` keeps: one session cluster, a release, both rollbacks
CORE = {
    "test_release.py::test_release_serves_new_version_everywhere",
    "test_rollback.py::test_rollback_goes_to_the_last_good_release_skipping_a_bad_one",
    "test_rollback.py::test_emergency_rollback_switches_every_node_at_once_and_restarts",
}
HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
    """Every integration test but the ``CORE`` is ``slow`` (a new test too, until it is named there)."""
    for item in items:
        path = str(item.path)
        if os.path.dirname(path) == HERE and f"{os.path.basename(path)}::{item.name}" not in CORE:
            item.add_marker(pytest.mark.slow)


def in_parallel(fun, items):
    """fun(item) for every item, each in a thread of its own (daemons that start or stop independently,
    each waiting for its own processes); the first error is raised once every call has ended."""
    items = list(items)
    if not items:
        return
    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(fun, item) for item in items]
    for future in futures:
        future.result()


@contextlib.contextmanager
def own_sandbox(prefix, nets, **kwargs):
    """A whole sandbox of a module's own (``sandbox.cluster.Sandbox`` with 3 web nodes and ``kwargs``), in
    ``/tmp/<prefix>-<random>``, its nodes on 127.0.N for a random N in ``nets``; stopped and removed after."""
    from sandbox import cluster as sandbox_cluster

    problems = sandbox_cluster.missing_requirements()
    assert not problems, "; ".join(problems)
    path = f"/tmp/{prefix}-{uuid.uuid4().hex[:6]}"
    box = sandbox_cluster.Sandbox(path, web=3, net=f"127.0.{random.choice(list(nets))}",
                                  lb_port=sandbox_cluster._free_port(),  # pylint: disable=protected-access
                                  out=lambda *_: None, **kwargs)
    try:
        box.up()
        yield box
    finally:
        box.stop()
        box.remove()


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """Handles for the tests: CLIs, paths, pillar editing, web servers."""

    def __init__(self, work, master, minions, lb, php, repo_path):
        self.work = work
        self.master = master
        self.minions = minions
        self.lb = lb
        self.php = php
        self.repo = repo_path
        self.salt = master.salt_cli(timeout=180)
        self.local = None  # Salt's LocalClient in this process (refresh_pillar)
        self.run_cli = master.salt_run_cli(timeout=300)
        self.pillar_dir = os.path.join(work, "pillar")
        self.state_dir = os.path.join(master.config["cachedir"], "deploy")
        self.node_extra = {}
        self.project_extra = {}
        self.other_projects = {}
        self.node_projects = {}
        # minion -> fingerprint of the pillar files it holds in memory, None when unknown: a minion
        # picks up the files when it starts, on a refresh, and when deploy.prepare finds its pillar
        # stale, so one that was written a pillar other than what it holds may hold either
        self.held = {}

    def fingerprints(self):
        """minion -> fingerprint of the pillar files it is compiled from (top, project, secrets, its own)."""
        def read(name):
            try:
                with open(os.path.join(self.pillar_dir, name), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return b""
        common = b"\0".join(read(name) for name in ("top.sls", "project.sls", "secrets.sls"))
        return {m: hashlib.sha256(common + b"\0" + read(f"{pillar.node_sls_name(m)}.sls")).hexdigest()
                for m in self.minions}

    # ---- paths on the nodes
    def root(self, node, project="rainbow"):
        return os.path.join(self.work, "nodes", node, project)

    def current(self, node, project="rainbow"):
        link = os.path.join(self.root(node, project), "current")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def currents(self, nodes=None):
        return {n: self.current(n) for n in (nodes or list(NODES))}

    def release_dirs(self, node, project="rainbow"):
        path = os.path.join(self.root(node, project), "releases")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def lb_states(self):
        return {n: self.lb.server_state(n) for n in WEB}

    # ---- salt
    def run(self, fun, *args, **kwargs):
        """salt-run deploy.<fun> key=value ... -> ProcessResult (data: parsed JSON)."""
        argv = [fun, *args] + [f"{k}={v}" for k, v in kwargs.items()]
        return self.run_cli.run(*argv)

    def call(self, target, fun, *args):
        """salt <target> <fun> args... -> ProcessResult (data: that minion's return)."""
        return self.salt.run(fun, *args, minion_tgt=target)

    def refresh_pillar(self, minions=None):
        """saltutil.refresh_pillar (wait) on every minion (or on these), published from this process:
        a `salt` CLI would first spend a CPU-second or more importing Salt."""
        if self.local is None:
            self.local = salt.client.get_local_client(mopts=self.master.config.copy())
        written = self.fingerprints()
        if minions is None:
            ret = self.local.cmd("*", "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=180)
        else:
            ret = self.local.cmd(sorted(minions), "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=180,
                                 tgt_type="list")
        assert all(ret.get(m) is True for m in minions or self.minions) and all(v is True for v in ret.values()), ret
        self.held.update({m: written[m] for m in minions or self.minions})

    def refresh_stale_pillar(self):
        """Refresh the minions whose pillar in memory may not be what the files say; the others' refresh
        would change nothing (a refresh of every minion costs 5-15 s on a loaded 2-core machine)."""
        stale = [m for m, fp in self.fingerprints().items() if self.held.get(m) != fp]
        if stale:
            self.refresh_pillar(stale)

    # ---- pillar (written with the sandbox's pillar writer, as a user would lay it out)
    def write_pillar(self):
        lb = {"driver": "haproxy", "minion": "lb-1", "socket": self.lb.socket, "backend": "rainbow",
              "drain_timeout": 10}
        project = pillar.project_pillar(self.repo, lb, overrides=self.project_extra)
        nodes = {
            node: pillar.node_pillar(self.root(node), addr, self.php[node].reload_command(), job=node == "web-3",
                                     overrides=self.node_extra.get(node))
            for node, (addr, _) in NODES.items()
        }
        pillar.write_pillar(self.pillar_dir, project, nodes, SECRETS,
                            other_projects=self.other_projects, node_projects=self.node_projects)
        for minion, fp in self.fingerprints().items():
            if self.held.get(minion) != fp:
                self.held[minion] = None

    def set_pillar(self, node_extra=None, project_extra=None, other_projects=None, node_projects=None):
        """Rewrite the pillar (defaults plus these overrides) and refresh it on every minion (whose
        pillar it changes)."""
        self.node_extra = node_extra or {}
        self.project_extra = project_extra or {}
        self.other_projects = other_projects or {}
        self.node_projects = node_projects or {}
        self.write_pillar()
        self.refresh_stale_pillar()


# the web console's users (file eauth; tests/integration/test_console.py)
CONSOLE_USERS = {"operator": "op-3f9c-Test", "viewer": "view-71ab-Test"}
# searched for by the secrets tests
SECRETS = {"sms_key": "SMSKEY-5f1d2c9a-secret", "pay_key": "PAYKEY-77ae01b3-secret"}


@pytest.fixture(scope="session")
def salt_factories_config(work_dir):
    """Daemon trees under the session's work dir (short paths, removed afterwards)."""
    return {"root_dir": os.path.join(work_dir, "salt")}


@pytest.fixture(scope="session")
def work_dir():
    path = tempfile.mkdtemp(prefix="dpl-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def rainbow_repo(work_dir):
    return sample_repo.make_sample_repo(os.path.join(work_dir, "git", "rainbow.git"), project="rainbow")


@pytest.fixture(scope="session")
def web_services(work_dir):
    """The session's nginx + PHP-FPM nodes and HAProxy: (nodes, lb, started).  Built at once and started in a
    thread of their own (the nodes in parallel, then HAProxy), so that the Salt daemons start meanwhile;
    ``started`` is the future to wait on (``php_nodes``, ``haproxy`` and ``cluster`` do)."""
    nodes = {}
    for node, (addr, _) in NODES.items():
        root = os.path.join(work_dir, "nodes", node, "rainbow")
        os.makedirs(root, exist_ok=True)
        for part in ("nodes", f"nodes/{node}"):
            os.chmod(os.path.join(work_dir, part), 0o755)
        nodes[node] = web.PhpNode(node, addr, root, os.path.join(work_dir, "svc", node), user=USER)
    lb = web.HAProxy(
        os.path.join(work_dir, "svc", "haproxy"),
        "rainbow",
        {n: f"{NODES[n][0]}:8080" for n in WEB},
        bind=f"127.0.0.1:{_free_port()}",
        user=USER,
        metrics_bind=f"127.0.0.1:{_free_port()}",  # HAProxy's Prometheus exporter (test_prometheus)
    )

    def start():
        in_parallel(lambda svc: svc.start(), nodes.values())  # each waits for its own nginx and FPM
        lb.start()

    starter = concurrent.futures.ThreadPoolExecutor(1)
    started = starter.submit(start)
    try:
        yield nodes, lb, started
    finally:
        concurrent.futures.wait([started])
        starter.shutdown()
        in_parallel(lambda svc: svc.stop(), [lb, *nodes.values()])


@pytest.fixture(scope="session")
def php_nodes(web_services):
    """minion id -> its running ``web.PhpNode`` (pre-1, web-1..3)."""
    web_services[2].result()
    return web_services[0]


@pytest.fixture(scope="session")
def haproxy(web_services):
    """The running ``web.HAProxy`` in front of web-1..3 (backend ``rainbow``, admin socket)."""
    web_services[2].result()
    return web_services[1]


@pytest.fixture(scope="session")
def cluster(salt_factories, work_dir, rainbow_repo, web_services):
    file_roots = os.path.join(work_dir, "file_roots")
    os.makedirs(file_roots)
    pillar_dir = os.path.join(work_dir, "pillar")
    os.makedirs(pillar_dir)
    # salt-api (started only by the tests that need it) serves the console on this port
    api_port = _free_port()
    users = console.write_users(os.path.join(work_dir, "console-users"), CONSOLE_USERS)
    master = salt_factories.salt_master_daemon(
        "master",
        overrides={
            "file_roots": {"base": [file_roots]},
            "pillar_roots": {"base": [pillar_dir]},
            "deploy_timeout": 5,
            "gather_job_timeout": 5,
            "log_level_logfile": "info",
            **console.master_options(users, api_port, log_dir=work_dir),
        },
    )
    minions = {}
    for node in ["lb-1", *NODES]:
        grains = {"roles": ["rainbow"], "env": "pro", **NODES[node][1]} if node in NODES else {"roles": ["lb"]}
        minions[node] = master.salt_minion_daemon(node, overrides={"grains": grains, "log_level_logfile": "info"})
    php_nodes, haproxy, web_started = web_services
    c = Cluster(work_dir, master, minions, haproxy, php_nodes, rainbow_repo)
    c.api_port = api_port
    c.write_pillar()
    with master.started(start_timeout=120):
        try:
            # minions start in parallel: ~10 s instead of ~8 s each
            in_parallel(lambda m: m.start(start_timeout=120), minions.values())
            web_started.result()  # the web services started meanwhile
            c.refresh_pillar()
            yield c
        finally:
            if c.local is not None:
                c.local.destroy()
            in_parallel(lambda minion: minion.terminate(), minions.values())


@pytest.fixture
def clean_cluster(cluster):
    """Every test starts with the default pillar, no lock, every web node ready in the LB.
    Only the minions whose pillar may not be the default one are refreshed."""
    cluster.set_pillar()
    for lock in ("rainbow_pro.lock", "rainbow_pro.detached.json"):
        path = os.path.join(cluster.state_dir, "locks", lock)
        if os.path.exists(path):
            os.unlink(path)
    for node in WEB:
        cluster.lb.command(f"set server rainbow/{node} state ready")
    yield cluster
