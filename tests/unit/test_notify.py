"""deploy_master.notify: hooks, messages, wire formats, the DingTalk signature, delivery (a real loopback sink)."""

import base64
import hashlib
import hmac
import json
import urllib.parse

import pytest
from salt.exceptions import SaltInvocationError

from deploy_master import config, notify
from tests.webhook_sink import webhook_sink


def test_hooks_defaults_and_validation():
    got = notify.hooks({"notify": [{"url": "https://h.example/x?token=T0K"}]}, "rainbow")
    assert got == [{"url": "https://h.example/x?token=T0K", "format": "json", "events": list(notify.EVENTS),
                    "name": "hook 1 (json)", "secret": None}]
    assert notify.hooks({}, "rainbow") == []


@pytest.mark.parametrize("hook, words", [
    ({"url": "ftp://h/x"}, "url must be an http"),
    ({"url": "https://"}, "url must be an http"),
    ({"url": "https://h/x", "format": "teams"}, "unknown format 'teams'"),
    ({"url": "https://h/x", "events": ["deploy"]}, "events must be a list"),
    ({"url": "https://h/x", "events": []}, "events must be a list"),
    ({"url": "https://h/x", "channel": "#ops"}, "unknown key 'channel'"),
    ("https://h/x", "must be a dict"),
])
def test_bad_hooks_are_refused_naming_the_hook(hook, words):
    with pytest.raises(SaltInvocationError) as err:
        notify.hooks({"notify": [{"url": "https://ok/x"}, hook]}, "rainbow")
    assert "notify hook 2" in str(err.value) and words in str(err.value)


def test_the_project_pillar_validates_its_hooks():
    pillar = {"deploy": {"projects": {"rainbow": {
        "repo": "/r", "root": "/srv/rainbow", "envs": {"pro": {"target": "*"}}, "notify": {"url": "https://h/x"}}}}}
    with pytest.raises(SaltInvocationError, match="notify must be a list"):
        config.project_env(pillar, "rainbow", "pro")


def test_parse_tag():
    assert notify.parse_tag("deploy/rainbow/pro/success") == ("rainbow", "pro", "success")
    assert notify.parse_tag("deploy/rainbow/pro/batch") is None  # not one of the five
    assert notify.parse_tag("salt/job/1/ret/x") is None


def test_message_carries_only_the_listed_fields():
    data = {"project": "rainbow", "env": "pro", "kind": "release", "mode": "normal", "result": "failure",
            "release": "rainbow_pro_v1", "seconds": 3.5, "error": "web-2: check / failed",
            "secret": "S3CRET", "pillar": {"pay_key": "S3CRET"}, "_stamp": "2026-11-29T08:00:00"}
    msg = notify.message("failure", data)
    assert "S3CRET" not in json.dumps(msg)
    assert msg["event"] == "failure" and msg["time"] == "2026-11-29T08:00:00"
    assert msg["text"] == "rainbow/pro: release failure: rainbow_pro_v1 in 3.5s: web-2: check / failed"


@pytest.mark.parametrize("what, data, text", [
    ("start", {"kind": "release", "ref": "v1.2.0"}, "rainbow/pro: release started: v1.2.0"),
    ("start", {"kind": "rollback", "mode": "emergency", "to": "r1"}, "rainbow/pro: emergency rollback started: r1"),
    ("pause", {"kind": "release", "stage": "gray", "release": "r2", "run": "20261129"},
     "rainbow/pro: release paused after stage gray: r2 (run 20261129: salt-run deploy.promote or deploy.abort)"),
    ("rollback", {"kind": "release", "nodes": ["web-1", "web-2"], "reason": "analysis failed"},
     "rainbow/pro: release rolled back 2 node(s) to their previous release after: analysis failed"),
    ("success", {"kind": "release", "result": "success", "release": "r2", "seconds": 9},
     "rainbow/pro: release success: r2 in 9s"),
    ("success", {"kind": "release", "result": "success", "release": "r2", "user": "alice", "by": "ci:job#3"},
     "rainbow/pro: alice (by ci:job#3): release success: r2"),
])
def test_text(what, data, text):
    assert notify.message(what, {"project": "rainbow", "env": "pro", **data})["text"] == text


def test_wire_formats():
    msg = {"event": "success", "text": "rainbow/pro: release success"}
    assert notify.payload("json", msg) is msg
    assert notify.payload("slack", msg) == {"text": msg["text"]}
    for fmt in ("dingtalk", "wecom"):
        assert notify.payload(fmt, msg) == {"msgtype": "text", "text": {"content": msg["text"]}}


def test_dingtalk_signature():
    url = notify.signed_url("https://oapi.dingtalk.com/robot/send?access_token=A", "SECx", now_ms=1700000000000)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    expected = base64.b64encode(hmac.new(b"SECx", b"1700000000000\nSECx", hashlib.sha256).digest()).decode()
    assert query == {"access_token": ["A"], "timestamp": ["1700000000000"], "sign": [expected]}


@pytest.fixture
def sink():
    with webhook_sink() as handle:
        yield handle


def test_send_posts_once_per_hook_that_wants_the_event(sink, caplog):
    base, got = sink
    hooks = notify.hooks({"notify": [
        {"url": f"{base}/all?token=TOKEN1"},
        {"url": f"{base}/slack", "format": "slack", "events": ["failure"]},
        {"url": f"{base}/fail?token=TOKEN2", "format": "wecom", "name": "wecom-ops"},
    ]})
    out = notify.send(hooks, "deploy/rainbow/pro/success", {"kind": "release", "result": "success", "seconds": 2})
    assert out == {"event": "success", "sent": ["hook 1 (json)"], "failed": {"wecom-ops": "HTTP 500"}}
    assert [p.split("?")[0] for p, _ in got] == ["/all", "/fail"]
    assert got[0][1]["event"] == "success" and got[0][1]["project"] == "rainbow"
    assert got[1][1] == {"msgtype": "text", "text": {"content": "rainbow/pro: release success in 2s"}}
    assert "TOKEN" not in json.dumps(out) and "TOKEN" not in caplog.text


def test_unreachable_hook_is_reported_without_its_address():
    hooks = notify.hooks({"notify": [{"url": "http://127.0.0.1:9/x?token=TOKEN3"}]})
    out = notify.send(hooks, "deploy/rainbow/pro/start", {})
    assert out["sent"] == [] and "TOKEN3" not in json.dumps(out) and "127.0.0.1" not in json.dumps(out)
