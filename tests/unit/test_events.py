"""The run's one emit function (``Run.emit``): every event carries contract v1's fields (docs/events.md),
and the run posts its notifications itself, from the run, never from the bus."""

import re

import pytest
from deploy_master.rollout import run as runs

COMMON = {"v", "type", "run", "project", "env", "kind", "mode", "release", "user", "by", "at", "elapsed", "message"}


class Bus:
    def __init__(self):
        self.fired = []

    def fire_event(self, data, tag):
        self.fired.append((tag, dict(data)))


class Channel:
    def __init__(self):
        self.lines = []

    def fire_event(self, data, tag):
        self.lines.append(data["message"])


def _run(hooks=(), kind="release", mode="normal"):
    """A real Run without Salt: its bus and progress channel in memory."""
    run = runs.Run.__new__(runs.Run)
    run.opts, run.jid_event, run.event, run.hooks = {}, Channel(), Bus(), list(hooks)
    run.project, run.env, run.kind, run.mode, run.release, run.run_id = "rainbow", "pro", kind, mode, "r2", "2026"
    run.started, run.stage, run.later, run.nodes, run.aborted = 0.0, None, [], {}, None
    return run


def test_every_event_carries_the_contract_fields_and_its_line():
    run = _run()
    run.emit("batch", "stage all batch 1/2: web-1 out of the LB (drained in 0.1s)", stage="all", batch=1, of=2,
             nodes=["web-1"], phase="out", drain_seconds=0.1)
    ((tag, data),) = run.event.fired
    assert tag == "deploy/rainbow/pro/batch"
    assert set(data) >= COMMON and data["v"] == 1 and data["type"] == "batch" and data["run"] == "2026"
    assert data["kind"] == "release" and data["mode"] == "normal" and data["release"] == "r2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", data["at"]) and data["elapsed"] > 0
    assert data["message"].endswith("out of the LB (drained in 0.1s)") and data["phase"] == "out"
    assert run.jid_event.lines[0].endswith("rainbow/pro: " + data["message"])


def test_kind_and_mode_are_the_contracts():
    for (kind, mode), want in {("release", "promote"): ("promote", "normal"), ("release", "abort"): ("abort", "normal"),
                               ("rollback", "emergency"): ("rollback", "emergency")}.items():
        run = _run(kind=kind, mode=mode)
        run.emit("done", "x", result="ok", exit_code=0, seconds=1.0, error=None)
        assert (run.event.fired[0][1]["kind"], run.event.fired[0][1]["mode"]) == want


def test_a_node_event_says_ok_failed_or_skipped():
    run = _run()
    run.stage = "all"
    run.nodes = {"web-1": {"old": "r1", "new": "r2", "result": "ok", "seconds": 1.5},
                 "web-2": {"old": "r1", "result": "failed", "error": "checks failed"},
                 "web-3": {"old": "r1", "result": "refused"}}
    for node in run.nodes:
        run.node_event(node, node)
    got = {d["node"]: (d["result"], d["error"], d["stage"]) for _, d in run.event.fired}
    assert got == {"web-1": ("ok", None, "all"), "web-2": ("failed", "checks failed", "all"),
                   "web-3": ("skipped", None, "all")}


def test_a_signal_handlers_line_now_its_event_at_the_next_check():
    run = _run()
    run.aborted = "SIGTERM"
    run.emit_later("abort", "SIGTERM received", stage="all", by="SIGTERM")
    assert run.jid_event.lines and not run.event.fired
    with pytest.raises(runs.Aborted):
        run.check_abort("before stage all batch 2")
    assert [(t, d["by"]) for t, d in run.event.fired] == [("deploy/rainbow/pro/abort", "SIGTERM")]


def test_the_notifiable_moments_are_posted_by_the_run_the_others_only_fired(monkeypatch):
    posted = []
    monkeypatch.setattr(runs.notify, "send", lambda hooks, tag, data, log=None: posted.append((tag, data["result"])))
    run = _run([{"name": "hook 1", "url": "http://127.0.0.1:9/", "format": "json", "events": ["success"]}])
    run.emit("stage", "stage all done", stage="all", phase="end", result="ok")
    run.emit("done", "release success in 1s", notify_as="success", notify_fields={"result": "success"}, result="ok",
             exit_code=0, seconds=1.0, error=None)
    assert [t for t, _ in run.event.fired] == ["deploy/rainbow/pro/stage", "deploy/rainbow/pro/done"]
    assert run.event.fired[1][1]["result"] == "ok"  # the contract's; the hooks keep the history's word
    assert posted == [("deploy/rainbow/pro/success", "success")]


def test_no_hooks_no_post_and_a_failing_post_never_stops_the_run(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("network")

    monkeypatch.setattr(runs.notify, "send", boom)
    _run().emit("done", "x", notify_as="failure", result="failed")  # no hooks: send is not called
    run = _run([{"name": "hook 1"}])
    run.emit("done", "x", notify_as="failure", result="failed")  # logged, not raised
    assert run.event.fired[0][0] == "deploy/rainbow/pro/done"
