"""A whole sandbox cluster in one local folder: a salt-master, its minions, the web stack.

:class:`Sandbox` lays out, starts, inspects and removes (``python -m sandbox up|status|down``)::

    <path>/sandbox.json            state: ports, addresses, pids (read by `status` and `down`)
    <path>/etc/salt/master         master config; also for `salt -c` and `salt-run -c`
    <path>/etc/minions/<id>/minion one config dir per minion
    <path>/var/<daemon>/{pki,cache}  salt's own state (root_dir = <path>)
    <path>/run/                    pid files and the daemons' unix sockets (sock_dir)
    <path>/logs/                   master.log, <id>.log
    <path>/srv/salt, srv/pillar    file_roots and pillar_roots of base
    <path>/git/rainbow.git         the sample repository (sandbox/repo.py)
    <path>/nodes/<id>/rainbow      each node's project root (releases/, shared/, current)
    <path>/svc/<id>, svc/haproxy   the web services' workdirs (sandbox/web.py)

Minions: ``lb-1`` (drives HAProxy), ``pre-1`` (pre-production), ``web-1``..``web-N``
(grains roles [rainbow], env pro, region east for web-1, west for the others); the job
node (own crontab.xml) is web-3 (or the last web node when there are fewer).  Every
rainbow node runs nginx + PHP-FPM as www-data on ``<net>.<10+i>:8080`` (pre-1 is
``.10``); HAProxy on ``127.0.0.1:<lb_port>`` (default 8088) balances web-1..N.

With ``syndics=N`` (``up --syndics N``, docs/syndics.md) the master is a master of masters (MoM) above N
syndic masters ``sm-1``..``sm-N`` on ``<net>.2``.., each with its salt-syndic (config folder
``etc/salt-sm-<i>``: ``master`` and the salt-syndic's ``minion``; pillar ``srv/pillar-sm-<i>``: the
project and its own minions' node pillar; the MoM's ``srv/pillar`` holds the project only); the
minions are dealt to them in turn, every daemon uses the TCP transport, and the runner runs on the MoM.

All daemons run detached (own sessions), so they outlive the ``up`` process.
Unix sockets must stay short (~107 bytes): when ``<path>`` is long, the salt trees are
reached through a short symlink ``/tmp/dpl-sbx-<hash>`` -> ``<path>``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import yaml

from sandbox import console
from sandbox import pillar as sandbox_pillar
from sandbox import repo as sample_repo
from sandbox import web as web_stack

PROJECT = "rainbow"
ENV = "pro"
USER = "www-data"
STATE_FILE = "sandbox.json"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(REPO_ROOT, ".sandbox")
DEFAULT_LB_PORT = 8088
DEFAULT_API_PORT = 8090  # salt-api with the web console (another free port if taken)
DEFAULT_NET = "127.0.1"
NODE_PORT = 8080
MAX_WEB = 100  # web nodes a sandbox may have (their addresses: <net>.11 .. <net>.110)
LIGHT_ABOVE = 50  # more web nodes than this: a light sandbox by default (see Sandbox)
START_WAVE = 20  # a light sandbox starts its minions this many at a time (see Sandbox._start_minions)
MINION_NICE = 19  # ... and runs them at this nice level
MAX_SYNDICS = 4  # syndic masters a sandbox may have (their addresses: <net>.2 .. <net>.5)
# the MoM's own options (docs/syndics.md): it publishes with the syndics' routing and waits for the minion lists
# they report; TCP on every daemon of a syndic topology (salt-syndic of Salt 3008 on Python 3.11 stalls on zeromq)
SYNDIC_MOM_OPTS = {"order_masters": True, "syndic_wait": 2, "transport": "tcp"}
RESERVED_PORTS = {4505, 4506, 8080, DEFAULT_LB_PORT}
# longest socket name salt puts in a sock_dir: minion_event_<10 hex>_pull.ipc
_SOCK_NAME = 40
_SOCK_LIMIT = 100

APT_PACKAGES = {  # binary used by sandbox/web.py -> Debian package
    web_stack.NGINX: "nginx",
    web_stack.PHP_FPM: "php8.2-fpm",
    web_stack.HAPROXY: "haproxy",
    "git": "git",
}


class SandboxError(RuntimeError):
    """Something the user can act on: the message says what."""


# --------------------------------------------------------------------------- helpers


def salt_bin(name):
    """``salt-master`` & co. from the current interpreter's environment (the venv's bin dir)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def missing_requirements():
    """Human-readable problems that stop a sandbox from starting on this machine ([] = fine)."""
    problems = []
    packages = []
    for binary, package in APT_PACKAGES.items():
        found = os.access(binary, os.X_OK) if os.path.isabs(binary) else shutil.which(binary)
        if not found:
            problems.append(f"{binary} is missing (Debian package {package})")
            packages.append(package)
    opcache_ini = os.path.join(web_stack.PHP_FPM_CONF_D, "10-opcache.ini")
    if os.access(web_stack.PHP_FPM, os.X_OK) and not os.path.exists(opcache_ini):
        problems.append(f"PHP OPcache is not enabled for {web_stack.PHP_FPM} (Debian package php8.2-opcache)")
        packages.append("php8.2-opcache")
    if packages:
        problems.append("install them with:  apt-get install -y " + " ".join(packages))
    try:
        pwd.getpwnam(USER)
    except KeyError:
        problems.append(f"user {USER} does not exist (the web services run as it): adduser --system --group {USER}")
    for name in ("salt-master", "salt-minion", "salt-run", "salt"):
        if not os.access(salt_bin(name), os.X_OK):
            problems.append(f"{salt_bin(name)} is missing: install this project into {sys.prefix} "
                            f"({sys.executable} -m pip install -e '.[tests]')")
            break
    if os.geteuid() != 0:
        problems.append("run it as root: the minions switch to www-data and chown release files")
    return problems


def _free_port(avoid=()):
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS and port not in avoid:
            return port
    raise SandboxError("no free TCP port on 127.0.0.1")


def _port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def processes_matching(*needles):
    """PIDs (not this process or its parents) whose command line contains one of ``needles``."""
    mine = _ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine:
            line = _cmdline(int(entry))
            if line and any(n in line for n in needles) and _alive(int(entry)):
                found.append(int(entry))
    return sorted(found)


def _read_pid(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _wait(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


def _not_root_only(path):
    """The first folder on the way to ``path`` (itself included) that is a symlink or that someone
    other than root can change (a root-owned sticky folder such as /tmp is fine), or None.
    The deploy module refuses a project root below such a folder (docs/trust.md)."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    for i in range(len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            break
        sticky = st.st_mode & stat.S_ISVTX and d != os.path.abspath(path)
        if (stat.S_ISLNK(st.st_mode) or st.st_uid != 0 or (st.st_mode & 0o002 and not sticky)
                or (st.st_mode & 0o020 and st.st_gid != 0 and not sticky)):
            return d
    return None


def _reachable_by(user, path):
    """The first directory on the way to ``path`` that ``user`` cannot enter, or None."""
    pw = pwd.getpwnam(user)
    groups = {pw.pw_gid} | {g.gr_gid for g in __import__("grp").getgrall() if user in g.gr_mem}
    p = os.path.abspath(path)
    chain = []
    while True:
        chain.append(p)
        if p == "/":
            break
        p = os.path.dirname(p)
    for d in reversed(chain):
        if not os.path.exists(d):
            break
        st = os.stat(d)
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _mkdir(path, mode=0o755):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    return path


def _dump(path, data):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# generated by python -m sandbox -- removed by `python -m sandbox down`\n")
        yaml.safe_dump(data, fh, default_flow_style=False)


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """One sandbox cluster in ``path``; see the module docstring."""

    def __init__(self, path=None, web=3, lb_port=DEFAULT_LB_PORT, net=DEFAULT_NET, out=print,
                 masters=1, store="local", etcd_ttl=10, light=None, classic=False, syndics=0):
        self.path = os.path.abspath(path or DEFAULT_PATH)
        self.masters = int(masters)
        if self.masters not in (1, 2):
            raise SandboxError("--masters must be 1 or 2")
        # syndics: the master is a master of masters (MoM) above this many syndic masters, each with its
        # salt-syndic and a share of the minions (docs/syndics.md)
        self.syndics = int(syndics or 0)
        if not 0 <= self.syndics <= MAX_SYNDICS:
            raise SandboxError(f"--syndics must be between 1 and {MAX_SYNDICS}")
        if self.syndics and self.masters != 1:
            raise SandboxError("--syndics and --masters 2 do not go together")
        if store not in ("local", "etcd"):
            raise SandboxError("--store must be local or etcd")
        if self.masters == 2 and store != "etcd":
            raise SandboxError("--masters 2 needs --store etcd (the masters share the lock and history there)")
        self.store, self.etcd_ttl = store, int(etcd_ttl)
        self.web = int(web)
        if not 1 <= self.web <= MAX_WEB:
            raise SandboxError(f"--web must be between 1 and {MAX_WEB}")
        # light: minions run jobs in threads (multiprocessing: False: no fork per job) and each node's
        # PHP-FPM has 1 worker; the default above LIGHT_ABOVE web nodes, where 2 cores run them all
        self.light = self.web > LIGHT_ABOVE if light is None else bool(light)
        # classic: the install route without the package: this repository in the master's file_roots, then
        # the sync commands of docs' "Install" (the Salt that runs the sandbox need not have salt-deploy)
        self.classic = bool(classic)
        self.lb_port = int(lb_port)
        self.net = net.rstrip(".")
        parts = self.net.split(".")
        if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
            raise SandboxError(f"--net {net!r}: give the first three octets of a loopback address, e.g. 127.0.1")
        self.out = out
        self.state_path = os.path.join(self.path, STATE_FILE)
        self.web_ids = [f"web-{i}" for i in range(1, self.web + 1)]
        self.nodes = ["pre-1", *self.web_ids]  # the rainbow nodes (nginx + PHP-FPM)
        self.minion_ids = ["lb-1", *self.nodes]
        self.job_node = f"web-{min(3, self.web)}"
        self.addr = {node: f"{self.net}.{10 + i}" for i, node in enumerate(self.nodes)}
        # salt's tree is reached through `base`: the path itself, or a short symlink to it
        daemons = [*self.minion_ids, "master", *([f"sm-{self.syndics}-syndic"] if self.syndics else [])]
        longest = max(len(i) for i in daemons)
        if len(self.path) + len("/run/") + longest + 1 + _SOCK_NAME <= _SOCK_LIMIT:
            self.base = self.path
        else:
            self.base = "/tmp/dpl-sbx-" + hashlib.sha1(self.path.encode()).hexdigest()[:10]
        self.conf_dir = os.path.join(self.path, "etc", "salt")
        # the second master: its own config, keys (copied from the first), cache and file_roots
        # (it builds and serves its own artifacts); the same pillar
        self.master_names = ["master", "master-b"][: self.masters]
        self.master_addr = {"master": "127.0.0.1", "master-b": f"{self.net}.2"}
        self.conf_dirs = {"master": self.conf_dir, "master-b": os.path.join(self.path, "etc", "salt-b")}
        # syndic masters sm-1..sm-N on <net>.2.. (the same ports as the MoM, on their own address); the
        # minions split among them in turn; each salt-syndic's id is its master's name (the key the MoM accepts)
        self.syndic_names = [f"sm-{i}" for i in range(1, self.syndics + 1)]
        for i, name in enumerate(self.syndic_names):
            self.master_addr[name] = f"{self.net}.{2 + i}"
            self.conf_dirs[name] = os.path.join(self.path, "etc", f"salt-{name}")
        self.syndic_of = ({mid: self.syndic_names[i % self.syndics] for i, mid in enumerate(self.minion_ids)}
                          if self.syndics else {})
        self.etcd_dir = os.path.join(self.path, "svc", "etcd")
        self.file_roots = os.path.join(self.path, "srv", "salt")
        self.pillar_dir = os.path.join(self.path, "srv", "pillar")
        self.log_dir = os.path.join(self.path, "logs")
        self.repo = os.path.join(self.path, "git", f"{PROJECT}.git")
        self.ports = {}
        self.pids = {}
        self.lb = web_stack.HAProxy(
            os.path.join(self.path, "svc", "haproxy"), PROJECT,
            {n: f"{self.addr[n]}:{NODE_PORT}" for n in self.web_ids},
            bind=f"127.0.0.1:{self.lb_port}", user=USER,
            # light: 100 nodes checked every 500 ms is 200 PHP requests a second on a small machine
            check_inter="2s" if self.light else "500ms",
        )
        self.php = {
            node: web_stack.PhpNode(node, self.addr[node], self.node_root(node), os.path.join(self.path, "svc", node),
                              user=USER, port=NODE_PORT, fpm_children=1 if self.light else 4)
            for node in self.nodes
        }

    # ---------------------------------------------------------------- paths
    def node_root(self, node):
        return os.path.join(self.path, "nodes", node, PROJECT)

    def minion_conf_dir(self, mid):
        return os.path.join(self.path, "etc", "minions", mid)

    @property
    def users_file(self):
        return os.path.join(self.conf_dir, "console-users")

    @property
    def console_url(self):
        return console.url("127.0.0.1", self.ports.get("api"))

    def pidfile(self, daemon):
        return os.path.join(self.base, "run", f"salt-{daemon}.pid")

    def current(self, node):
        link = os.path.join(self.node_root(node), "current")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def history_path(self):
        return os.path.join(self.path, "var", "master", "cache", "deploy", "history", f"{PROJECT}.jsonl")

    def salt_cmd(self, tool="salt-run", master="master"):
        return [salt_bin(tool), "-c", self.conf_dirs[master]]

    def store_opts(self):
        """The master options that choose the deploy store (none for the local disk)."""
        if self.store != "etcd":
            return {}
        return {"deploy_store": "etcd",
                "deploy_etcd": {"endpoints": [f"http://127.0.0.1:{self.ports['etcd']}"], "prefix": "/salt-deploy/",
                                "ttl": self.etcd_ttl}}

    def read_history(self):
        """The runner's history records, oldest first (from the master's disk or from etcd)."""
        if self.store == "etcd":
            import saltext_deploy  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (deploy_master)
            from deploy_master import store_etcd  # pylint: disable=import-outside-toplevel

            try:
                return store_etcd.EtcdStore(self.store_opts()["deploy_etcd"]).history_read(PROJECT)
            except store_etcd.DeployError:
                return []
        records = []
        try:
            with open(self.history_path(), encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        except OSError:
            pass
        return records

    # ---------------------------------------------------------------- state file
    @classmethod
    def load(cls, path=None, out=print):
        """The sandbox recorded in ``path``/sandbox.json, or None."""
        path = os.path.abspath(path or DEFAULT_PATH)
        try:
            with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            return None
        box = cls(path, web=state["web"], lb_port=state["lb_port"], net=state["net"], out=out,
                  masters=state.get("masters", 1), store=state.get("store", "local"),
                  etcd_ttl=state.get("etcd_ttl", 10), light=state.get("light"), syndics=state.get("syndics", 0))
        box.base = state.get("base", box.base)
        box.ports = state.get("ports", {})
        box.pids = state.get("pids", {})
        box.state = state
        return box

    def save_state(self, phase):
        state = {
            "project": PROJECT, "env": ENV, "phase": phase, "path": self.path, "base": self.base,
            "web": self.web, "lb_port": self.lb_port, "net": self.net, "ports": self.ports,
            "masters": self.masters, "syndics": self.syndics, "store": self.store, "etcd_ttl": self.etcd_ttl,
            "light": self.light, "pids": self.pids, "conf_dir": self.conf_dir, "python": sys.executable,
            "minions": self.minion_ids, "nodes": {n: self.addr[n] for n in self.nodes},
            "job_node": self.job_node, "lb": self.lb.url, "lb_socket": self.lb.socket, "repo": self.repo,
            "updated": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        tmp = self.state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.state_path)
        self.state = state

    # ---------------------------------------------------------------- checks
    def preflight(self):
        problems = missing_requirements()
        if problems:
            raise SandboxError("this machine cannot run the sandbox yet:\n  " + "\n  ".join(problems))
        unsafe = _not_root_only(self.path) if os.geteuid() == 0 else None
        if unsafe:
            raise SandboxError(
                f"{unsafe} is a symlink or can be changed by someone other than root: the deploy module refuses "
                f"project roots below it (docs/trust.md): choose another folder, e.g. --path /tmp/sandbox")
        blocked = _reachable_by(USER, os.path.dirname(self.path))
        if blocked:
            raise SandboxError(
                f"{USER} cannot enter {blocked} (nginx and PHP-FPM run as {USER} and serve files under "
                f"{self.path}): choose another folder, e.g. --path /tmp/sandbox, or chmod o+x {blocked}")
        busy = []
        if _port_open("127.0.0.1", self.lb_port):
            busy.append(f"127.0.0.1:{self.lb_port} (the LB; choose another with --lb-port)")
        for node in self.nodes:
            if _port_open(self.addr[node], NODE_PORT):
                busy.append(f"{self.addr[node]}:{NODE_PORT} ({node}; choose other addresses with --net, e.g. 127.0.9)")
        if busy:
            raise SandboxError("already in use (another sandbox or test cluster?):\n  " + "\n  ".join(busy))

    # ---------------------------------------------------------------- configs
    def write_configs(self):
        for d in ("etc/salt", "srv/salt", "srv/pillar", "logs", "run", "git", "svc", "nodes"):
            _mkdir(os.path.join(self.path, d))
        os.chmod(self.path, 0o755)
        if self.base != self.path:
            if os.path.islink(self.base):
                os.unlink(self.base)
            os.symlink(self.path, self.base)
        self.ports = {"publish": _free_port(), "ret": None}
        self.ports["ret"] = _free_port(avoid={self.ports["publish"]})
        taken = {self.ports["publish"], self.ports["ret"]}
        more = ["publish-b", "ret-b"] if self.masters == 2 else []
        more += ["etcd", "etcd-peer"] if self.store == "etcd" else []
        for key in more:
            self.ports[key] = _free_port(avoid=taken)
            taken.add(self.ports[key])
        self.ports["api"] = console.free_port(preferred=DEFAULT_API_PORT)
        b = self.base
        common = {
            "root_dir": b,
            "user": "root",
            "log_level": "warning",
            "log_level_logfile": "info",
        }
        def own_paths(name):  # each master's own keys, cache, sockets, pid and logs
            return {"pki_dir": f"{b}/var/{name}/pki", "cachedir": f"{b}/var/{name}/cache",
                    "sock_dir": f"{b}/run/{name}", "pidfile": self.pidfile(name),
                    "log_file": f"{b}/logs/{name}.log", "key_logfile": f"{b}/logs/{name}-key.log"}

        master = {
            **common,
            "interface": "127.0.0.1",
            "publish_port": self.ports["publish"],
            "ret_port": self.ports["ret"],
            **own_paths("master"),
            "open_mode": True,
            "auto_accept": True,
            "worker_threads": 4,
            "file_roots": {"base": [self.file_roots, *([REPO_ROOT, os.path.join(REPO_ROOT, "salt")]
                                                       if self.classic else [])]},
            "pillar_roots": {"base": [self.pillar_dir]},
            # salt-api with the web console (console/), file eauth with the demo users
            **console.master_options(console.write_users(self.users_file, console.DEMO_USERS), self.ports["api"],
                                     log_dir=self.log_dir),
            "api_pidfile": self.pidfile("api"),
            "api_logfile": f"{b}/logs/api.log",
        }
        master.update(self.store_opts())
        if self.syndics:
            master.update(SYNDIC_MOM_OPTS)
        _dump(os.path.join(self.conf_dir, "master"), master)
        if self.masters == 2:
            _mkdir(os.path.join(self.path, "srv", "salt-b"))
            _mkdir(self.conf_dirs["master-b"])
            _dump(os.path.join(self.conf_dirs["master-b"], "master"), {
                **master,
                "id": "master-b",
                "interface": self.master_addr["master-b"],
                "publish_port": self.ports["publish-b"],
                "ret_port": self.ports["ret-b"],
                **own_paths("master-b"),
                "file_roots": {"base": [os.path.join(self.path, "srv", "salt-b")]},
            })
        for name in self.syndic_names:
            self._write_syndic_master(name, master, own_paths(name))
        for mid in self.minion_ids:
            if mid == "lb-1":
                grains = {"roles": ["lb"]}
            else:
                grains = {"roles": [PROJECT], "env": ENV, "region": "east" if mid == "web-1" else "west"}
            conf = {
                **common,
                "id": mid,
                "master": "127.0.0.1",
                "master_port": self.ports["ret"],
                "publish_port": self.ports["publish"],
                "pki_dir": f"{b}/var/{mid}/pki",
                "cachedir": f"{b}/var/{mid}/cache",
                # every path Salt derives from root_dir is the minion's own: a shared default
                # (extmods) made minions race to create it at start
                "extension_modules": f"{b}/var/{mid}/extmods",
                "sock_dir": f"{b}/run/{mid}",
                "pidfile": self.pidfile(mid),
                "log_file": f"{b}/logs/{mid}.log",
                "grains": grains,
                "acceptance_wait_time": 1,
                "random_reauth_delay": 0,
                "enable_fqdns_grains": False,
            }
            if self.light:
                conf["multiprocessing"] = False
                # a busy master answers late: wait for the answer instead of asking again (each
                # new sign-in or return sent after 5 s is more work for the same busy master)
                conf.update(auth_timeout=60, return_retry_timer=20, return_retry_timer_max=40,
                            request_channel_timeout=180, request_channel_tries=2)
            if self.masters == 2:
                # hot/hot: both masters as addr:ret_port; no global master_port/publish_port (each
                # master tells its publish port when the minion signs in)
                del conf["master_port"], conf["publish_port"]
                conf["master"] = [f"{self.master_addr['master']}:{self.ports['ret']}",
                                  f"{self.master_addr['master-b']}:{self.ports['ret-b']}"]
            if self.syndics:  # signed in to its syndic master, on the same ports at that master's address
                conf.update(master=self.master_addr[self.syndic_of[mid]], transport="tcp")
            _mkdir(self.minion_conf_dir(mid))
            _dump(os.path.join(self.minion_conf_dir(mid), "minion"), conf)

    def syndic_pillar_dir(self, name):
        return os.path.join(self.path, "srv", f"pillar-{name}")

    def _write_syndic_master(self, name, mom, paths):
        """The config folder of syndic master ``name``: ``master`` (its salt-master, and the local master of its
        salt-syndic) and ``minion`` (the salt-syndic's id and keys towards the MoM): `salt-syndic -c` reads both."""
        b = self.base
        console_keys = {*console.master_options("", 0, log_dir=""), "api_pidfile", "api_logfile"}
        conf_dir = _mkdir(self.conf_dirs[name])
        _mkdir(self.syndic_pillar_dir(name))
        _dump(os.path.join(conf_dir, "master"), {
            **{k: v for k, v in mom.items() if k not in SYNDIC_MOM_OPTS and k not in console_keys},
            **paths,
            "id": name,
            "interface": self.master_addr[name],
            "transport": "tcp",
            # the artifacts the MoM builds are served by the syndic masters: its file_roots are theirs (on
            # machines of their own: one shared folder, as two masters share deploy_artifacts_dir)
            "file_roots": mom["file_roots"],
            # the project pillar and this syndic's nodes' own pillar, served to its minions
            "pillar_roots": {"base": [self.syndic_pillar_dir(name)]},
            "syndic_master": self.master_addr["master"],
            "syndic_master_port": self.ports["ret"],
            "syndic_pidfile": self.pidfile(f"{name}-syndic"),
            "syndic_log_file": f"{b}/logs/{name}-syndic.log",
            "syndic_sock_dir": f"{b}/run/{name}-syndic",
        })
        _dump(os.path.join(conf_dir, "minion"), {
            "id": name,  # the key the MoM accepts, and the name of this syndic in the runner's errors
            "transport": "tcp",
            "pki_dir": f"{b}/var/{name}-syndic/pki",
            "sock_dir": f"{b}/run/{name}-syndic",
            "acceptance_wait_time": 1,
            "random_reauth_delay": 0,
            "enable_fqdns_grains": False,
        })

    def lb_pillar(self):
        return {"driver": "haproxy", "minion": "lb-1", "socket": self.lb.socket, "backend": PROJECT,
                "drain_timeout": 10}

    def write_pillar(self):
        # batches of 1 node suit a few nodes; a large sandbox goes in quarters (100 batches of one
        # node would take most of an hour here)
        envs = sandbox_pillar.default_envs(batch=1 if self.web <= 10 else "25%")
        project = sandbox_pillar.project_pillar(self.repo, self.lb_pillar(), envs=envs)
        nodes = {
            node: sandbox_pillar.node_pillar(self.node_root(node), self.addr[node], self.php[node].reload_command(),
                                             job=node == self.job_node, port=NODE_PORT)
            for node in self.nodes
        }
        self.write_pillars(project, nodes)

    def write_pillars(self, project, nodes):
        """The project pillar and ``nodes`` (node -> its pillar) where the sandbox's masters serve them."""
        if not self.syndics:
            sandbox_pillar.write_pillar(self.pillar_dir, project, nodes, sandbox_pillar.SECRETS, project=PROJECT)
            return
        # the MoM: the project for its own id (the runner reads it); each syndic master: the project, the
        # secrets and the node pillar of its own minions
        sandbox_pillar.write_pillar(self.pillar_dir, project, {}, sandbox_pillar.SECRETS, project=PROJECT)
        for name in self.syndic_names:
            own = {n: conf for n, conf in nodes.items() if self.syndic_of[n] == name}
            sandbox_pillar.write_pillar(self.syndic_pillar_dir(name), project, own, sandbox_pillar.SECRETS,
                                        project=PROJECT)

    # ---------------------------------------------------------------- processes
    def _spawn_daemon(self, tool, conf_dir, name, nice=0):
        log = os.path.join(self.log_dir, f"{name}.out")
        with open(log, "ab") as fh:
            return subprocess.Popen([salt_bin(tool), "-d", "-c", conf_dir], stdin=subprocess.DEVNULL,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    preexec_fn=(lambda: os.nice(nice)) if nice else None)

    def _daemon_started(self, proc, name, timeout=30):
        """Wait for the `-d` parent to exit and the daemon's pid file; return the pid."""
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        pid = None
        if rc == 0:
            _wait(lambda: _read_pid(self.pidfile(name)) is not None, timeout)
            pid = _read_pid(self.pidfile(name))
        if not pid or not _alive(pid):
            raise SandboxError(f"{self.daemon_label(name)} did not start "
                               f"(exit {rc}):\n{_tail(os.path.join(self.log_dir, name + '.out'))}"
                               f"{_tail(os.path.join(self.log_dir, name + '.log'))}")
        self.pids[name] = pid
        return pid

    def start_etcd(self):
        from sandbox.etcd import EtcdServer  # pylint: disable=import-outside-toplevel

        server = EtcdServer(self.etcd_dir, port=self.ports["etcd"], peer_port=self.ports["etcd-peer"]).start()
        self.pids["etcd"] = server.proc.pid
        server.proc = None  # a handle only: it runs until `down`

    def start_salt(self, timeout=60):
        if self.store == "etcd":
            self.start_etcd()
        master = self._spawn_daemon("salt-master", self.conf_dir, "master")
        self._daemon_started(master, "master")
        ok = _wait(lambda: all(_port_open("127.0.0.1", self.ports[k]) for k in ("ret", "publish")), timeout)
        if not ok:
            raise SandboxError(f"salt-master does not listen on 127.0.0.1:{self.ports['ret']}/{self.ports['publish']} "
                               f"after {timeout}s:\n{_tail(os.path.join(self.log_dir, 'master.log'))}")
        if self.masters == 2:
            # identical master keys: the minions trust either master
            pki_b = os.path.join(self.base, "var", "master-b", "pki")
            os.makedirs(pki_b, mode=0o700, exist_ok=True)
            for name in ("master.pem", "master.pub"):
                shutil.copy2(os.path.join(self.base, "var", "master", "pki", name), os.path.join(pki_b, name))
            master_b = self._spawn_daemon("salt-master", self.conf_dirs["master-b"], "master-b")
            self._daemon_started(master_b, "master-b")
            addr = self.master_addr["master-b"]
            if not _wait(lambda: all(_port_open(addr, self.ports[k]) for k in ("ret-b", "publish-b")), timeout):
                raise SandboxError(f"salt-master master-b does not listen on {addr}:{self.ports['ret-b']} after "
                                   f"{timeout}s:\n{_tail(os.path.join(self.log_dir, 'master-b.log'))}")
        self._start_syndics(timeout)
        api = self._spawn_daemon("salt-api", self.conf_dir, "api")
        self._start_minions(timeout)
        self._daemon_started(api, "api")
        if not console.wait_api("127.0.0.1", self.ports["api"], timeout):
            raise SandboxError(f"salt-api does not answer on 127.0.0.1:{self.ports['api']} after {timeout}s:\n"
                               f"{_tail(os.path.join(self.log_dir, 'api.log'))}")

    def _start_syndics(self, timeout):
        """The syndic masters (together), then their salt-syndics, which sign in to the MoM (open_mode)."""
        procs = {n: self._spawn_daemon("salt-master", self.conf_dirs[n], n) for n in self.syndic_names}
        for name, proc in procs.items():
            self._daemon_started(proc, name)
        for name in self.syndic_names:
            addr = self.master_addr[name]
            if not _wait(lambda addr=addr: all(_port_open(addr, self.ports[k]) for k in ("ret", "publish")), timeout):
                raise SandboxError(f"salt-master {name} does not listen on {addr}:{self.ports['ret']} after "
                                   f"{timeout}s:\n{_tail(os.path.join(self.log_dir, name + '.log'))}")
        procs = {n: self._spawn_daemon("salt-syndic", self.conf_dirs[n], f"{n}-syndic") for n in self.syndic_names}
        for name, proc in procs.items():
            self._daemon_started(proc, f"{name}-syndic")

    def _start_minions(self, timeout):
        """Start the minions; a light sandbox starts them in waves, nice'd.

        All at once, 102 minions starting on 2 cores made a run queue of 130 in which the master's
        four workers got a 130th of the CPU each: the minions' sign-in and pillar requests timed
        out and were sent again, and the minions never all answered at 100 nodes.
        In a light sandbox a wave of :data:`START_WAVE` minions starts when the one before says
        it is ready (or after ``timeout``), and the minions run at ``nice`` :data:`MINION_NICE`:
        the master keeps the CPU it would have on a machine of its own."""
        nice = MINION_NICE if self.light else 0
        wave = START_WAVE if self.light else len(self.minion_ids)
        for i in range(0, len(self.minion_ids), wave):
            ids = self.minion_ids[i:i + wave]
            procs = {mid: self._spawn_daemon("salt-minion", self.minion_conf_dir(mid), mid, nice=nice)
                     for mid in ids}
            # they start at once on a small machine: a minion's start-up waits for the others
            per_minion = max(timeout, 30 + len(ids))
            for mid, proc in procs.items():
                self._daemon_started(proc, mid, timeout=per_minion)
            if wave < len(self.minion_ids):
                _wait(lambda ids=ids: all(self._log_says_ready(m) for m in ids), timeout)

    def ping(self, minions, timeout=2, master="master"):
        """The minions among ``minions`` that answer test.ping (one `salt` CLI call).  What the CLI
        said last is kept in ``self.last_ping`` (for the error of :meth:`wait_minions`)."""
        # many minions on a small machine answer slower: a job costs each ~0.1 CPU-s (a ping of 101
        # took 30 s); a ping that gives up sooner is sent again while the last one still runs
        timeout = max(timeout, 2 + len(minions) // (2 if self.light else 10))
        argv = [*self.salt_cmd("salt", master), "--out=json", "--static", "--timeout", str(timeout), "-L",
                ",".join(sorted(minions)), "test.ping"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60, check=False)
        except subprocess.TimeoutExpired:
            self.last_ping = f"salt CLI: no exit within {timeout + 60}s"
            return set()
        self.last_ping = f"salt CLI exit {proc.returncode}: {proc.stdout[-600:]} {proc.stderr[-600:]}"
        try:
            ret = json.loads(proc.stdout or "{}")
        except ValueError:
            start = proc.stdout.find("{")  # anything printed before the JSON document
            try:
                ret = json.loads(proc.stdout[start:]) if start >= 0 else {}
            except ValueError:
                return set()
        return {m for m, v in ret.items() if v is True} if isinstance(ret, dict) else set()

    def _log_says_ready(self, mid):
        try:
            with open(os.path.join(self.log_dir, f"{mid}.log"), encoding="utf-8", errors="replace") as fh:
                return "ready to receive requests" in fh.read()
        except OSError:
            return False

    def wait_minions(self, timeout=None, master="master"):
        """Until every minion answers test.ping; SandboxError names the silent ones with their log tails.

        A `salt` call costs ~1.5 s, so it is made when the minions' logs say they are ready
        (or every 5 s regardless: the log line is only a hint)."""
        # with two masters a minion signs in to both, one after the other: it answers later
        timeout = timeout or (90 if self.masters == 1 else 240) + 4 * len(self.minion_ids)
        pending = set(self.minion_ids)
        deadline = time.monotonic() + timeout
        while pending:
            hint_until = min(time.monotonic() + 5, deadline)
            _wait(lambda pending=pending, until=hint_until: all(self._log_says_ready(m) for m in pending)
                  or time.monotonic() > until, 6)
            pending -= self.ping(pending, master=master)
            if not pending:
                break
            dead = [m for m in pending if not _alive(self.pids.get(m) or 0)]
            if dead or time.monotonic() > deadline:
                logs = "".join(f"---- {m} ----\n{_tail(os.path.join(self.log_dir, m + '.log'))}"
                               for m in sorted(pending))
                why = f"exited: {', '.join(sorted(dead))}" if dead else f"no answer within {timeout}s"
                why += f"; last ping: {getattr(self, 'last_ping', '')}"
                raise SandboxError(f"minions {', '.join(sorted(pending))} do not answer test.ping ({why}):\n{logs}")
            time.sleep(0.2)

    def start_web(self):
        """Sample repo, nginx + PHP-FPM on every node, HAProxy in front of the web nodes (in parallel)."""
        for node in self.nodes:
            os.makedirs(self.node_root(node), exist_ok=True)
            for part in ("nodes", f"nodes/{node}", f"nodes/{node}/{PROJECT}"):
                os.chmod(os.path.join(self.path, part), 0o755)
        jobs = [lambda: sample_repo.make_sample_repo(self.repo, project=PROJECT)]
        jobs += [svc.start for svc in self.php.values()]
        jobs.append(self.lb.start)
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise SandboxError("the web stack did not start:\n" + "\n".join(str(e) for e in errors))
        # keep the Popen objects from killing anything at exit: they are only handles
        for svc in [*self.php.values(), self.lb]:
            svc._procs = []  # pylint: disable=protected-access
        self.pids["haproxy"] = _read_pid(self.lb.pid_file)

    def up(self):
        """Lay out and start everything; return when every minion answers (state saved at each phase)."""
        os.makedirs(self.path, exist_ok=True)
        self.write_configs()
        self.save_state("starting")
        self.write_pillar()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            web_job = pool.submit(self.start_web)
            try:
                self.start_salt()
            finally:
                self.save_state("starting")
                web_error = web_job.exception()
        if web_error:
            raise web_error
        self.out(f"salt-master and {len(self.minion_ids)} minions started, web stack up "
                 f"({time.monotonic() - started:.1f}s); waiting for the minions to answer ...")
        for master in self.master_names:  # every master reaches every minion
            self.wait_minions(master=master)
        if self.classic:
            self.sync_modules()
        self.save_state("running")
        self.out(f"all minions answer test.ping ({time.monotonic() - started:.1f}s)")

    def sync_modules(self):
        """The classic route's sync, as an operator types it: the modules and states to every minion, the
        runner, its package and its outputters to the master."""
        run = self.salt_cmd("salt-run")
        for argv in ([*self.salt_cmd("salt"), "*", "saltutil.sync_all"], [*run, "saltutil.sync_runners"],
                     [*run, "saltutil.sync_utils"], [*run, "saltutil.sync_output"]):
            proc = subprocess.run([*argv, "--out=json", "-t", "120"], capture_output=True, text=True, timeout=300,
                                  check=False)
            if proc.returncode != 0:
                raise SandboxError(f"{argv[-1]} failed: {(proc.stdout + proc.stderr)[-500:]}")
        self.out("classic route: saltutil.sync_all on every minion, sync_runners, sync_utils and sync_output "
                 "on the master")

    # ---------------------------------------------------------------- inspection
    def daemon_names(self):
        """Every salt daemon of the sandbox, by name: masters, syndic masters and their salt-syndics, salt-api,
        minions."""
        syndics = [d for n in self.syndic_names for d in (n, f"{n}-syndic")]
        return [*self.master_names, *syndics, "api", *self.minion_ids]

    def daemon_label(self, name):
        """``salt-master sm-1``, ``salt-syndic sm-1``, ``salt-minion web-1`` ... for people."""
        if name in ("master", "api"):
            return f"salt-{name}"
        if name.endswith("-syndic") and name[: -len("-syndic")] in self.syndic_names:
            return f"salt-syndic {name[: -len('-syndic')]}"
        return f"salt-master {name}" if name in self.conf_dirs else f"salt-minion {name}"

    def salt_daemons(self):
        """{name: pid or None} of the sandbox's salt daemons (pid files checked against their command line)."""
        out = {}
        for name in self.daemon_names():
            pid = _read_pid(self.pidfile(name)) or self.pids.get(name)
            conf_name = name[: -len("-syndic")] if name.endswith("-syndic") else name
            conf = (self.conf_dir if name == "api" else self.conf_dirs[conf_name] if conf_name in self.conf_dirs
                    else self.minion_conf_dir(name))
            out[name] = pid if pid and _alive(pid) and conf in _cmdline(pid) else None
        return out

    def leftovers(self):
        """Every process still running from this sandbox (salt daemons, jobs, services)."""
        needles = [os.path.join(self.path, "etc") + "/", os.path.join(self.path, "svc") + "/"]
        if self.base != self.path:
            needles.append(self.base + "/")
        return processes_matching(*needles)

    def anything_running(self):
        return (any(self.salt_daemons().values()) or self.lb.running
                or any(s.running for s in self.php.values()) or bool(self.leftovers()))

    def status(self):
        daemons = self.salt_daemons()
        lb_status = {}
        if self.lb.running:
            for node in self.web_ids:
                try:
                    lb_status[node] = self.lb.server_status(node)
                except (OSError, KeyError) as exc:
                    lb_status[node] = f"? ({exc})"
        return {
            "path": self.path,
            "daemons": daemons,
            "ports": self.ports,
            "nodes": {n: {"url": self.php[n].url, "running": self.php[n].running, "current": self.current(n),
                          "lb": lb_status.get(n)} for n in self.nodes},
            "lb": {"url": self.lb.url, "running": self.lb.running, "socket": self.lb.socket},
        }

    # ---------------------------------------------------------------- teardown
    def stop(self):
        """Stop every daemon and service of this sandbox (idempotent); returns what had to be killed."""
        daemons = [p for p in self.salt_daemons().values() if p]
        for pid in daemons:  # SIGTERM: salt daemons stop their own process trees
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        etcd = self.pids.get("etcd")
        if etcd and _alive(etcd) and self.etcd_dir in _cmdline(etcd):
            os.kill(etcd, signal.SIGTERM)
            daemons.append(etcd)
        services = [self.lb, *self.php.values()]
        with concurrent.futures.ThreadPoolExecutor(len(services)) as pool:
            futures = {pool.submit(svc.stop): svc for svc in services}
            for future, svc in futures.items():
                if future.exception():
                    self.out(f"warning: stopping {svc!r}: {future.exception()}")
        _wait(lambda: not any(_alive(p) for p in daemons), 15)
        api = [p for p in processes_matching(f"salt-api -d -c {self.conf_dir}") if _alive(p)]
        if api:  # salt-api waits for an open /events stream (a console left open) that may never send again
            self.out("salt-api did not stop within 15s (a console's event stream was open): killing it")
            for pid in api:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait(lambda: not any(_alive(p) for p in api), 5)
        killed = []
        for _ in range(3):
            left = self.leftovers()
            if not left:
                break
            for pid in left:
                killed.append((pid, _cmdline(pid)[:120]))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait(lambda left=left: not any(_alive(p) for p in left), 5)
        for name in self.daemon_names():
            with contextlib.suppress(OSError):
                os.unlink(self.pidfile(name))
        return killed

    def stop_daemons(self, names, timeout=20):
        """Stop these salt daemons (a minion, a syndic master and its salt-syndic ...) and whatever runs from
        their config folders: SIGTERM, then SIGKILL after ``timeout`` s.  The rest of the sandbox runs on."""
        running = self.salt_daemons()
        pids = [running[n] for n in names if running.get(n)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not any(_alive(p) for p in pids), timeout)
        confs = set()
        for name in names:
            conf_name = name[: -len("-syndic")] if name.endswith("-syndic") else name
            confs.add(self.conf_dirs.get(conf_name) or self.minion_conf_dir(name))
        left = processes_matching(*(f"-c {c} " for c in confs))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait(lambda: not any(_alive(p) for p in left), 5)

    def remove(self):
        """Remove the folder (only if it is a sandbox) and the short symlink."""
        if self.base != self.path and os.path.islink(self.base):
            os.unlink(self.base)
        if os.path.isdir(self.path):
            if not os.path.exists(self.state_path) and not os.path.exists(os.path.join(self.conf_dir, "master")):
                raise SandboxError(f"{self.path} does not look like a sandbox (no {STATE_FILE}): not removing it")
            shutil.rmtree(self.path)

    # ---------------------------------------------------------------- the site
    def fetch(self, url=None):
        """One GET through the LB: (status, server name, first body line, release dir)."""
        status, headers, body = web_stack.http_get(url or self.lb.url, timeout=5)
        lines = body.splitlines()
        release = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("release:")), "")
        server = headers.get("x-backend-server") or headers.get("x-served-by") or "?"
        return status, server, (lines[0] if lines else ""), release

    def wait_lb_up(self, timeout=20):
        """Until HAProxy's health checks see every web node UP; returns {node: status}."""
        def states():
            return {n: self.lb.server_status(n) for n in self.web_ids}
        _wait(lambda: all(s == "UP" for s in states().values()), timeout, 0.2)
        return states()
