"""The runner's hook for a shared store: a run whose lock was lost stops before the next batch.

Pure logic: ``_stages`` and ``_preprod`` run unchanged; the batch step is recorded instead of
calling Salt.  On real etcd and daemons: tests/unit/test_store_etcd.py, tests/integration/test_two_masters.py.
"""

import pytest
from deploy_master import DeployError
from deploy_master.rollout import batches

from tests.unit import fakes


class Lock:
    def __init__(self, lose_after):
        self.checks, self.lose_after = 0, lose_after

    def check(self):
        self.checks += 1
        if self.checks > self.lose_after:
            raise DeployError("lost the lock of rainbow/pro (its lease expired): stopped")


class Run(fakes.Recorder):
    project, env, max_failures = "rainbow", "pro", 0
    kind, has_lb, envc = "release", False, {}  # no LB: no analysis of live traffic

    def __init__(self, lock):
        self.lock, self.failed, self.log = lock, [], []

    def check_abort(self, where):
        """No signal in these tests (the abort path has its own tests)."""


PLAN = {"stages": [{"name": "all", "batches": [["web-1"], ["web-2"], ["web-3"]]}]}


def test_a_lost_lock_stops_before_the_next_batch(monkeypatch):
    done = []
    monkeypatch.setattr(batches, "batch", lambda run, stage, index, nodes, release, **kw: done.append(nodes) or nodes)
    with pytest.raises(DeployError, match="lost the lock"):
        batches.stages(Run(Lock(lose_after=1)), PLAN, "r2")
    assert done == [["web-1"]]


def test_a_held_lock_goes_through_every_batch(monkeypatch):
    done = []
    monkeypatch.setattr(batches, "batch", lambda run, stage, index, nodes, release, **kw: done.append(nodes) or nodes)
    batches.stages(Run(Lock(lose_after=99)), PLAN, "r2")
    assert done == [["web-1"], ["web-2"], ["web-3"]]


def test_a_lost_lock_stops_before_preprod(monkeypatch):
    monkeypatch.setattr(batches, "switch", lambda *a, **k: pytest.fail("switched without the lock"))
    run = Run(Lock(lose_after=0))
    run.nodes = {}
    with pytest.raises(DeployError, match="lost the lock"):
        batches.preprod(run, {"preprod": "pre-1"}, "r2")
