"""prepare's progress while the nodes answer (deploy_master.rollout.distribute), on the one fake Salt: the
returns land one by one on the event bus, the run says how many nodes are ready before the last one
answers, and the final count stays the job cache's."""

from deploy_master.rollout import distribute

from .fakesalt import FakeSalt, make_run


def test_prepare_reports_nodes_as_they_answer(tmp_path, monkeypatch):
    nodes = [f"web-{i}" for i in range(1, 6)]

    def answer(fun, asked, kwarg):
        return {n: ({"ret": {"result": n != "web-3", "error": "disk full"}, "retcode": 0 if n != "web-3" else 1})
                for n in asked}

    salt = FakeSalt(nodes=answer)
    run = make_run(tmp_path, salt, lb=False)
    monkeypatch.setattr(distribute, "PROGRESS_EVERY", 0)  # a line per return
    landed = distribute._as_nodes_answer(run, len(nodes), 12_300_000)  # pylint: disable=protected-access
    out = run.node_call(nodes, "deploy.prepare", {"project": "rainbow"}, landed=landed)
    progress = [data for tag, data in salt.fired if tag == "deploy/rainbow/pro/prepare"]
    assert [(p["ready"], len(p["failed"])) for p in progress] == [(1, 0), (2, 0), (2, 1), (3, 1), (4, 1)]
    assert all(p["done"] is False and p["total"] == 5 for p in progress)
    assert progress[0]["message"] == "prepare: 1/5 nodes ready, 12.3 MB"
    assert progress[-1]["message"] == "prepare: 4/5 nodes ready, 12.3 MB, 1 failed"
    assert sorted(n for n, r in out.items() if not r["ok"]) == ["web-3"]


def test_prepare_progress_is_throttled(tmp_path):
    salt = FakeSalt(nodes=lambda fun, asked, kwarg: {n: {"ret": {"result": True}, "retcode": 0} for n in asked})
    run = make_run(tmp_path, salt, lb=False)
    nodes = [f"web-{i}" for i in range(1, 31)]
    run.node_call(nodes, "deploy.prepare", {}, landed=distribute._as_nodes_answer(run, 30, 1))  # pylint: disable=protected-access
    progress = [data for tag, data in salt.fired if tag == "deploy/rainbow/pro/prepare"]
    assert [p["ready"] for p in progress] == [30]  # within 2 s: only the line of the last answer
