"""
A failing step's output stays on the node: a restart command of the release prints the rendered
config (the project's secret) and chat markup, fails, and the node is switched back.  Beyond the
node only the step's name, its exit code and a short redacted tail travel: the secret is in no
runner output, return, event, history record, webhook payload or log; the markup reaches the chat
escaped; the minion's own log has the (redacted) output in full.

Uses the session cluster (``clean_cluster``), a webhook sink and an event listener per test.
"""

import json
import time

import pytest

from sandbox import repo as sample_repo

from .conftest import SECRETS
from .test_release import history
from tests.webhook_sink import webhook_sink

_VERSION = [27, 0]  # a major version of its own: tags are shared by every module of the session
MARKUP = "<!channel> urgent & <https://evil.example/x|the fix>"
NODE = "pre-1"


def new_version(cluster, **kwargs):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(cluster.repo, tag, **kwargs)
    return tag


@pytest.fixture
def sink():
    with webhook_sink() as handle:
        yield handle


def test_a_failing_restart_printing_the_secret_and_markup_leaks_neither(clean_cluster, sink, event_listener):
    c = clean_cluster
    base, got = sink
    started = time.time()
    if None in c.currents().values():  # a served release for pre-1 to be switched back to
        new_version(c)
        first = c.run("deploy.release", project="rainbow", env="pro")
        assert first.returncode == 0, first.stdout[-2000:]
    loud = (f"echo 'reload failed:' >&2; cat config/app.ini >&2; echo '{MARKUP}' >&2; "
            "grep sms_key config/app.ini >&2; exit 3")
    c.set_pillar(node_extra={NODE: {"restart": [{"cmd": loud, "name": "reload"}]}}, project_extra={"notify": [
        {"url": f"{base}/slack", "format": "slack", "events": ["failure"]},
        {"url": f"{base}/ding", "format": "dingtalk", "events": ["failure"]},
        {"url": f"{base}/json", "events": ["failure"]},
    ]})
    before = c.currents()
    hist_before = len(history(c))
    new_version(c)
    try:
        ret = c.run("deploy.release", project="rainbow", env="pro")
        assert ret.returncode != 0, ret.stdout[-2000:]
        assert "cmd reload" in ret.stdout, ret.stdout[-3000:]
        assert c.currents() == before  # pre-1 switched back, nothing else touched
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(p for p, _ in got) == ["/ding", "/json", "/slack"], got
        # the node's own answer: step name, exit code, a redacted tail of at most 200 characters
        node = c.call(NODE, "deploy.restart", "rainbow")
        step = node.data["steps"][0] if "steps" in (node.data or {}) else node.data[0]
        assert step["step"] == "cmd reload" and step["retcode"] == 3 and step["result"] is False, node.data
        assert len(step["output"]) <= 200 and "[redacted]" in step["output"] and MARKUP in step["output"], step
        secrets = list(SECRETS.values())
        outputs = {"runner stdout": ret.stdout + ret.stderr, "node return": node.stdout + node.stderr,
                   "webhooks": json.dumps([b for _, b in got]),
                   "history": json.dumps(history(c)[hist_before:])}
        events = event_listener.get_events([(c.master.id, "*")], after_time=started)
        assert events
        outputs["events"] = json.dumps([e.full_data for e in events], default=str)
        for log_file in [c.master.config["log_file"]] + [m.config["log_file"] for m in c.minions.values()]:
            with open(log_file, encoding="utf-8", errors="replace") as fh:
                outputs[log_file] = fh.read()
        leaks = sorted(where for where, text in outputs.items() for s in secrets if s in text)
        assert leaks == [], leaks
        # the markup reaches each chat inert
        slack = next(b for p, b in got if p == "/slack")["text"]
        assert "<" not in slack and ">" not in slack and "&lt;!channel&gt;" in slack, slack
        ding = next(b for p, b in got if p == "/ding")["text"]["content"]
        assert "<" not in ding and "urgent" in ding, ding
        # the node's own log has the whole (redacted) output: the first line as well as the last
        with open(c.minions[NODE].config["log_file"], encoding="utf-8", errors="replace") as fh:
            node_log = fh.read()
        assert "reload failed:" in node_log and MARKUP in node_log and "[redacted]" in node_log
    finally:
        new_version(c)
        c.set_pillar()
