"""A run whose lock was lost (a shared store's lease) stops before the next batch, and before the
pre-production node.  A real Run on the fake Salt; on real etcd and daemons:
tests/unit/test_store_etcd.py, tests/integration/test_two_masters.py.
"""

import pytest
from deploy_master import DeployError
from deploy_master.rollout import batches

from tests.unit.fakesalt import FakeSalt, make_run

PLAN = {"stages": [{"name": "all", "batches": [["web-1"], ["web-2"], ["web-3"]]}]}


def _run(tmp_path, lose_after):
    salt = FakeSalt()
    run = make_run(tmp_path, salt, lb=False)
    checks = []

    def check():
        checks.append(1)
        if len(checks) > lose_after:
            raise DeployError("lost the lock of rainbow/pro (its lease expired): stopped")

    run.lock.check = check
    return run, salt


def test_a_lost_lock_stops_before_the_next_batch(tmp_path):
    run, salt = _run(tmp_path, lose_after=1)
    with pytest.raises(DeployError, match="lost the lock"):
        batches.stages(run, PLAN, "r2")
    assert salt.switches == [["web-1"]]


def test_a_held_lock_goes_through_every_batch(tmp_path):
    run, salt = _run(tmp_path, lose_after=99)
    batches.stages(run, PLAN, "r2")
    assert salt.switches == [["web-1"], ["web-2"], ["web-3"]]


def test_a_lost_lock_stops_before_preprod(tmp_path):
    run, salt = _run(tmp_path, lose_after=0)
    with pytest.raises(DeployError, match="lost the lock"):
        batches.preprod(run, {"preprod": "pre-1"}, "r2")
    assert salt.calls == []  # switched nothing without the lock
