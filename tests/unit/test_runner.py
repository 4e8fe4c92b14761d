"""The emergency rollback's decisions (``rollout.revert.emergency``) against simulated nodes.

A real Run on the fake Salt (tests/unit/fakesalt.py): ``emergency``, ``switch`` and ``undo`` run
unchanged, the transport included; only the minions are simulated in memory, refusing a switch
whose ``expect`` differs from their fingerprint (the node module's own ``_fingerprint``) just as
the real module does.  The real thing on daemons is in tests/integration/test_rollback.py; here
every branch, including a node that changes again during the retry, is checked for the one
invariant that matters: never a split env.
"""

import copy
import tempfile

import pytest
from saltext_deploy._modules import deploy as node_module
from deploy_master import DeployError
from deploy_master.rollout import revert

from tests.unit.fakesalt import FakeSalt, make_run

NODES = ("pre-1", "web-1", "web-2", "web-3")
# name -> prepared_at: r1 oldest
TIMES = {"r1": 100.0, "r2": 200.0, "r3": 300.0}


def _inv(state):
    releases = [
        {"name": name, "status": status, "prepared_at": TIMES[name], "activated_at": TIMES[name] + 1,
         "current": name == state["current"]}
        for name, status in state["statuses"].items()
    ]
    return {"current": state["current"], "previous": None, "releases": releases,
            "fingerprint": node_module._fingerprint(state["current"], releases)}


class Cluster:
    """Nodes in memory running the deploy module, for the fake Salt (``answer``)."""

    def __init__(self, meddle=None):
        self.state = {n: {"current": "r3", "statuses": {"r1": "good", "r2": "good", "r3": "good"}} for n in NODES}
        self.meddle = meddle or {}  # switch call number -> function(state) run before that call
        self.calls = []
        self.run = None

    @property
    def failed(self):
        return self.run.failed

    def answer(self, fun, nodes, kwarg):
        """What the minions return (``{"ret", "retcode"}``), as ``call`` sees them."""
        out = {}
        for node, res in self.call(nodes, fun, kwarg).items():
            if res["ok"]:
                out[node] = {"ret": res["ret"], "retcode": 0}
            elif "ret" in res:
                out[node] = {"ret": {**res["ret"], "error": res["error"]}, "retcode": 1}
            else:
                out[node] = {"ret": f"ERROR: {res['error']}", "retcode": 1}
        return out

    def call(self, nodes, fun, kwarg=None, timeout=None):
        self.calls.append((fun, tuple(nodes), kwarg.get("release")))
        if fun == "deploy.switch":
            hook = self.meddle.get(sum(1 for c in self.calls if c[0] == fun))
            if hook:
                hook(self.state)
        out = {}
        for node in nodes:
            st = self.state[node]
            if fun == "deploy.releases":
                out[node] = {"ok": True, "ret": _inv(st)}
            elif fun == "deploy.mark":
                st["statuses"][kwarg["release"]] = kwarg["status"]
                out[node] = {"ok": True, "ret": {"inventory": _inv(st)}}
            elif fun == "deploy.switch":
                expect = (kwarg.get("expect") or {}).get(node) or {}
                if kwarg.get("expect") is not None and expect.get("fingerprint") != _inv(st)["fingerprint"]:
                    out[node] = {"ok": False, "error": "refused: changed", "ret": {
                        "result": False, "refused": True, "why": "state", "current": st["current"],
                        "inventory": _inv(st)}}
                    continue
                mine = st["statuses"].get(kwarg["release"])
                if kwarg.get("expect") is not None and (
                        expect.get("release") != kwarg["release"] or expect.get("status") != mine
                        or expect.get("current") != st["current"]
                        or expect.get("current_status") != st["statuses"][st["current"]]):
                    out[node] = {"ok": False, "error": "refused: the record lies", "ret": {
                        "result": False, "refused": True, "why": "target", "current": st["current"],
                        "inventory": _inv(st)}}
                    continue
                if mine == "bad" and not kwarg.get("force"):  # the node module raises
                    out[node] = {"ok": False, "error": f"release {kwarg['release']!r} is marked bad on this node"}
                    continue
                previous, st["current"] = st["current"], kwarg["release"]
                if kwarg.get("mark_left") and previous != kwarg["release"]:
                    st["statuses"][previous] = "bad"
                out[node] = {"ok": True, "ret": {"result": True, "previous": previous, "current": st["current"],
                                                 "steps": [], "seconds": 0.1, "inventory": _inv(st)}}
        return out

    def currents(self):
        return {n: s["current"] for n, s in self.state.items()}

    def switches(self):
        return [c for c in self.calls if c[0] == "deploy.switch"]


def _run(cluster, record, to=None, allow_bad=False):
    """The emergency rollback of a real Run on the fake Salt, with the master's record ``record``
    (None: no record)."""
    run = make_run(tempfile.mkdtemp(), FakeSalt(nodes=cluster.answer), kind="rollback", lb=False, mode="emergency")
    cluster.run = run
    plan = {"nodes": list(NODES)}
    original = revert.known_inventories
    revert.known_inventories = lambda run, nodes: record
    try:
        return revert.emergency(run, plan, to, allow_bad)
    finally:
        revert.known_inventories = original


def _record(cluster):
    return {n: _inv(s) for n, s in copy.deepcopy(cluster.state).items()}


def test_an_accurate_record_is_one_call():
    c = Cluster()
    out = _run(c, _record(c))
    assert out == {"to": "r2", "target_from": "record", "changed_since_record": []}
    assert c.calls == [("deploy.switch", NODES, "r2")]
    assert set(c.currents().values()) == {"r2"}
    assert all(s["statuses"]["r3"] == "bad" for s in c.state.values())


def test_no_record_lists_first():
    c = Cluster()
    out = _run(c, None)
    assert out["target_from"] == "listing" and out["to"] == "r2"
    assert [f for f, _, _ in c.calls] == ["deploy.releases", "deploy.switch"]


def test_a_changed_node_with_the_same_target_follows():
    c = Cluster()
    record = _record(c)
    c.state["web-2"]["statuses"]["r1"] = "prepared"  # by hand, after the last run
    out = _run(c, record)
    assert out["to"] == "r2" and out["changed_since_record"] == ["web-2"]
    assert c.switches() == [("deploy.switch", NODES, "r2"), ("deploy.switch", ("web-2",), "r2")]
    assert set(c.currents().values()) == {"r2"}
    assert c.failed == []


def test_a_changed_node_that_changes_the_target_sends_everyone_to_the_new_one():
    c = Cluster()
    record = _record(c)
    c.state["web-2"]["statuses"]["r2"] = "bad"
    out = _run(c, record)
    assert out["to"] == "r1" and out["changed_since_record"] == ["web-2"]
    assert set(c.currents().values()) == {"r1"}
    # the nodes that had gone to r2 came back to r3 first (status restored), then went to r1
    assert ("deploy.switch", ("pre-1", "web-1", "web-3"), "r3") in c.calls
    assert ("deploy.mark", ("pre-1", "web-1", "web-3"), "r3") in c.calls
    for node, st in c.state.items():
        assert st["statuses"]["r3"] == "bad"  # left by the rollback
        assert st["statuses"]["r2"] == ("bad" if node == "web-2" else "good")
    assert c.failed == []


def test_a_node_changing_again_during_the_retry_leaves_every_node_where_it_was():
    def again(state):
        state["web-1"]["statuses"]["r1"] = "bad"  # someone keeps marking by hand

    c = Cluster(meddle={3: again})
    before = copy.deepcopy(c.state)
    record = _record(c)
    c.state["web-2"]["statuses"]["r2"] = "bad"
    with pytest.raises(DeployError, match="changed during the rollback: every switched node was switched back"):
        _run(c, record)
    assert c.currents() == {n: "r3" for n in NODES}  # nobody moved in the end: no split env
    for node in NODES:
        assert c.state[node]["statuses"]["r3"] == before[node]["statuses"]["r3"] == "good"


def test_a_record_without_a_target_falls_back_to_the_listing():
    c = Cluster()
    record = _record(c)
    for inv in record.values():  # the record says r1 and r2 are bad (stale: fixed by hand since)
        for rel in inv["releases"]:
            rel["status"] = "bad" if rel["name"] != "r3" else "good"
    out = _run(c, record)
    assert out["target_from"] == "listing" and out["to"] == "r2"
    assert set(c.currents().values()) == {"r2"}


def _forge(record, node, release, status):
    """A writer of the store: the node's fingerprint stays (copied from the truth), a status is changed."""
    for rel in record[node]["releases"]:
        if rel["name"] == release:
            rel["status"] = status


def test_a_forged_record_whose_target_a_node_marked_bad_moves_no_node():
    c = Cluster()
    for st in c.state.values():
        st["statuses"]["r2"] = "bad"  # r2 was rolled back from everywhere: the target is r1
    record = _record(c)
    for node in NODES:
        _forge(record, node, "r2", "good")  # the forger makes r2 the target again
    before = copy.deepcopy(c.state)
    with pytest.raises(DeployError, match=r"pre-1, web-1, web-2, web-3 refused the target r2 of the master's "
                                                  r"record.*nothing was changed"):
        _run(c, record)
    assert c.state == before
    assert c.switches() == [("deploy.switch", NODES, "r2")]
    assert sorted(c.failed) == sorted(NODES)


def test_a_forged_record_on_one_node_switches_the_others_back():
    c = Cluster()
    c.state["web-2"]["statuses"]["r2"] = "bad"
    record = _record(c)
    _forge(record, "web-2", "r2", "good")
    before = copy.deepcopy(c.state)
    with pytest.raises(DeployError, match=r"web-2 refused the target r2 .*; pre-1, web-1, web-3 switched back"):
        _run(c, record)
    assert c.currents() == {n: "r3" for n in NODES}  # no split env
    assert c.state == before  # r3 is good again where the rollback had marked it bad


def _bad_r2():
    c = Cluster()
    for st in c.state.values():
        st["statuses"]["r2"] = "bad"
    return c


def test_a_target_the_nodes_marked_bad_needs_allow_bad():
    with pytest.raises(DeployError, match="r2 is marked bad on pre-1, web-1, web-2, web-3: refusing"):
        _run(_bad_r2(), None, to="r2")
    c = _bad_r2()
    out = _run(c, _record(c), "r2", allow_bad=True)
    assert out["to"] == "r2" and set(c.currents().values()) == {"r2"}
    assert c.switches() == [("deploy.switch", NODES, "r2")]


@pytest.mark.parametrize("to,expected", [("r1", "r1"), ("r2", "r2")])
def test_to_is_honoured_from_the_record(to, expected):
    c = Cluster()
    out = _run(c, _record(c), to=to)
    assert out["to"] == expected and out["target_from"] == "record"
    assert set(c.currents().values()) == {expected}


def test_the_runner_loads_without_gitpython_and_only_a_git_build_needs_it(tmp_path):
    probe = r"""
import sys
sys.modules["git"] = None  # gitpython not installed
from saltext_deploy._runners import deploy as runner
assert runner.__virtual__() == "deploy"
from deploy_master import DeployError, source
try:
    source.get("git")({"cachedir": sys.argv[1]}, "rainbow", {"repo": "/srv/git/rainbow.git"}).resolve("master")
except DeployError as exc:
    print(exc)
"""
    out = __import__("subprocess").run([__import__("sys").executable, "-c", probe, str(tmp_path)],
                                       capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("git: a build from git needs the Python package gitpython, which is not installed: "
                           "pip install gitpython into Salt's Python (onedir: salt-pip install gitpython)")


def test_every_public_function_keeps_the_runners_globals():
    """Salt gives a runner call its ``__jid_event__`` (the progress lines), ``__user__`` and ``__jid__`` by
    writing them into the globals of the module's functions: a wrapper defined in another module would
    take them there, and salt-run would print no progress line."""
    import types  # pylint: disable=import-outside-toplevel

    from saltext_deploy._runners import deploy as runner  # pylint: disable=import-outside-toplevel

    runner.__virtual__()
    public = [f for n, f in vars(runner).items() if isinstance(f, types.FunctionType) and not n.startswith("_")]
    assert {f.__name__ for f in public} >= set(runner.__outputter__)
    assert all(f.__globals__ is vars(runner) for f in public), [f.__name__ for f in public
                                                                 if f.__globals__ is not vars(runner)]
