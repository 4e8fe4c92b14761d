"""The runner posts its run's notifications itself (``_Run.fire``), from the run, never from the bus."""

from deploy_master.rollout import run as runs


class Bus:
    def __init__(self):
        self.fired = []

    def fire_event(self, data, tag):
        self.fired.append((tag, dict(data)))


class Run:
    project, env, kind, mode, release = "rainbow", "pro", "release", "normal", "rainbow_pro_v1"

    def __init__(self, hooks):
        self.event = Bus()
        self.hooks = hooks


def test_the_five_notifiable_events_are_posted_by_the_run_the_others_only_fired(monkeypatch):
    posted = []
    monkeypatch.setattr(runs.notify, "send", lambda hooks, tag, data, log=None: posted.append((tag, data["result"])))
    run = Run([{"name": "hook 1", "url": "http://127.0.0.1:9/", "format": "json", "events": ["success"]}])
    runs.Run.fire(run, "step", result="x")
    runs.Run.fire(run, "success", result="success")
    assert [t for t, _ in run.event.fired] == ["deploy/rainbow/pro/step", "deploy/rainbow/pro/success"]
    assert posted == [("deploy/rainbow/pro/success", "success")]


def test_no_hooks_no_post_and_a_failing_post_never_stops_the_run(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("network")

    monkeypatch.setattr(runs.notify, "send", boom)
    runs.Run.fire(Run([]), "failure", result="failure")  # no hooks: send is not called
    run = Run([{"name": "hook 1"}])
    runs.Run.fire(run, "failure", result="failure")  # logged, not raised
    assert run.event.fired[0][0] == "deploy/rainbow/pro/failure"
