"""The master's state behind one interface: the lock, the detached list, the history, the record of the nodes.

:class:`Store` and :class:`Lock` are the interface; :class:`LocalStore` keeps everything on
the master's disk under ``deploy_state_dir`` (default ``<cachedir>/deploy``):

- ``locks/<project>_<env>.lock``: the lock (JSON: kind, user, host, jid, pid, created, since);
- ``locks/<project>_<env>.detached.json``: the nodes a run took out of the load balancer;
- ``history/<project>.jsonl``: one JSON record per run;
- ``inventory/<project>_<env>.json``: the latest inventory each node reported.

A shared backend (etcd) implements the same interface: a lock is then a lease taken by a
compare-and-set; the writes a run makes while holding it are passed the run's ``lock``
(``history_append``, ``record_update``, ``Lock.set_detached``) so that the backend can fence
them with the lock's revision.  The local store has one holder per master and needs no fence.
"""

import contextlib
import copy
import fcntl
import json
import os

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError, names, statedir, store_etcd
from deploy_master.store_base import Lock, Store

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

# the deploy.* functions that change a node: a return of theirs without an inventory means
# the node's state is unknown now
MUTATING = ("deploy.prepare", "deploy.switch", "deploy.cleanup", "deploy.mark")


def reported_inventory(fun, res):
    """What a deploy.* return says of the node: its inventory, None (unknown), or False (nothing)."""
    data = res.get("ret")
    if isinstance(data, dict):
        if isinstance(data.get("inventory"), dict) and data["inventory"].get("fingerprint"):
            return data["inventory"]
        if fun == "deploy.releases" and res["ok"] and data.get("fingerprint"):
            return data
    return None if fun in MUTATING else False


class LocalLock(Lock):
    """A lock file created with ``link()`` (atomic); a holder is alive while its pid (and start time) lives."""

    def __init__(self, store, project, env, kind):
        super().__init__(store, project, env, kind)
        self.path = os.path.join(store.dir("locks"), f"{project}_{env}.lock")
        self.detached_path = os.path.join(store.dir("locks"), f"{project}_{env}.detached.json")
        self.request_path = os.path.join(store.dir("locks"), f"{project}_{env}.request.json")
        self.kept = False  # paused: the lock outlives this process

    def holder(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def alive(self, info):
        if info.get("paused"):  # a paused run waits for a person, not for its process
            return True
        pid = info.get("pid")
        if not pid or psutil is None:
            return bool(pid) and os.path.exists(f"/proc/{pid}")
        try:
            proc = psutil.Process(pid)
            return abs(proc.create_time() - info.get("created", 0)) < 1
        except psutil.Error:
            return False

    def acquire(self, jid):
        user, host = names.caller()
        info = {
            "kind": self.kind,
            "user": user,
            "host": host,
            "jid": jid,
            "pid": os.getpid(),
            "created": psutil.Process().create_time() if psutil else 0,
            "since": names.now(),
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        try:
            with self._guard():  # one taker at a time: the stale lock it read is the one it removes
                for _ in range(3):
                    try:
                        os.link(tmp, self.path)  # atomic: fails if a lock exists
                        self.info = info
                        return self
                    except FileExistsError:
                        held = self.holder()
                        if held is None:
                            continue
                        if held == {} or self.alive(held):
                            raise self._locked(held) from None
                        self._take_over(held)
            raise DeployError(f"could not take the lock {self.path}")
        finally:
            os.unlink(tmp)

    @contextlib.contextmanager
    def _guard(self):
        """A kernel lock (flock) beside the lock file, held while a lock is taken or taken over."""
        with open(f"{self.path}.guard", "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def take_over(self, held):
        """A stale lock: its run died.  Remove it, if it is still ``held`` (read again under the
        guard: another taker may have replaced it meanwhile), and record the run as interrupted
        (the caller puts back what it left out of the LB).  True if this call took it over."""
        with self._guard():
            return self._take_over(held)

    def _take_over(self, held):
        if self.holder() != held:
            return False
        stale = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return False
        os.unlink(stale)
        self._interrupted(held)
        return True

    def release(self):
        if self.kept:
            return
        try:
            if self.holder() == self.info:
                os.unlink(self.path)
                if os.path.exists(self.request_path):
                    os.unlink(self.request_path)
        except FileNotFoundError:
            pass

    def _write(self, info):
        statedir.write_json(self.path, info, durable=True)

    def update(self, **fields):
        info = {k: v for k, v in {**self.info, **fields}.items() if v is not None}
        with self._guard():
            if self.holder() != self.info:
                raise DeployError(f"lost the lock of {self.project}/{self.env}: its record changed")
            self._write(info)
        self.info = info

    def pause(self, state):
        self.update(paused={**state, "since": names.now()})
        self.kept = True

    def resume(self, jid):
        with self._guard():
            held = self.holder()
            if held is None:
                raise self._not_paused()
            if not held.get("paused"):
                if held == {} or self.alive(held):
                    raise self._locked(held)
                raise self._not_paused()
            info = {**self._resumed(jid, held["paused"]), "created": psutil.Process().create_time() if psutil else 0}
            self._write(info)
        self.info = info
        return copy.deepcopy(held["paused"])  # the caller's to change: never this lock's own record

    def request(self, action, run, by):
        statedir.write_json(self.request_path, {"action": action, "run": run, "by": by})

    def requested(self):
        stolen = f"{self.request_path}.{os.getpid()}.taken"
        try:
            os.rename(self.request_path, stolen)
        except FileNotFoundError:
            return None
        try:
            with open(stolen, encoding="utf-8") as fh:
                req = json.load(fh)
        except ValueError:
            req = None
        finally:
            os.unlink(stolen)
        return self._new_request(req, self.info)

    def detached(self):
        try:
            with open(self.detached_path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return []

    def set_detached(self, nodes):
        if not nodes:
            if os.path.exists(self.detached_path):
                os.unlink(self.detached_path)
            return
        statedir.write_json(self.detached_path, sorted(nodes), durable=True)


class LocalStore(Store):
    """Everything in files under one folder on the master (see the module docstring)."""

    def __init__(self, base, log=None):
        super().__init__(log)
        self.base = base

    def dir(self, *parts):
        path = os.path.join(self.base, *parts)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def lock(self, project, env, kind):
        return LocalLock(self, project, env, kind)

    def _history_path(self, project):
        return os.path.join(self.dir("history"), f"{project}.jsonl")

    def history_append(self, project, record, lock=None):
        record = {"project": project, **record}
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self._history_path(project), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def history_read(self, project, env=None):
        records = []
        try:
            with open(self._history_path(project), encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if env is None or rec.get("env") == env:
                        records.append(rec)
        except FileNotFoundError:
            pass
        return records

    def _record_path(self, project, env):
        return os.path.join(self.dir("inventory"), f"{project}_{env}.json")

    def record_read(self, project, env):
        data = statedir.read_json(self._record_path(project, env))
        return (data.get("nodes") or {}) if isinstance(data, dict) else {}

    def record_update(self, project, env, changes, lock=None):
        if not changes:
            return
        path = self._record_path(project, env)
        with open(f"{path}.lock", "w", encoding="utf-8") as flock:
            fcntl.flock(flock, fcntl.LOCK_EX)
            nodes = self.record_read(project, env)
            for node, inv in changes.items():
                if inv is None:
                    nodes.pop(node, None)
                else:
                    nodes[node] = inv
            statedir.write_json(path, {"updated": names.now(), "nodes": nodes})


BACKENDS = ("local", "etcd")


def get(opts, log=None):
    """The store the master options choose (``deploy_store``, default ``local``; ``etcd``: shared
    by several masters, configured by ``deploy_etcd``, see :mod:`deploy_master.store_etcd`)."""
    kind = opts.get("deploy_store") or "local"
    if kind not in BACKENDS:
        raise SaltInvocationError(f"unknown deploy_store {kind!r}: use one of {', '.join(BACKENDS)}")
    if kind == "etcd":
        return store_etcd.EtcdStore(opts.get("deploy_etcd") or {}, master=opts.get("id"), log=log)
    return LocalStore(statedir.base(opts), log)
