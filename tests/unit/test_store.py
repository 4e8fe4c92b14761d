"""The master's state (deploy_master.store): the record of the nodes, the history, the lock, the detached list.

The local-disk store, on a temporary folder: no Salt globals, no daemons.
"""

import json
import os
import subprocess
import sys

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError, store



INV = {"current": "r2", "previous": "r1", "releases": [], "fingerprint": "0123456789abcdef"}


@pytest.mark.parametrize("fun,res,expected", [
    ("deploy.switch", {"ok": True, "ret": {"result": True, "inventory": INV}}, INV),
    ("deploy.switch", {"ok": False, "ret": {"result": False, "refused": True, "inventory": INV}}, INV),
    ("deploy.prepare", {"ok": True, "ret": {"changed": False, "inventory": INV}}, INV),
    ("deploy.releases", {"ok": True, "ret": INV}, INV),
    # a state-changing call without an inventory: the node's state is unknown now
    ("deploy.switch", {"ok": False, "silent": True, "error": "no response"}, None),
    ("deploy.prepare", {"ok": False, "error": "disk full"}, None),
    ("deploy.cleanup", {"ok": True, "ret": {"kept": [], "removed": []}}, None),
    ("deploy.mark", {"ok": True, "ret": {"release": "r1", "status": "bad"}}, None),
    # a read-only call says nothing
    ("deploy.current", {"ok": True, "ret": "r2"}, False),
    ("deploy.releases", {"ok": False, "error": "unknown project"}, False),
    ("deploy.info", {"ok": True, "ret": {"name": "r1"}}, False),
])
def test_reported_inventory(fun, res, expected):
    assert store.reported_inventory(fun, res) == expected


def test_record_keeps_the_latest_inventory_per_node_and_forgets_unknown_ones(tmp_path, monkeypatch):
    local = store.get({"deploy_state_dir": str(tmp_path), "cachedir": str(tmp_path)})
    assert local.record_read("rainbow", "pro") == {}
    one = {**INV, "fingerprint": "1111111111111111"}
    local.record_update("rainbow", "pro", {"web-1": INV, "web-2": INV})
    local.record_update("rainbow", "pro", {"web-1": one, "web-2": None})
    assert local.record_read("rainbow", "pro") == {"web-1": one}
    assert local.record_read("rainbow", "stg") == {}  # per env
    (tmp_path / "inventory" / "rainbow_pro.json").write_text("{not json")
    assert local.record_read("rainbow", "pro") == {}  # a damaged record is no record: the nodes get listed
    assert not [p for p in (tmp_path / "inventory").iterdir() if ".tmp" in p.name]


# --- history

def test_history_is_appended_and_read_per_env(tmp_path):
    local = store.LocalStore(str(tmp_path))
    assert local.history_read("rainbow") == []
    local.history_append("rainbow", {"env": "pro", "result": "success"})
    local.history_append("rainbow", {"env": "stg", "result": "failure"})
    with open(tmp_path / "history" / "rainbow.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{torn line\n")
    local.history_append("rainbow", {"env": "pro", "result": "failure"})
    assert [r["result"] for r in local.history_read("rainbow", "pro")] == ["success", "failure"]
    assert [r["env"] for r in local.history_read("rainbow")] == ["pro", "stg", "pro"]
    assert all(r["project"] == "rainbow" for r in local.history_read("rainbow"))
    assert oct(os.stat(tmp_path / "history" / "rainbow.jsonl").st_mode & 0o777) == "0o600"


# --- the lock and the detached list

def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_lock_is_taken_once_and_given_back(tmp_path):
    local = store.LocalStore(str(tmp_path))
    first = local.lock("rainbow", "pro", "release").acquire("20261129000000000001")
    assert first.holder()["jid"] == "20261129000000000001" and first.holder()["pid"] == os.getpid()
    with pytest.raises(DeployError, match=r"rainbow/pro is locked: release by .* \(jid 20261129000000000001, pid "
                                          r"\d+\) since .*; see salt-run deploy.unlock project=rainbow env=pro"):
        local.lock("rainbow", "pro", "rollback (normal)").acquire("2")
    other_env = local.lock("rainbow", "stg", "release").acquire("3")  # envs release side by side
    first.release()
    assert first.holder() is None
    local.lock("rainbow", "pro", "release").acquire("4")
    first.release()  # not the holder any more: leaves the new lock alone
    assert local.lock("rainbow", "pro", "x").holder()["jid"] == "4"
    other_env.release()
    # the lock, and the guard files taken with flock while a lock is taken (kept: they hold nothing)
    assert sorted(os.listdir(tmp_path / "locks")) == ["rainbow_pro.lock", "rainbow_pro.lock.guard",
                                                      "rainbow_stg.lock.guard"]


def test_a_lock_being_written_is_not_taken_over(tmp_path):
    local = store.LocalStore(str(tmp_path))
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "rainbow_pro.lock").write_text("{half")
    with pytest.raises(DeployError, match="rainbow/pro is locked: a lock is being written"):
        local.lock("rainbow", "pro", "release").acquire("1")


def test_a_stale_lock_is_taken_over_and_its_run_recorded_as_interrupted(tmp_path):
    local = store.LocalStore(str(tmp_path))
    dead = {"kind": "release", "user": "alice", "host": "10.0.0.5", "jid": "1", "pid": _dead_pid(), "created": 1.0,
            "since": "2026-11-29T00:00:00+00:00"}
    lock = local.lock("rainbow", "pro", "release")
    assert lock.alive(dead) is False and lock.alive({**dead, "pid": os.getpid()}) is False  # same pid, other start
    (tmp_path / "locks" / "rainbow_pro.lock").write_text(json.dumps(dead))
    lock.set_detached(["web-2", "web-1"])
    lock.acquire("2")
    assert lock.holder()["jid"] == "2"
    assert lock.warnings == ["took over a stale lock of release by alice from 10.0.0.5 (jid 1, pid "
                             f"{dead['pid']}) since 2026-11-29T00:00:00+00:00"]
    (rec,) = local.history_read("rainbow", "pro")
    assert {k: rec[k] for k in ("kind", "result", "user", "host", "jid", "started")} == {
        "kind": "release", "result": "interrupted", "user": "alice", "host": "10.0.0.5", "jid": "1",
        "started": "2026-11-29T00:00:00+00:00"}
    assert lock.detached() == ["web-1", "web-2"]  # what the dead run left out of the LB: the runner restores it
    lock.set_detached([])
    assert lock.detached() == [] and not os.path.exists(lock.detached_path)


def test_an_unknown_store_is_refused(tmp_path):
    with pytest.raises(SaltInvocationError, match="unknown deploy_store 'zookeeper': use one of local"):
        store.get({"deploy_store": "zookeeper", "cachedir": str(tmp_path)})
    assert store.get({"cachedir": str(tmp_path)}).base == os.path.join(str(tmp_path), "deploy")


# --- two runs racing to take over one stale lock

def _race_one(base, barrier, queue):
    local = store.LocalStore(base)
    lock = local.lock("rainbow", "pro", "release")
    barrier.wait()
    try:
        lock.acquire(str(os.getpid()))
        queue.put(("won", os.getpid()))
        barrier.wait()  # hold the lock until every taker has tried
        lock.release()
    except DeployError as exc:
        queue.put(("refused", str(exc)))
        barrier.wait()


def test_takers_racing_for_one_stale_lock_exactly_one_wins(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    takers, rounds = 8, 25
    for round_ in range(rounds):
        base = str(tmp_path / f"r{round_}")
        local = store.LocalStore(base)
        dead = {"kind": "release", "user": "alice", "host": "h", "jid": "0", "pid": _dead_pid(), "created": 1.0,
                "since": "2026-11-29T00:00:00+00:00"}
        (tmp_path / f"r{round_}" / "locks").mkdir(parents=True)
        (tmp_path / f"r{round_}" / "locks" / "rainbow_pro.lock").write_text(json.dumps(dead))
        barrier, queue = ctx.Barrier(takers), ctx.Queue()
        procs = [ctx.Process(target=_race_one, args=(base, barrier, queue)) for _ in range(takers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        results = [queue.get(timeout=5) for _ in procs]
        won = [r for r in results if r[0] == "won"]
        assert len(won) == 1, (round_, results)
        assert all("is locked" in r[1] for r in results if r[0] == "refused"), results
        assert [r["result"] for r in local.history_read("rainbow", "pro")] == ["interrupted"], round_


def test_take_over_leaves_a_lock_that_is_no_longer_the_stale_one(tmp_path):
    local = store.LocalStore(str(tmp_path))
    dead = {"kind": "release", "user": "alice", "jid": "0", "pid": _dead_pid(), "created": 1.0, "since": "x"}
    live = local.lock("rainbow", "pro", "release").acquire("1")  # someone took over meanwhile
    late = local.lock("rainbow", "pro", "unlock")
    assert late.take_over(dead) is False  # what it read as stale is gone: the live lock stays
    assert live.holder()["jid"] == "1" and local.history_read("rainbow") == []


# --- a paused run: the lock outlives the runner process, with the run's state

PAUSED_RUN = r"""
import sys
from deploy_master import store
s = store.get(%r)
lock = s.lock("rainbow", "pro", "release").acquire("20261129000000000007")
lock.pause({"run": "20261129000000000007", "release": "r3", "stage": "gray", "next": 1,
            "switched": {"pre-1": "r2", "web-1": "r2"}})
lock.release()  # what the runner's ending does: a paused lock stays
print("paused", flush=True)
"""


def paused_by_a_process_that_ended(opts):
    """A runner process that takes the lock, pauses and exits (as salt-run does on ``pause: true``)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", PAUSED_RUN % (opts,)], capture_output=True, text=True, cwd=root,
                          check=True)
    assert proc.stdout.strip() == "paused", proc.stderr


def check_the_paused_state(backend):
    """The same for both stores: see test_a_paused_run_keeps_the_lock_after_its_process_ended."""
    view = backend.lock("rainbow", "pro", "unlock")
    held = view.holder()
    assert held["paused"]["run"] == "20261129000000000007" and held["paused"]["switched"]["web-1"] == "r2"
    assert view.alive(held)  # not stale: its process is gone, but a paused run waits for a person
    with pytest.raises(DeployError, match=r"rainbow/pro is locked: paused run 20261129000000000007 \(release r3, "
                                          r"paused after stage gray by .*\): promote or abort it: salt-run "
                                          r"deploy.promote project=rainbow env=pro, or salt-run deploy.abort "):
        backend.lock("rainbow", "pro", "release").acquire("2")
    assert backend.history_read("rainbow") == []  # nothing taken over, nothing interrupted
    # promote (or abort) takes the paused run over: its state, and the lock is now this process's
    promote = backend.lock("rainbow", "pro", "promote")
    state = promote.resume("20261129000000000008")
    assert state["next"] == 1 and state["switched"] == {"pre-1": "r2", "web-1": "r2"}
    held = view.holder()
    assert held["kind"] == "promote" and held["jid"] == "20261129000000000008" and held["pid"] == os.getpid()
    assert not held.get("paused") and held["run"] == "20261129000000000007"
    with pytest.raises(DeployError, match="rainbow/pro is locked: promote by"):
        backend.lock("rainbow", "pro", "abort").resume("3")  # a second promote/abort: refused while it runs
    state["switched"]["web-2"] = "r2"  # the runner goes on with the state it got (its nodes grow)
    promote.release()
    assert view.holder() is None
    with pytest.raises(DeployError, match=r"rainbow/pro has no paused run: nothing to promote or abort"):
        backend.lock("rainbow", "pro", "promote").resume("4")


def test_a_paused_run_keeps_the_lock_after_its_process_ended(tmp_path):
    opts = {"deploy_state_dir": str(tmp_path), "cachedir": str(tmp_path)}
    paused_by_a_process_that_ended(opts)
    check_the_paused_state(store.get(opts))


def test_a_waiting_run_takes_a_request(tmp_path):
    """``pause: N``: the runner waits holding the lock; deploy.promote / deploy.abort leave it a request."""
    check_requests(store.LocalStore(str(tmp_path)))


def check_requests(backend):
    lock = backend.lock("rainbow", "pro", "release").acquire("1")
    try:
        lock.update(waiting={"run": "1", "stage": "gray", "until": "later"})
        assert lock.holder()["waiting"]["stage"] == "gray" and lock.holder()["jid"] == "1"
        assert lock.requested() is None
        other = backend.lock("rainbow", "pro", "promote")
        other.request("promote", "1", "bob")
        assert lock.requested() == {"action": "promote", "run": "1", "by": "bob"}
        assert lock.requested() is None  # taken once
        other.request("promote", "other-run", "bob")  # for another run: ignored, and taken away
        assert lock.requested() is None
        other.request("abort", "1", "bob")
        assert lock.requested()["action"] == "abort"
        lock.update(waiting=None)
        assert "waiting" not in lock.holder()
    finally:
        lock.release()
    assert lock.holder() is None


def test_unlock_force_clears_a_paused_run(tmp_path):
    opts = {"deploy_state_dir": str(tmp_path), "cachedir": str(tmp_path)}
    paused_by_a_process_that_ended(opts)
    backend = store.get(opts)
    view = backend.lock("rainbow", "pro", "unlock")
    assert view.take_over(view.holder()) is True
    assert view.holder() is None
    (rec,) = backend.history_read("rainbow", "pro")
    assert rec["result"] == "interrupted" and rec["jid"] == "20261129000000000007"
