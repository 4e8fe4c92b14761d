"""The etcd store (deploy_master.store_etcd) against a real etcd on loopback (Debian's etcd-server).

One etcd per module, a fresh key prefix per test; leases of 2 s so that a dead run's lock
expires within the test.
"""

import os
import subprocess
import sys
import time
import uuid

import pytest

from deploy_master import DeployError, store
from deploy_master.store_etcd import LockLost, StoreUnavailable
from sandbox.etcd import ETCD, EtcdServer, free_port

# no skip: a missing etcd must fail here (.ci/run installs it), not hide
assert os.path.exists(ETCD), "needs the Debian package etcd-server"

TTL = 2
INV = {"current": "r2", "previous": "r1", "releases": [], "fingerprint": "0123456789abcdef"}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def opts(etcd):
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    return {"deploy_store": "etcd", "id": "m1", "cachedir": "/nonexistent",
            "deploy_etcd": {"endpoints": [etcd.endpoint], "prefix": prefix, "ttl": TTL, "timeout": 1}}


def _store(opts, master="m1"):
    return store.get({**opts, "id": master})


def test_get_chooses_etcd(opts):
    from deploy_master.store_etcd import EtcdStore

    assert isinstance(store.get(opts), EtcdStore)


def test_lock_is_one_holder_and_names_it(opts):
    one, two = _store(opts, "m1"), _store(opts, "m2")
    lock = one.lock("rainbow", "pro", "release").acquire("20260101000000000001")
    try:
        with pytest.raises(DeployError, match=r"rainbow/pro is locked: release by .* on master m1 \(jid 20260101000000000001, pid \d+\)"):
            two.lock("rainbow", "pro", "rollback (normal)").acquire("2")
        held = two.lock("rainbow", "pro", "unlock").holder()
        assert {k: held[k] for k in ("kind", "master", "jid", "pid")} == {
            "kind": "release", "master": "m1", "jid": "20260101000000000001", "pid": os.getpid()}
        assert held["since"] and held["user"] and held["host"]
        assert two.lock("rainbow", "pro", "unlock").alive(held)
        # other envs are separate
        two.lock("rainbow", "stg", "release").acquire("3").release()
    finally:
        lock.release()
    # given back: the other master takes it, and nothing is recorded as interrupted
    two.lock("rainbow", "pro", "release").acquire("4").release()
    assert one.lock("rainbow", "pro", "unlock").holder() is None
    assert one.history_read("rainbow") == []


def test_the_lease_is_kept_alive_while_the_run_lives(opts):
    one, two = _store(opts, "m1"), _store(opts, "m2")
    lock = one.lock("rainbow", "pro", "release").acquire("1")
    try:
        time.sleep(TTL * 2.5)
        with pytest.raises(DeployError, match="is locked"):
            two.lock("rainbow", "pro", "release").acquire("2")
        lock.check()
        one.history_append("rainbow", {"env": "pro", "result": "success"}, lock=lock)
    finally:
        lock.release()


DEAD_RUN = r"""
import sys, time
from deploy_master import store
s = store.get({"deploy_store": "etcd", "id": "m1", "deploy_etcd": %r})
lock = s.lock("rainbow", "pro", "release").acquire("20260101000000000009")
lock.set_detached(["web-1", "web-2"])
s.record_update("rainbow", "pro", {"web-1": {"fingerprint": "1"}}, lock=lock)
print("locked", flush=True)
time.sleep(600)
"""


def _dead_run(opts):
    """A runner process that takes the lock, detaches two nodes, and is SIGKILLed."""
    proc = subprocess.Popen([sys.executable, "-c", DEAD_RUN % (opts["deploy_etcd"],)], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.stdout.readline().strip() == b"locked"
    proc.kill()
    proc.wait()
    return proc


def test_a_dead_runs_lock_expires_and_the_next_run_takes_over(opts):
    _dead_run(opts)
    two = _store(opts, "m2")
    # its lease is still valid for up to TTL seconds: refused
    with pytest.raises(DeployError, match="is locked: release by .* on master m1"):
        two.lock("rainbow", "pro", "release").acquire("2")
    time.sleep(TTL + 1.5)
    view = two.lock("rainbow", "pro", "unlock")
    held = view.holder()  # the dead run's record outlives its lease
    assert held["jid"] == "20260101000000000009" and not view.alive(held)
    lock = two.lock("rainbow", "pro", "release").acquire("20260101000000000010")
    try:
        assert lock.warnings and "took over a stale lock of release by" in lock.warnings[0]
        assert lock.detached() == ["web-1", "web-2"]  # the detached list survived: the runner restores it
        lock.set_detached([])
        assert lock.detached() == []
        (rec,) = two.history_read("rainbow", "pro")
        assert rec["result"] == "interrupted" and rec["jid"] == "20260101000000000009"
        assert two.record_read("rainbow", "pro") == {"web-1": {"fingerprint": "1"}}
    finally:
        lock.release()
    assert two.lock("rainbow", "pro", "unlock").holder() is None


def test_unlock_clears_a_dead_runs_record(opts):
    _dead_run(opts)
    time.sleep(TTL + 1.5)
    two = _store(opts, "m2")
    view = two.lock("rainbow", "pro", "unlock")
    held = view.holder()
    assert not view.alive(held)
    view.take_over(held)
    assert view.detached() == ["web-1", "web-2"]
    view.set_detached([])
    assert view.holder() is None and view.detached() == []
    assert [r["result"] for r in two.history_read("rainbow")] == ["interrupted"]


def test_a_run_that_lost_its_lock_cannot_overwrite_its_successors_records(opts):
    one, two = _store(opts, "m1"), _store(opts, "m2")
    old = one.lock("rainbow", "pro", "release").acquire("1")
    old._stop.set()  # its keep-alives stop (a master cut off from etcd) ...
    time.sleep(TTL + 1.5)  # ... and etcd lets the lease expire
    new = two.lock("rainbow", "pro", "release").acquire("2")
    try:
        new.set_detached(["web-3"])
        two.record_update("rainbow", "pro", {"web-1": INV}, lock=new)
        # the old run comes back and tries to write: every write is refused, nothing changes
        with pytest.raises(LockLost, match="lost the lock of rainbow/pro"):
            old.set_detached([])
        with pytest.raises(LockLost):
            one.record_update("rainbow", "pro", {"web-1": None}, lock=old)
        with pytest.raises(LockLost):
            one.history_append("rainbow", {"env": "pro", "result": "success"}, lock=old)
        with pytest.raises(LockLost):
            old.check()
        assert new.detached() == ["web-3"]
        assert two.record_read("rainbow", "pro") == {"web-1": INV}
        assert [r["result"] for r in two.history_read("rainbow")] == ["interrupted"]  # the old run, by the new
        old.release()  # does not remove the successor's lock
        assert two.lock("rainbow", "pro", "unlock").alive(new.info)
    finally:
        new.release()


def test_history_and_record_are_the_same_from_both_masters(opts):
    one, two = _store(opts, "m1"), _store(opts, "m2")
    for n, s in enumerate([one, two, one]):
        lock = s.lock("rainbow", "pro" if n < 2 else "stg", "release").acquire(str(n))
        s.history_append("rainbow", {"env": "pro" if n < 2 else "stg", "result": "success", "n": n}, lock=lock)
        lock.release()
    assert [r["n"] for r in one.history_read("rainbow")] == [0, 1, 2]
    assert one.history_read("rainbow") == two.history_read("rainbow")
    assert [r["n"] for r in two.history_read("rainbow", "pro")] == [0, 1]
    assert all(r["project"] == "rainbow" for r in one.history_read("rainbow"))
    assert one.history_read("rainbo") == []  # a prefix of a name is not that name
    one.record_update("rainbow", "pro", {"web-1": INV, "web-2": INV})
    two.record_update("rainbow", "pro", {"web-2": None})
    assert one.record_read("rainbow", "pro") == two.record_read("rainbow", "pro") == {"web-1": INV}
    assert one.record_read("rainbow", "stg") == {}


def test_etcd_restarted_mid_run_never_gives_two_holders(opts, etcd):
    one, two = _store(opts, "m1"), _store(opts, "m2")
    lock = one.lock("rainbow", "pro", "release").acquire("1")
    try:
        etcd.restart()  # within the TTL: the lease and the lock survive
        with pytest.raises(DeployError, match="is locked"):
            two.lock("rainbow", "pro", "release").acquire("2")
        time.sleep(TTL * 1.5)
        lock.check()
        lock.set_detached(["web-1"])
        lock.set_detached([])
    finally:
        lock.release()


def test_a_lost_lease_stops_the_run(opts, etcd):
    one = _store(opts, "m1")
    lock = one.lock("rainbow", "pro", "release").acquire("1")
    etcd.stop()  # the master is cut off from etcd
    try:
        time.sleep(TTL + 2)
        with pytest.raises(LockLost, match=r"lost the lock of rainbow/pro \(etcd did not answer for 2s"):
            lock.check()
    finally:
        etcd.start()
        lock.release()
    # its lock key expires with the lease (etcd restores a lease with a fresh TTL after a restart)
    deadline = time.monotonic() + TTL * 3 + 5
    two = _store(opts, "m2")
    while time.monotonic() < deadline:
        try:
            two.lock("rainbow", "pro", "release").acquire("2").release()
            break
        except DeployError:
            time.sleep(0.5)
    else:
        pytest.fail("the lost lock never expired")


def test_etcd_unreachable_is_one_clear_error(opts):
    opts["deploy_etcd"] = {**opts["deploy_etcd"], "endpoints": [f"http://127.0.0.1:{free_port()}"]}
    down = _store(opts)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"deploy store etcd \(http://127.0.0.1:\d+\) is unreachable"):
        down.lock("rainbow", "pro", "release").acquire("1")
    for read in (lambda: down.history_read("rainbow"), lambda: down.record_read("rainbow", "pro"),
                 lambda: down.lock("rainbow", "pro", "unlock").holder()):
        with pytest.raises(StoreUnavailable, match="is unreachable"):
            read()
    assert time.monotonic() - started < 10


def test_a_second_endpoint_is_used_when_the_first_is_down(opts, etcd):
    opts["deploy_etcd"] = {**opts["deploy_etcd"], "endpoints": [f"http://127.0.0.1:{free_port()}", etcd.endpoint]}
    s = _store(opts)
    s.lock("rainbow", "pro", "release").acquire("1").release()


# --- a paused run: the same behaviour as the local store, against a real etcd


def test_a_paused_run_keeps_the_lock_after_its_process_ended(opts):
    from tests.unit.test_store import check_the_paused_state, paused_by_a_process_that_ended

    paused_by_a_process_that_ended(opts)
    time.sleep(TTL + 1.5)  # the dead process's lease is long gone: a paused lock has none
    check_the_paused_state(_store(opts, "m2"))


def test_a_waiting_run_takes_a_request(opts):
    from tests.unit.test_store import check_requests

    check_requests(_store(opts))


def test_unlock_force_clears_a_paused_run(opts):
    from tests.unit.test_store import paused_by_a_process_that_ended

    paused_by_a_process_that_ended(opts)
    backend = _store(opts, "m2")
    view = backend.lock("rainbow", "pro", "unlock")
    assert view.take_over(view.holder()) is True
    assert view.holder() is None
    (rec,) = backend.history_read("rainbow", "pro")
    assert rec["result"] == "interrupted" and rec["jid"] == "20261129000000000007"
    backend.lock("rainbow", "pro", "release").acquire("5").release()
