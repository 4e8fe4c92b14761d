"""
A real cluster for the integration tests, started once per session:

- a salt-master and minions lb-1, pre-1, web-1, web-2, web-3 (pytest-salt-factories);
- nginx + PHP-FPM (OPcache on, validate_timestamps=0) on pre-1 and web-1..3, as www-data,
  each on its own loopback address 127.0.1.N:8080, serving <node root>/current/public;
- HAProxy in front of web-1..3 with its admin socket, driven by lb-1;
- the sample git repository `rainbow` with tags.

Each node has its own project root (one machine plays all of them), given to it by its
own pillar file; everything else comes from the project pillar as a user would write it.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import yaml

from sandbox import repo as sample_repo
from sandbox import web

USER = "www-data"
NODES = {  # minion id -> (address, grains)
    "pre-1": ("127.0.1.10", {"region": "west"}),
    "web-1": ("127.0.1.11", {"region": "east"}),
    "web-2": ("127.0.1.12", {"region": "west"}),
    "web-3": ("127.0.1.13", {"region": "west"}),
}
WEB = ["web-1", "web-2", "web-3"]


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
        self.run_cli = master.salt_run_cli(timeout=300)
        self.pillar_dir = os.path.join(work, "pillar")
        self.state_dir = os.path.join(master.config["cachedir"], "deploy")
        self.node_extra = {}
        self.project_extra = {}

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

    def refresh_pillar(self):
        ret = self.salt.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*")
        assert ret.returncode == 0, ret

    # ---- pillar
    def project_pillar(self):
        lb = {
            "driver": "haproxy",
            "minion": "lb-1",
            "socket": self.lb.socket,
            "backend": "rainbow",
            "drain_timeout": 10,
        }
        project = {
            "repo": self.repo,
            "root": "/data/www/rainbow",  # the nodes override it (one machine plays every node)
            "user": USER,
            "group": USER,
            "keep_releases": 3,
            "build": [],
            "shared": ["storage/logs", "public/uploads"],
            "config": {"config/app.ini": {"source": "config/app.ini.example", "mode": "0640"}},
            "files": {},
            "lb": lb,
            "envs": {
                "pro": {
                    "branch": "master",
                    "target": "G@roles:rainbow and G@env:pro",
                    "preprod": "pre-1",
                    "stages": [
                        {"name": "gray", "target": "G@region:east", "batch": 1},
                        {"name": "all", "batch": 1},
                    ],
                    "max_failures": 0,
                },
            },
        }
        return _merge(project, self.project_extra)

    def node_pillar(self, node):
        addr = NODES[node][0]
        conf = {
            "root": self.root(node),
            "restart": [{"cmd": self.php[node].reload_command()}],
            "checks": [
                {"url": f"http://{addr}:8080/", "status": 200, "contains": "release: {release}", "retries": 10, "delay": 0.2},
                {"url": f"http://{addr}:8080/health.php", "status": 200, "contains": "ok", "retries": 3, "delay": 0.5},
            ],
        }
        if node == "web-3":
            conf["files"] = {"config/crontab.xml": {"contents": "<crontab><job name='report'/></crontab>\n", "mode": "0644"}}
        return _merge(conf, self.node_extra.get(node, {}))

    def write_pillar(self):
        os.makedirs(self.pillar_dir, exist_ok=True)
        top = {"base": {"*": ["project"], "G@roles:rainbow": [{"match": "compound"}, "secrets"]}}
        for node in NODES:
            top["base"][node] = [f"node_{node.replace('-', '_')}"]
            _dump(os.path.join(self.pillar_dir, f"node_{node.replace('-', '_')}.sls"),
                  {"deploy": {"projects": {"rainbow": self.node_pillar(node)}}})
        _dump(os.path.join(self.pillar_dir, "top.sls"), top)
        _dump(os.path.join(self.pillar_dir, "project.sls"), {"deploy": {"projects": {"rainbow": self.project_pillar()}}})
        _dump(os.path.join(self.pillar_dir, "secrets.sls"), {"rainbow_secrets": SECRETS})

    def set_pillar(self, node_extra=None, project_extra=None):
        self.node_extra = node_extra or {}
        self.project_extra = project_extra or {}
        self.write_pillar()
        self.refresh_pillar()


SECRETS = {"sms_key": "SMSKEY-5f1d2c9a-secret", "pay_key": "PAYKEY-77ae01b3-secret"}


def _merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _dump(path, data):
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, default_flow_style=False)


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
def php_nodes(work_dir):
    nodes = {}
    try:
        for node, (addr, _) in NODES.items():
            root = os.path.join(work_dir, "nodes", node, "rainbow")
            os.makedirs(root, exist_ok=True)
            for part in ("nodes", f"nodes/{node}"):
                os.chmod(os.path.join(work_dir, part), 0o755)
            nodes[node] = web.PhpNode(node, addr, root, os.path.join(work_dir, "svc", node), user=USER)
            nodes[node].start()
        yield nodes
    finally:
        for svc in nodes.values():
            svc.stop()


@pytest.fixture(scope="session")
def haproxy(work_dir, php_nodes):
    lb = web.HAProxy(
        os.path.join(work_dir, "svc", "haproxy"),
        "rainbow",
        {n: f"{NODES[n][0]}:8080" for n in WEB},
        bind=f"127.0.0.1:{_free_port()}",
        user=USER,
    )
    lb.start()
    yield lb
    lb.stop()


@pytest.fixture(scope="session")
def cluster(salt_factories, work_dir, rainbow_repo, php_nodes, haproxy):
    file_roots = os.path.join(work_dir, "file_roots")
    os.makedirs(file_roots)
    pillar_dir = os.path.join(work_dir, "pillar")
    os.makedirs(pillar_dir)
    master = salt_factories.salt_master_daemon(
        "master",
        overrides={
            "file_roots": {"base": [file_roots]},
            "pillar_roots": {"base": [pillar_dir]},
            "deploy_timeout": 5,
            "gather_job_timeout": 5,
            "log_level_logfile": "info",
        },
    )
    minions = {}
    for node in ["lb-1", *NODES]:
        grains = {"roles": ["rainbow"], "env": "pro", **NODES[node][1]} if node in NODES else {"roles": ["lb"]}
        minions[node] = master.salt_minion_daemon(node, overrides={"grains": grains, "log_level_logfile": "info"})
    c = Cluster(work_dir, master, minions, haproxy, php_nodes, rainbow_repo)
    c.write_pillar()
    with master.started(start_timeout=120):
        try:
            # minions start in parallel: ~10 s instead of ~8 s each
            with concurrent.futures.ThreadPoolExecutor(len(minions)) as pool:
                list(pool.map(lambda m: m.start(start_timeout=120), minions.values()))
            c.refresh_pillar()
            yield c
        finally:
            for minion in minions.values():
                minion.terminate()


@pytest.fixture
def clean_cluster(cluster):
    """Every test starts with the default pillar, no lock, every web node ready in the LB."""
    cluster.set_pillar()
    for lock in ("rainbow_pro.lock", "rainbow_pro.detached.json"):
        path = os.path.join(cluster.state_dir, "locks", lock)
        if os.path.exists(path):
            os.unlink(path)
    for node in WEB:
        cluster.lb.command(f"set server rainbow/{node} state ready")
    yield cluster
