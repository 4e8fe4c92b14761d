"""The master's state on etcd v3, shared by two (or more) deployment servers.

Chosen with ``deploy_store: etcd``; the client is ``etcd3gw`` (etcd's JSON gateway)::

    deploy_store: etcd
    deploy_etcd:
      endpoints: [http://10.0.0.5:2379, http://10.0.0.6:2379]   # or host: / port: / protocol:
      prefix: /salt-deploy/          # every key lives under it
      ttl: 10                        # seconds a dead run's lock outlives it
      timeout: 3                     # seconds per request
      ca_cert: /etc/salt/etcd-ca.pem # TLS (https endpoints), optional
      cert_cert: /etc/salt/etcd-client.pem
      cert_key: /etc/salt/etcd-client.key
      user: deploy                   # etcd authentication, optional
      password: ...

Keys (under ``prefix``):

- ``lock/<project>/<env>``: the lock, bound to a lease that a thread of the running runner
  keeps alive; a dead run's lock vanishes ``ttl`` seconds after its last keep-alive.
  Value: the holder record (kind, user, host, master, jid, pid, since, lease).
- ``run/<project>/<env>``: the same record, *without* a lease: written with the lock in one
  transaction and deleted with it in one transaction when the run ends.  A ``run`` key
  without its ``lock`` key is a run that died: the next holder records it as interrupted.
- ``detached/<project>/<env>``: the nodes a run took out of the load balancer (no lease: it
  outlives a dead run, so the next holder puts them back).
- ``history/<project>/<env>/<time>-<pid>``: one key per run record, read in revision order.
- ``record/<project>/<env>/<node>``: the latest inventory each node reported.

Fencing: the lock key's ``create_revision`` identifies a holding.  Every write a run makes
while holding the lock (history, node record, detached list) is one transaction that compares
the lock key's ``create_revision`` with the run's own; a run whose lease expired (its key is
gone, or a successor's key has another revision) gets :class:`LockLost` and writes nothing.
"""

import base64
import copy
import json
import os
import re
import threading
import time
import uuid

from deploy_master import DeployError, Locked, contract, names
from deploy_master.store_base import Lock, Store
import contextlib

try:
    import etcd3gw
    from etcd3gw import exceptions as etcd_exc
except ImportError:  # pragma: no cover
    etcd3gw = None


class StoreUnavailable(DeployError):
    """etcd could not be reached (or refused the request)."""


class LockLost(DeployError):
    """This run's lease expired or its lock was taken: it must not write or go on."""


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _unb64(data):
    return base64.b64decode(data)


def _tls_error(exc):
    """'TLS: <reason>' for a connection that failed in the TLS handshake (None otherwise): the
    reason only (e.g. certificate verify failed), never the request."""
    text = str(getattr(exc, "detail_text", None) or exc)
    found = re.search(r"\[SSL(?:: [A-Z_]+)?\] ([^(')\]]+)", text)
    if found:
        return f"TLS: {found.group(1).strip()}"
    if "SSLError" in text or "TLSV1_ALERT" in text:
        return "TLS: handshake failed"
    return None


def _end(prefix):
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class EtcdClient:
    """The few etcd v3 calls the store needs, over one or more endpoints (fail over on connection errors)."""

    def __init__(self, conf):
        if etcd3gw is None:
            raise contract.missing("deploy_store: etcd", "the Python package etcd3gw", pip="etcd3gw")
        endpoints = conf.get("endpoints") or [
            f"{conf.get('protocol', 'http')}://{conf.get('host', '127.0.0.1')}:{conf.get('port', 2379)}"
        ]
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if any("@" in str(url) for url in endpoints):  # never echo the URL: it holds a password
            raise StoreUnavailable("deploy_etcd: the user and password go in deploy_etcd user/password, not in an "
                                   "endpoint URL")
        if bool(conf.get("cert_cert")) != bool(conf.get("cert_key")):
            raise StoreUnavailable("deploy_etcd: cert_cert and cert_key go together (the client certificate and "
                                   "its key)")
        if bool(conf.get("user")) != bool(conf.get("password")):
            raise StoreUnavailable("deploy_etcd: user and password go together")
        for key in ("ca_cert", "cert_cert", "cert_key"):
            if conf.get(key) and not os.path.isfile(conf[key]):
                raise StoreUnavailable(f"deploy_etcd: {key} {conf[key]} is not a readable file")
        self.endpoints = list(endpoints)
        self.timeout = float(conf.get("timeout", 3))
        self.clients = []
        for url in self.endpoints:
            protocol, _, rest = url.partition("://")
            host, _, port = rest.rstrip("/").rpartition(":")
            client = etcd3gw.Etcd3Client(
                host=host.strip("[]"), port=int(port), protocol=protocol, timeout=self.timeout,
                ca_cert=conf.get("ca_cert"), cert_key=conf.get("cert_key"), cert_cert=conf.get("cert_cert"),
                api_path=conf.get("api_path", "/v3/"),
            )
            # requests lets REQUESTS_CA_BUNDLE (and ~/.netrc, proxies) of the environment override the
            # session: the configured CA must be the one that verifies etcd, and no stray credential goes
            client.session.trust_env = False
            self.clients.append(client)
        self.user, self.password = conf.get("user"), conf.get("password")
        self.current = 0
        self._mutex = threading.Lock()

    def where(self):
        return ", ".join(self.endpoints)

    def _authenticate(self, client):
        res = client.post(client.get_url("/auth/authenticate"), json={"name": self.user, "password": self.password})
        client.session.headers["Authorization"] = res["token"]

    def post(self, path, body):
        """POST to the v3 gateway; StoreUnavailable naming the endpoints if none answers."""
        errors = []
        for attempt in range(len(self.clients)):
            index = (self.current + attempt) % len(self.clients)
            client = self.clients[index]
            try:
                with self._mutex:  # one requests.Session is not shared between threads safely
                    if self.user and "Authorization" not in client.session.headers:
                        self._authenticate(client)
                    try:
                        res = client.post(client.get_url(path), json=body)
                    except etcd_exc.Etcd3Exception as exc:
                        if self.user and "token" in str(getattr(exc, "detail_text", "") or ""):
                            self._authenticate(client)  # the auth token expired: once more with a new one
                            res = client.post(client.get_url(path), json=body)
                        else:
                            raise
                self.current = index
                return res
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                errors.append(_tls_error(exc) or type(exc).__name__)
            except etcd_exc.Etcd3Exception as exc:
                # the message only: never the request (it may hold a password)
                raise StoreUnavailable(
                    f"deploy store etcd ({self.where()}) refused a request: "
                    f"{(getattr(exc, 'detail_text', None) or type(exc).__name__)[:200]}"
                ) from None
        raise StoreUnavailable(f"deploy store etcd ({self.where()}) is unreachable ({', '.join(sorted(set(errors)))})")

    def txn(self, compare, success, failure=()):
        res = self.post("/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})
        return res

    def range(self, key, prefix=False, sort_create=False):
        """[(key, value (bytes), kv)] of ``key`` or of every key under it."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _end(key)
        if sort_create:
            body.update({"sort_order": "ASCEND", "sort_target": "CREATE"})
        res = self.post("/kv/range", body)
        return [(_unb64(kv["key"]).decode(), _unb64(kv.get("value", "")), kv) for kv in res.get("kvs", [])]

    def grant(self, ttl):
        return int(self.post("/lease/grant", {"TTL": int(ttl)})["ID"])

    def keepalive(self, lease):
        """The lease's new TTL; -1 if it expired."""
        res = self.post("/lease/keepalive", {"ID": lease})
        return int((res.get("result") or {}).get("TTL", -1))

    def revoke(self, lease):
        with contextlib.suppress(StoreUnavailable):
            self.post("/kv/lease/revoke", {"ID": lease})


def put(key, value, lease=None, prev_kv=False):
    req = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
    if lease:
        req["lease"] = lease
    if prev_kv:
        req["prev_kv"] = True
    return {"request_put": req}


def delete(key):
    return {"request_delete_range": {"key": _b64(key)}}


def get(key):
    return {"request_range": {"key": _b64(key)}}


def created(key, revision):
    """Compare: the key was created at ``revision`` (0: it does not exist)."""
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": str(revision)}


def modified(key, revision):
    return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}


def _kvs(response):
    """The key-values of a txn's range responses."""
    out = []
    for resp in response.get("responses", []):
        for kv in (resp.get("response_range") or {}).get("kvs", []):
            out.append(kv)
    return out


class EtcdLock(Lock):
    """A lease-bound key taken with one compare-and-set; a keep-alive thread renews the lease while the run lives."""

    def __init__(self, store, project, env, kind):
        super().__init__(store, project, env, kind)
        self.key = store.key("lock", project, env)
        self.run_key = store.key("run", project, env)
        self.detached_key = store.key("detached", project, env)
        self.request_key = store.key("request", project, env)
        self.kept = False  # paused: the lock key has no lease and outlives this process
        self.revision = None  # the lock key's create_revision while this run holds it
        self.lease = None
        self.lost = None  # why this run no longer holds the lock
        self._stop = threading.Event()
        self._thread = None

    # --- reading
    def holder(self):
        """The live holder; else the record of a run that died holding it; None if neither."""
        lock = self.store.etcd.range(self.key)
        if lock:
            return self._load(lock[0][1])
        run = self.store.etcd.range(self.run_key)
        return self._load(run[0][1]) if run else None

    @staticmethod
    def _load(raw):
        try:
            return json.loads(raw)
        except ValueError:
            return {}

    def alive(self, info):
        lock = self.store.etcd.range(self.key)
        if not lock:
            return False
        now = self._load(lock[0][1])
        if info.get("paused"):  # a paused run waits for a person, not for its process
            return (now.get("paused") or {}).get("run") == info["paused"].get("run")
        return now.get("lease") == info.get("lease")

    def detached(self):
        got = self.store.etcd.range(self.detached_key)
        return self._load(got[0][1]) if got else []

    # --- taking and giving back
    def acquire(self, jid):
        user, host = names.caller()
        etcd = self.store.etcd
        lease = etcd.grant(self.store.ttl)
        info = {
            "kind": self.kind, "user": user, "host": host, "master": self.store.master, "jid": jid,
            "pid": os.getpid(), "since": names.now(), "lease": lease,
        }
        try:
            res = etcd.txn(
                [created(self.key, 0)],
                [put(self.key, info, lease=lease), put(self.run_key, info, prev_kv=True)],
                [get(self.key)],
            )
        except BaseException:
            etcd.revoke(lease)
            raise
        if not res.get("succeeded"):
            etcd.revoke(lease)
            held = _kvs(res)
            raise self._locked(self._load(_unb64(held[0]["value"])) if held else {})
        self.revision, self.lease, self.info = int(res["header"]["revision"]), lease, info
        self._thread = threading.Thread(target=self._keepalive, name=f"deploy-lease-{lease}", daemon=True)
        self._thread.start()
        prev = (res["responses"][1].get("response_put") or {}).get("prev_kv")
        if prev:  # a run key without its lock: that run died (its lease expired)
            self._interrupted(self._load(_unb64(prev.get("value", ""))))
        return self

    def _keepalive(self):
        ttl = self.store.ttl
        interval = max(ttl / 3.0, 0.2)
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                if self.store.etcd.keepalive(self.lease) <= 0:
                    self._lose("its lease expired")
                    return
                last_ok = time.monotonic()
            except DeployError as exc:
                if time.monotonic() - last_ok >= ttl:
                    # etcd may have let the lease expire by now: whatever it did, this run stops
                    self._lose(f"etcd did not answer for {ttl}s ({exc})")
                    return

    def _lose(self, why):
        if not self.lost:
            self.lost = why
            self.store.log.error("deploy: %s/%s: lost the lock: %s", self.project, self.env, why)

    def check(self):
        """LockLost if this run no longer holds the lock (its lease was lost)."""
        if self.lost:
            raise LockLost(
                f"lost the lock of {self.project}/{self.env} ({self.lost}): stopped; the next run on either "
                "master records this one as interrupted and puts back the nodes it left out of the LB"
            )

    def fence(self):
        """The compare that makes a write land only while this run holds the lock."""
        self.check()
        return created(self.key, self.revision)

    def fenced(self, success):
        """One transaction of ``success`` requests, done only while this run holds the lock."""
        res = self.store.etcd.txn([self.fence()], success)
        if not res.get("succeeded"):
            self._lose("its lock key is gone or belongs to another run")
            self.check()
        return res

    def take_over(self, held):
        """Remove the stale (or, with force, the live) lock ``held`` and record its run as interrupted;
        True (the interface's answer: this call took it over)."""
        etcd = self.store.etcd
        lock = etcd.range(self.key)
        run = etcd.range(self.run_key)
        compare = [created(self.key, lock[0][2]["create_revision"]) if lock else created(self.key, 0)]
        compare.append(modified(self.run_key, run[0][2]["mod_revision"]) if run else created(self.run_key, 0))
        res = etcd.txn(compare, [delete(self.key), delete(self.run_key)])
        if not res.get("succeeded"):
            raise DeployError(f"{self.project}/{self.env}: the lock changed while clearing it; look again "
                              f"(salt-run deploy.lock_status project={self.project} env={self.env})")
        if lock and held.get("lease"):
            etcd.revoke(int(held["lease"]))
        self._interrupted(held)
        return True

    def release(self):
        """Give the lock back (lock and run keys in one transaction), if this run still holds it."""
        self._stop.set()
        if self.revision is None or self.kept:
            return
        try:
            if not self.lost:
                self.store.etcd.txn([created(self.key, self.revision)],
                                    [delete(self.key), delete(self.run_key), delete(self.request_key)])
            self.store.etcd.revoke(self.lease)
        except DeployError as exc:
            self.store.log.warning("deploy: could not give back the lock: %s (it expires with its lease)", exc)
        self.revision = None

    # --- gates between stages
    def update(self, **fields):
        info = {k: v for k, v in {**self.info, **fields}.items() if v is not None}
        self.fenced([put(self.key, info, lease=self.lease), put(self.run_key, info)])
        self.info = info

    def pause(self, state):
        """The lock key is written again without a lease (it outlives this process), then the lease
        is stopped and revoked."""
        info = {k: v for k, v in self.info.items() if k != "lease"}
        info["paused"] = {**state, "since": names.now()}
        self.fenced([put(self.key, info), put(self.run_key, info)])
        self.info, self.kept = info, True
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.store.etcd.revoke(self.lease)

    def resume(self, jid):
        etcd = self.store.etcd
        lock = etcd.range(self.key)
        if not lock:
            raise self._not_paused()
        held, kv = self._load(lock[0][1]), lock[0][2]
        if not held.get("paused"):
            raise self._locked(held)
        lease = etcd.grant(self.store.ttl)
        info = {**self._resumed(jid, held["paused"]), "master": self.store.master, "lease": lease}
        try:
            res = etcd.txn([modified(self.key, kv["mod_revision"])],
                           [put(self.key, info, lease=lease), put(self.run_key, info)])
        except BaseException:
            etcd.revoke(lease)
            raise
        if not res.get("succeeded"):
            etcd.revoke(lease)
            raise Locked(f"{self.project}/{self.env}: the paused run was taken by another promote or abort meanwhile")
        self.revision, self.lease, self.info = int(kv["create_revision"]), lease, info
        self._stop.clear()
        self._thread = threading.Thread(target=self._keepalive, name=f"deploy-lease-{lease}", daemon=True)
        self._thread.start()
        return copy.deepcopy(held["paused"])  # the caller's to change: never this lock's own record

    def request(self, action, run, by):
        self.store.etcd.txn([], [put(self.request_key, {"action": action, "run": run, "by": by})])

    def requested(self):
        got = self.store.etcd.range(self.request_key)
        if not got:
            return None
        res = self.store.etcd.txn([modified(self.request_key, got[0][2]["mod_revision"])], [delete(self.request_key)])
        if not res.get("succeeded"):
            return None
        return self._new_request(self._load(got[0][1]), self.info)

    def set_detached(self, nodes):
        req = put(self.detached_key, sorted(nodes)) if nodes else delete(self.detached_key)
        if self.revision is None:  # deploy.unlock clearing a dead run's list: no run holds the lock
            self.store.etcd.txn([], [req])
        else:
            self.fenced([req])


class EtcdStore(Store):
    """History, node record, lock and detached list on etcd (see the module docstring)."""

    def __init__(self, conf, master=None, log=None):
        super().__init__(log)
        self.conf = conf or {}
        self.prefix = "/" + str(self.conf.get("prefix", "/salt-deploy/")).strip("/") + "/"
        self.ttl = int(self.conf.get("ttl", 10))
        self.master = master
        self.etcd = EtcdClient(self.conf)

    def key(self, *parts):
        return self.prefix + "/".join(parts)

    def lock(self, project, env, kind):
        return EtcdLock(self, project, env, kind)

    def _write(self, requests, lock):
        if lock is not None and getattr(lock, "revision", None) is not None:
            lock.fenced(requests)
        else:
            if lock is not None:
                lock.check()
            self.etcd.txn([], requests)

    def history_append(self, project, record, lock=None):
        record = {"project": project, **record}
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._write([put(self.key("history", project, str(record.get("env") or "-"), name), record)], lock)

    def history_read(self, project, env=None):
        base = self.key("history", project) + "/" + (f"{env}/" if env else "")
        records = []
        for _key, raw, _kv in self.etcd.range(base, prefix=True, sort_create=True):
            try:
                records.append(json.loads(raw))
            except ValueError:
                continue
        return records

    def record_read(self, project, env):
        base = self.key("record", project, env) + "/"
        out = {}
        for key, raw, _kv in self.etcd.range(base, prefix=True):
            try:
                out[key[len(base):]] = json.loads(raw)
            except ValueError:
                continue
        return out

    def record_update(self, project, env, changes, lock=None):
        if not changes:
            return
        requests = [
            delete(self.key("record", project, env, node)) if inv is None
            else put(self.key("record", project, env, node), inv)
            for node, inv in sorted(changes.items())
        ]
        self._write(requests, lock)
