"""
Take web nodes out of the load balancer and put them back: the article's step 6.

Runs on the load-balancer minion (pillar ``deploy:projects:<project>:lb:minion``).
Drivers:

``haproxy``
    The runtime API on the admin socket (``lb:socket``, ``level admin``) of backend
    ``lb:backend``: ``drain``, wait until the server has no current sessions,
    ``maint``; back to the state it had before.  A small client over the UNIX socket
    (no extra dependency); server names default to the minion ids (``lb:servers`` maps
    minion ids to other names).
``nginx``
    The node's ``server`` line in the upstream file ``lb:upstream_file`` is marked
    ``down``, ``nginx -t``, graceful reload; restored the same way.  ``lb:servers``
    maps minion ids to their ``host:port`` in that file; ``lb:nginx`` is the nginx
    command (default ``[nginx]``) for ``-t`` and ``-s reload``.

``swap`` does an ``attach`` and a ``detach`` in one call (between two batches).

``each`` is what the runner calls: one of the above on every LB of a list (pillar ``lb`` may list
several) that names this minion, each LB answering on its own, and with ``wait_up`` the wait until
the servers put back are UP (haproxy: ``show stat`` status ``UP``; nginx: the server's address
answers HTTP) before ``swap`` takes the next batch out.

Before it changes anything, ``detach`` writes the servers' prior states to a record on
the LB minion (``<cachedir>/deploy_lb/<name>.json``).  ``attach`` restores exactly those
states and removes them from the record, so a run killed in the middle can be repaired
by calling ``attach`` for the servers the master recorded as being detached.
"""

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import re
import socket
import stat
import subprocess
import tempfile
import time

from salt.exceptions import CommandExecutionError
import contextlib

log = logging.getLogger(__name__)

__virtualname__ = "deploy_lb"

DRIVERS = ("haproxy", "nginx")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")

# HAProxy srv_admin_state bits (show servers state)
# the ``show stat`` fields ``stats`` returns (HAProxy 2.6 management guide, section 9.1 "CSV format"):
# cumulative counters (hrsp_*: responses per status class; econ: connection errors; eresp: response
# errors, srv_abrt included; wretr/wredis: retries, redispatches; cli_abrt/srv_abrt: aborted transfers),
# current sessions, and times in ms: rtime/ttime/qtime/ctime are means over the server's last 1024
# requests, *_max the largest seen since HAProxy started or its counters were cleared.
STAT_COUNTERS = (
    "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "econ", "eresp", "wretr", "wredis",
    "cli_abrt", "srv_abrt", "scur", "stot", "qtime", "ctime", "rtime", "ttime", "qtime_max", "ctime_max",
    "rtime_max", "ttime_max",
)
_FMAINT, _IMAINT, _CMAINT, _FDRAIN, _IDRAIN, _RMAINT, _HMAINT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------- record


def _record_path(name):
    if not NAME_RE.match(str(name)):
        raise CommandExecutionError(f"invalid LB record name {name!r}")
    base = os.path.join(__opts__["cachedir"], "deploy_lb")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return os.path.join(base, f"{name}.json")


def _load_record(name):
    try:
        with open(_record_path(name), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}


def _save_record(name, record):
    path = _record_path(name)
    if not record:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _driver_record(drv):
    """The driver's record, with what a record under its former name still holds."""
    record = _load_record(drv.record)
    legacy = getattr(drv, "legacy_record", None)
    if legacy:
        for server, state in _load_record(legacy).items():
            record.setdefault(server, state)
    return record


def _save_driver_record(drv, record):
    _save_record(drv.record, record)
    legacy = getattr(drv, "legacy_record", None)
    if legacy:
        _save_record(legacy, {})


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _check_servers(servers):
    if isinstance(servers, str):
        servers = [servers]
    for server in servers:
        if not NAME_RE.match(str(server)):
            raise CommandExecutionError(f"invalid server name {server!r}")
    return list(servers)


# --------------------------------------------------------------------------- haproxy


class _HAProxy:
    def __init__(self, conf):
        self.socket = conf.get("socket")
        self.backend = conf.get("backend")
        self.names = conf.get("servers") or {}
        if not self.socket or not os.path.isabs(self.socket):
            raise CommandExecutionError("haproxy driver: lb:socket must be the absolute path of the admin socket")
        if not self.backend or not NAME_RE.match(self.backend):
            raise CommandExecutionError(f"haproxy driver: invalid lb:backend {self.backend!r}")
        # two HAProxy instances on one minion may name their backends alike: the socket tells them apart
        self.record = f"haproxy-{self.backend}-{hashlib.sha256(self.socket.encode()).hexdigest()[:12]}"
        self.legacy_record = f"haproxy-{self.backend}"  # the name a record had before (read, merged, dropped)

    def name(self, server):
        return self.names.get(server, server)

    def command(self, cmd):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(self.socket)
                sock.sendall(cmd.encode() + b"\n")
                chunks = []
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except OSError as exc:
            raise CommandExecutionError(f"haproxy admin socket {self.socket}: {exc.strerror or exc}") from None
        return b"".join(chunks).decode(errors="replace")

    def _all_states(self):
        out = self.command(f"show servers state {self.backend}")
        lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
        if not lines or not lines[0].strip().isdigit():
            raise CommandExecutionError(f"haproxy: backend {self.backend!r}: {out.strip() or 'no answer'}")
        states = {}
        for line in lines[1:]:
            fields = line.split()
            if len(fields) < 7:
                continue
            admin = int(fields[6])
            if admin & (_FMAINT | _IMAINT | _CMAINT | _RMAINT | _HMAINT):
                states[fields[3]] = "maint"
            elif admin & (_FDRAIN | _IDRAIN):
                states[fields[3]] = "drain"
            else:
                states[fields[3]] = "ready"
        return states

    def states(self, servers):
        """{server: ready|drain|maint}; refuse servers the backend does not have."""
        known = self._all_states()
        missing = [s for s in servers if self.name(s) not in known]
        if missing:
            raise CommandExecutionError(
                f"haproxy backend {self.backend!r} has no server named {', '.join(missing)}"
            )
        return {s: known[self.name(s)] for s in servers}

    def sessions(self):
        out = self.command("show stat")
        reader = csv.DictReader(io.StringIO(out.lstrip("# ")))
        return {
            row["svname"]: int(row.get("scur") or 0) + int(row.get("qcur") or 0)
            for row in reader
            if row.get("pxname") == self.backend
        }

    def stats(self, servers):
        """Each server's row of ``show stat``: the counters the analysis reads (see :func:`stats`)."""
        out = self.command("show stat")
        reader = csv.DictReader(io.StringIO(out.lstrip("# ")))
        rows = {row["svname"]: row for row in reader if row.get("pxname") == self.backend}
        if not rows:
            raise CommandExecutionError(
                f"haproxy: show stat has no backend {self.backend!r}: {out.strip()[:200] or 'no answer'}")
        missing = [s for s in servers if self.name(s) not in rows]
        if missing:
            raise CommandExecutionError(f"haproxy backend {self.backend!r} has no server named {', '.join(missing)}")
        result = {}
        for server in servers:
            row = rows[self.name(server)]
            result[server] = {key: _int(row.get(key)) for key in STAT_COUNTERS if row.get(key) not in (None, "")}
            result[server]["status"] = row.get("status")
        return result

    def up(self, servers):
        """{server: its ``show stat`` status}, and whether the health check calls it UP: ``UP`` exactly (``UP 1/2``
        is a server back from maintenance that no check has confirmed yet) or ``no check``."""
        out = self.command("show stat")
        rows = {row["svname"]: row for row in csv.DictReader(io.StringIO(out.lstrip("# ")))
                if row.get("pxname") == self.backend}
        status = {s: (rows.get(self.name(s)) or {}).get("status") or "missing" for s in servers}
        return {s: (st, st in ("UP", "no check")) for s, st in status.items()}

    def set_state(self, server, state):
        out = self.command(f"set server {self.backend}/{server} state {state}").strip()
        if out:
            raise CommandExecutionError(f"haproxy: set server {self.backend}/{server} state {state}: {out}")

    def take_out(self, servers, wait):
        """drain, wait (bounded) for sessions to end, maint."""
        for server in servers:
            self.set_state(self.name(server), "drain")
        started = time.monotonic()
        left = {}
        while servers:
            sessions = self.sessions()
            left = {s: sessions[self.name(s)] for s in servers if sessions.get(self.name(s))}
            if not left or time.monotonic() - started >= wait:
                break
            time.sleep(0.05)
        for server in servers:
            self.set_state(self.name(server), "maint")
        return {"drain_seconds": round(time.monotonic() - started, 3), "sessions_left": left}

    def restore(self, prior):
        for server, state in prior.items():
            self.set_state(self.name(server), state)
        return {}



# --------------------------------------------------------------------------- nginx


class _Nginx:
    def __init__(self, conf):
        self.file = conf.get("upstream_file")
        self.addrs = conf.get("servers") or {}
        self.nginx = conf.get("nginx") or ["nginx"]
        if isinstance(self.nginx, str):
            self.nginx = [self.nginx]
        if not self.file or not os.path.isabs(self.file):
            raise CommandExecutionError("nginx driver: lb:upstream_file must be an absolute path")
        self.record = "nginx-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.file.strip("/"))

    def _pattern(self, server):
        addr = self.addrs.get(server)
        if not addr:
            raise CommandExecutionError(f"nginx driver: lb:servers has no address for {server!r}")
        return re.compile(r"^(\s*)(#\s*)?server\s+" + re.escape(addr) + r"(\s[^;]*)?;(.*)$")

    def _read(self):
        try:
            with open(self.file, encoding="utf-8") as fh:
                return fh.read().split("\n")
        except OSError as exc:
            raise CommandExecutionError(f"nginx driver: cannot read {self.file}: {exc.strerror}") from None

    def _find(self, lines, server):
        pattern = self._pattern(server)
        for i, line in enumerate(lines):
            match = pattern.match(line)
            if match:
                return i, match
        raise CommandExecutionError(f"nginx driver: no 'server {self.addrs[server]}' line in {self.file}")

    def states(self, servers):
        self._check_owner()
        lines = self._read()
        result = {}
        for server in servers:
            _, match = self._find(lines, server)
            params = (match.group(3) or "").split()
            result[server] = "maint" if match.group(2) or "down" in params else "ready"
        return result

    def _apply(self, wanted):
        lines = self._read()
        original = "\n".join(lines)
        for server, state in wanted.items():
            i, match = self._find(lines, server)
            indent, params, rest = match.group(1), (match.group(3) or "").split(), match.group(4)
            params = [p for p in params if p != "down"] + (["down"] if state == "maint" else [])
            lines[i] = f"{indent}server {self.addrs[server]}{''.join(' ' + p for p in params)};{rest}"
        self._write("\n".join(lines))
        test = subprocess.run(self.nginx + ["-t"], capture_output=True, text=True, check=False)
        if test.returncode:
            self._write(original)
            raise CommandExecutionError(f"nginx -t failed, upstream file restored: {test.stderr.strip()[-300:]}")
        reload = subprocess.run(self.nginx + ["-s", "reload"], capture_output=True, text=True, check=False)
        if reload.returncode:
            self._write(original)  # nginx still runs the old configuration: keep the file saying so
            raise CommandExecutionError(f"nginx reload failed, upstream file restored: {reload.stderr.strip()[-300:]}")

    def _check_owner(self):
        """
        Refuse an upstream file that anyone but root could change, or whose folder (or a folder
        above it) anyone but root could write: root rewrites the file, and a user who can write
        the folder could plant links or files there for root to write through or hand over.
        The same rule as the project root (deploy module); a root-owned sticky folder above the
        file's folder (like /tmp) is accepted.
        """
        folder = os.path.dirname(self.file)
        parts = [p for p in folder.split("/") if p]
        checks = [("/" + "/".join(parts[:i]), "a folder above it", True) for i in range(len(parts))]
        checks += [(folder, "its folder", False), (self.file, "the file", False)]
        for path, what, sticky_ok in checks:
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise CommandExecutionError(f"nginx driver: cannot read {path}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise CommandExecutionError(
                    f"nginx driver: lb:upstream_file {self.file}: {what} {path} is a symlink; give the real path"
                )
            sticky = sticky_ok and st.st_mode & stat.S_ISVTX
            if st.st_uid != 0:
                why = f"is owned by uid {st.st_uid}, not root"
            elif st.st_mode & 0o002 and not sticky:
                why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
            elif st.st_mode & 0o020 and st.st_gid != 0 and not sticky:
                why = f"is writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):04o})"
            else:
                continue
            raise CommandExecutionError(
                f"nginx driver: lb:upstream_file {self.file}: {what} {path} {why}; root rewrites this file, so "
                f"it and its folder must be root's only (chown root:root {path}; chmod go-w {path})"
            )

    def _write(self, text):
        """Replace the upstream file: a fresh temp file (mkstemp) in its folder, owner and mode
        set on the descriptor, renamed over the file."""
        self._check_owner()
        st = os.stat(self.file)
        fd, tmp = tempfile.mkstemp(prefix=".deploy-", dir=os.path.dirname(self.file))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def take_out(self, servers, wait):
        """mark down, nginx -t, graceful reload (in-flight requests finish on the old workers)."""
        started = time.monotonic()
        self._apply({s: "maint" for s in servers})
        return {"drain_seconds": round(time.monotonic() - started, 3), "sessions_left": {}}

    def restore(self, prior):
        self._apply(prior)
        return {}

    def up(self, servers):
        """{server: (what it answered, whether it answers)}: an HTTP request to its address (any answer
        below 500 is UP: nginx sends it requests again as soon as the file says so)."""
        result = {}
        for server in servers:
            addr = self.addrs.get(server)
            if not addr:
                raise CommandExecutionError(f"nginx driver: lb:servers has no address for {server!r}")
            host, _, port = addr.rpartition(":")
            conn = http.client.HTTPConnection(host.strip("[]") or addr, int(port) if port.isdigit() else 80, timeout=2)
            try:
                conn.request("GET", "/", headers={"User-Agent": "salt-deploy wait-up"})
                code = conn.getresponse().status
                result[server] = (f"HTTP {code}", code < 500)
            except (OSError, http.client.HTTPException) as exc:
                result[server] = (f"no answer ({exc.__class__.__name__})", False)
            finally:
                conn.close()
        return result

    def stats(self, servers):
        raise CommandExecutionError(
            "nginx driver: no per-server response counters: open-source nginx does not keep them (only nginx Plus's "
            "API or a parser of its access log give them); analysis needs the haproxy driver"
        )



def _driver(lb):
    if not isinstance(lb, dict):
        raise CommandExecutionError("lb must be a dict with a 'driver'")
    driver = lb.get("driver")
    if driver == "haproxy":
        return _HAProxy(lb)
    if driver == "nginx":
        return _Nginx(lb)
    raise CommandExecutionError(f"unknown LB driver {driver!r}: use one of {', '.join(DRIVERS)} or none")


# --------------------------------------------------------------------------- public


def detach(lb, servers, wait=30):
    """
    Take servers out of the load balancer: drain, wait for their sessions to end
    (at most ``wait`` seconds), then put them in maintenance.

    The prior state of each server is written to the LB record before anything changes;
    servers already in maintenance stay as they are.  Returns ``{server: prior_state}``
    plus timing.

    lb
        The project's ``lb`` pillar dict (driver, socket, backend / upstream_file, servers).
    servers
        Minion ids of the nodes to detach.
    wait
        Longest wait, in seconds, for a draining server's sessions to end.

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.detach '{driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}' \\
            '[web-1, web-2]'
    """
    servers = _check_servers(servers)
    drv = _driver(lb)
    record = _driver_record(drv)
    now = drv.states(servers)
    # a server still in the record was detached by an interrupted run: its true prior state is the recorded one
    for server in servers:
        record.setdefault(server, now[server])
    _save_driver_record(drv, record)
    prior = {s: record[s] for s in servers}
    timing = drv.take_out([s for s in servers if now[s] != "maint"], float(wait))
    return {"prior": prior, **timing}


def attach(lb, servers):
    """
    Put servers back into the load balancer in the state recorded by ``detach``
    (a server an operator had put in maintenance stays in maintenance), and drop them
    from the record.  Servers with no record are left untouched.

    lb
        The project's ``lb`` pillar dict.
    servers
        Minion ids of the nodes to restore.

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.attach '{driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}' \\
            '[web-1, web-2]'
    """
    servers = _check_servers(servers)
    drv = _driver(lb)
    record = _driver_record(drv)
    prior = {s: record[s] for s in servers if s in record}
    if prior:
        drv.restore(prior)
    for server in prior:
        record.pop(server, None)
    _save_driver_record(drv, record)
    return {"restored": prior, "untouched": [s for s in servers if s not in prior]}


def swap(lb, servers, restore=(), wait=30):
    """
    Put ``restore`` back (as :func:`attach`), then take ``servers`` out (as :func:`detach`), in
    one call: between two batches of a rollout, the batch just done goes back and the next one
    goes out without a second round trip to this minion.

    lb
        The project's ``lb`` pillar dict.
    servers
        Minion ids of the nodes to detach.
    restore
        Minion ids of the nodes to put back in their recorded state first.
    wait
        Longest wait, in seconds, for a draining server's sessions to end.

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.swap '{driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}' \\
            '[web-3, web-4]' restore='[web-1, web-2]'
    """
    servers = _check_servers(servers)
    restore = _check_servers(restore or [])
    both = set(servers) & set(restore)
    if both:
        raise CommandExecutionError(f"swap: {', '.join(sorted(both))} both to restore and to detach")
    back = attach(lb, restore) if restore else {"restored": {}, "untouched": []}
    out = detach(lb, servers, wait)
    return {**out, "restored": back["restored"], "untouched": back["untouched"]}


def status(lb, servers):
    """
    The LB state of each server: ``ready``, ``drain`` or ``maint``; and which are still
    recorded as detached.

    lb
        The project's ``lb`` pillar dict.
    servers
        Minion ids.

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.status '{driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}' '[web-1]'
    """
    servers = _check_servers(servers)
    drv = _driver(lb)
    record = _driver_record(drv)
    return {"states": drv.states(servers), "detached": sorted(s for s in servers if s in record)}


def stats(lb, servers):
    """
    The load balancer's own per-server traffic counters, one sample (the runner's analysis of
    live traffic takes one at the start of a bake, every few seconds, and at its end).

    haproxy: the server's row of the runtime API's ``show stat``: cumulative response counters
    per status class (``hrsp_1xx`` … ``hrsp_5xx``, ``hrsp_other``), connection and response
    errors (``econ``, ``eresp``), retries, aborts, sessions, the mean queue/connect/response/total
    times in ms over its last 1024 requests (``qtime``, ``ctime``, ``rtime``, ``ttime``) and their
    maxima (``*_max``), and ``status`` (UP, DOWN, MAINT, DRAIN, NOLB…).  Returns
    ``{"servers": {minion id: {field: value}}, "time": <unix time>}``.

    nginx: refused (``CommandExecutionError``): open-source nginx keeps no per-server response
    counters; only nginx Plus's API or a parser of its access log give them.

    lb
        The project's ``lb`` pillar dict.
    servers
        Minion ids.

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.stats '{driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}' \\
            '[web-1, web-2]'
    """
    servers = _check_servers(servers)
    drv = _driver(lb)
    return {"servers": drv.stats(servers), "time": time.time()}


# --------------------------------------------------------------------------- several load balancers

ACTIONS = ("detach", "attach", "swap", "status", "stats")


def _wait_up(drivers, waiting, timeout):
    """Poll until every server in ``waiting`` ({lb name: [servers]}) is UP on its LB, at most ``timeout``
    seconds.  Returns (seconds, {lb name: {server: last status}} of those still not UP)."""
    started = time.monotonic()
    late = {}
    while True:
        late = {}
        for name, servers in waiting.items():
            if not servers:
                continue
            try:
                seen = drivers[name].up(servers)
            except CommandExecutionError as exc:
                seen = {s: (f"unknown ({exc})", False) for s in servers}
            down = {s: status for s, (status, ok) in seen.items() if not ok}
            if down:
                late[name] = down
        if not late or time.monotonic() - started >= timeout:
            return round(time.monotonic() - started, 3), late
        time.sleep(0.2)


def _one(fun, lb, servers):
    if fun == "detach":
        return detach(lb, servers, lb.get("drain_timeout", 30))
    return {"attach": attach, "status": status, "stats": stats}[fun](lb, servers)


def each(lbs, fun, servers, restore=(), wait_up=None):
    """
    ``fun`` (detach, attach, swap, status or stats) on every load balancer of ``lbs`` that this minion
    runs (``minion`` names it): one call for a run's step, sent to every LB minion at once.

    Each LB answers on its own (``{"lbs": {name: {"ok": true, "ret": ...} | {"ok": false, "error":
    ...}}}``): one LB failing does not stop the others; the runner puts back what the step changed.
    With ``wait_up`` (seconds), ``attach`` and ``swap`` then wait until every server put back in
    service (recorded prior state ``ready``) is UP on every LB of this minion (haproxy: its health
    check status in ``show stat``; nginx: its address answers HTTP), and ``swap`` takes ``servers`` out
    only then, and only if every LB restored and every server came back (``not_up``: those that did
    not, with their last status; ``wait_seconds``: how long the wait took).

    lbs
        The LB definitions (each as ``deploy_lb.detach`` takes it, plus ``name`` and ``minion``).
    fun
        detach, attach, swap, status or stats.
    servers
        Minion ids to act on (swap: to take out).
    restore
        swap: the minion ids to put back first.
    wait_up
        Longest wait, in seconds, for the servers put back to be UP (None: no wait).

    CLI Example:

    .. code-block:: bash

        salt lb-1 deploy_lb.each fun=attach servers='[web-1]' wait_up=30 \\
            lbs='[{name: dc1, minion: lb-1, driver: haproxy, socket: /run/haproxy/admin.sock, backend: rainbow}]'
    """
    if fun not in ACTIONS:
        raise CommandExecutionError(f"each: unknown action {fun!r}: use one of {', '.join(ACTIONS)}")
    if not isinstance(lbs, list) or not all(isinstance(lb, dict) and lb.get("name") for lb in lbs):
        raise CommandExecutionError("each: lbs must be a list of LB definitions, each with a 'name'")
    servers = _check_servers(servers)
    restore = _check_servers(restore or [])
    me = __opts__["id"]
    mine = {str(lb["name"]): lb for lb in lbs if lb.get("minion") == me}
    out = {}
    first = "attach" if fun == "swap" else fun
    first_servers = restore if fun == "swap" else servers
    for name, lb in mine.items():
        try:
            out[name] = {"ok": True, "ret": _one(first, lb, first_servers)}
        except CommandExecutionError as exc:
            out[name] = {"ok": False, "error": str(exc)}
    result = {"lbs": out}
    if fun in ("attach", "swap") and wait_up is not None:
        waiting = {name: sorted(s for s, st in (res["ret"].get("restored") or {}).items() if st == "ready")
                   for name, res in out.items() if res["ok"]}
        drivers = {name: _driver(mine[name]) for name in waiting if waiting[name]}
        result["wait_seconds"], result["not_up"] = _wait_up(drivers, waiting, float(wait_up))
    if fun == "swap":
        if all(res["ok"] for res in out.values()) and not result.get("not_up"):
            for name, lb in mine.items():
                try:
                    back = out[name]["ret"]
                    out[name]["ret"] = {**detach(lb, servers, lb.get("drain_timeout", 30)),
                                        "restored": back.get("restored", {}), "untouched": back.get("untouched", [])}
                except CommandExecutionError as exc:
                    out[name] = {"ok": False, "error": str(exc)}
        else:
            result["held"] = True  # nothing taken out: the runner decides (a failed batch, or a detach of its own)
    return result
