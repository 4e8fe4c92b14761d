"""deploy_master.notify: hooks, messages, wire formats, the DingTalk signature, delivery (a real loopback sink)."""

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
import urllib.parse
import urllib.request

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
     "rainbow/pro: release success: r2 (by alice, ci:job#3)"),
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


def test_send_posts_once_per_hook_that_wants_the_event(sink, caplog, monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF", 0.01)
    base, got = sink
    hooks = notify.hooks({"notify": [
        {"url": f"{base}/all?token=TOKEN1"},
        {"url": f"{base}/slack", "format": "slack", "events": ["failure"]},
        {"url": f"{base}/fail?token=TOKEN2", "format": "wecom", "name": "wecom-ops"},
    ]})
    out = notify.send(hooks, "deploy/rainbow/pro/success", {"kind": "release", "result": "success", "seconds": 2})
    assert out == {"event": "success", "sent": ["hook 1 (json)"], "failed": {"wecom-ops": "HTTP 500 (after 3 attempts)"}}
    assert [p.split("?")[0] for p, _ in got] == ["/all", "/fail", "/fail", "/fail"]  # a 5xx is tried again
    assert got[0][1]["event"] == "success" and got[0][1]["project"] == "rainbow"
    assert got[1][1] == {"msgtype": "text", "text": {"content": "rainbow/pro: release success in 2s"}}
    assert "TOKEN" not in json.dumps(out) and "TOKEN" not in caplog.text


def test_unreachable_hook_is_reported_without_its_address(monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF", 0.01)
    hooks = notify.hooks({"notify": [{"url": "http://127.0.0.1:9/x?token=TOKEN3"}]})
    out = notify.send(hooks, "deploy/rainbow/pro/start", {})
    assert out["sent"] == [] and "TOKEN3" not in json.dumps(out) and "127.0.0.1" not in json.dumps(out)


@contextlib.contextmanager
def _server(status=200, headers=(), bodies=()):
    """A loopback HTTP server answering every request with ``status`` and ``headers`` (or the next of
    ``bodies``: (status, body) pairs); yields (base, requests)."""
    got, bodies = [], list(bodies)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            got.append((self.command, self.path, self.rfile.read(length)))
            code, answer = bodies.pop(0) if bodies else (status, b"")
            self.send_response(code)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_CONNECT = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_and_is_not_followed(code):
    with _server() as (admin, admin_got):
        open_target = f"{admin}/admin/delete?all=1"
        closed_target = f"http://127.0.0.1:{_closed_port()}/admin/delete"
        errors = []
        for target in (open_target, closed_target):
            with _server(code, [("Location", target)]) as (base, got):
                hooks = notify.hooks({"notify": [{"url": f"{base}/hook?token=TOKEN4", "format": "slack"}]})
                out = notify.send(hooks, "deploy/rainbow/pro/failure", {"result": "failure"})
                assert [m for m, _, _ in got] == ["POST"]
                assert out["sent"] == [] and list(out["failed"]) == ["hook 1 (slack)"]
                errors.append(out["failed"]["hook 1 (slack)"])
        assert admin_got == [], "the master followed the redirect to a loopback address"
    # one text whatever the target: it names neither the address nor whether its port is open
    assert errors[0] == errors[1] == f"HTTP {code}: redirects are not followed"


def test_an_unreachable_and_a_refusing_hook_read_the_same(monkeypatch):
    monkeypatch.setattr(notify, "ATTEMPTS", 1)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))  # bound, never accepts: the POST times out
    listening.listen(0)
    try:
        texts = set()
        for url in (f"http://127.0.0.1:{_closed_port()}/x", f"http://127.0.0.1:{listening.getsockname()[1]}/x"):
            out = notify.send(notify.hooks({"notify": [{"url": url}]}), "deploy/rainbow/pro/start", {}, timeout=0.5)
            texts.add(out["failed"]["hook 1 (json)"])
        assert texts == {"not delivered"}
    finally:
        listening.close()


def test_a_proxy_from_the_environment_is_not_used(sink, monkeypatch):
    base, got = sink
    with _server() as (proxy, proxy_got):
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener reads the environment once
        hooks = notify.hooks({"notify": [{"url": f"{base}/direct"}]})
        out = notify.send(hooks, "deploy/rainbow/pro/start", {})
        assert out["sent"] == ["hook 1 (json)"] and [p for p, _ in got] == ["/direct"]
        assert proxy_got == []


def test_hosts_outside_the_allow_list_get_nothing(sink):
    base, got = sink
    hooks = notify.hooks({"notify": [{"url": f"{base}/x?token=TOKEN5", "name": "ops"}]})
    out = notify.send(hooks, "deploy/rainbow/pro/start", {}, hosts=["hooks.example.com", "*.slack.com"])
    assert out["sent"] == [] and got == []
    assert out["failed"] == {"ops": "host not in deploy_notify_hosts: not sent"}
    assert notify.send(hooks, "deploy/rainbow/pro/start", {}, hosts=["127.0.0.1"])["sent"] == ["ops"]
    assert notify.host_allowed("https://a.slack.com/x", ["*.slack.com"])
    assert not notify.host_allowed("https://slack.com.evil.io/x", ["*.slack.com", "slack.com"])
    assert notify.host_allowed("https://HOOKS.example.com:8443/x", ["hooks.example.com"])


def test_chat_markup_in_a_message_is_escaped(sink):
    base, got = sink
    hooks = notify.hooks({"notify": [{"url": f"{base}/s", "format": "slack"}, {"url": f"{base}/d", "format": "dingtalk"},
                                     {"url": f"{base}/w", "format": "wecom"}]})
    error = "web-1: cmd reload: <!channel> urgent & <https://evil.example/x|the fix> @all [link](https://evil.example)"
    notify.send(hooks, "deploy/rainbow/pro/failure", {"result": "failure", "error": error})
    slack = got[0][1]["text"]
    assert "<" not in slack and ">" not in slack and "&lt;!channel&gt;" in slack and "&amp;" in slack
    for _, body in got[1:]:
        content = body["text"]["content"]
        assert "<" not in content and "@all" not in content and "](" not in content


@pytest.mark.parametrize("fmt, answer, error", [
    ("dingtalk", b'{"errcode": 310000, "errmsg": "sign not match, more: [TOKEN6]"}', "refused by the chat (errcode 310000)"),
    ("wecom", b'{"errcode": 93000, "errmsg": "invalid webhook url"}', "refused by the chat (errcode 93000)"),
    ("dingtalk", b"<html>gateway</html>", "refused by the chat (no errcode)"),
    ("slack", b"no_text", "refused by the chat (no ok)"),
    ("dingtalk", b'{"errcode": 0, "errmsg": "ok"}', None),
    ("wecom", b'{"errcode": 0}', None),
    ("slack", b"ok", None),
    ("json", b"", None),
])
def test_each_chat_says_itself_whether_it_took_the_message(fmt, answer, error):
    with _server(bodies=[(200, answer)]) as (base, got):
        out = notify.send(notify.hooks({"notify": [{"url": f"{base}/h", "format": fmt, "name": "h"}]}),
                          "deploy/rainbow/pro/start", {})
    assert len(got) == 1  # a chat's refusal is its answer: not tried again
    assert out["failed"] == ({"h": error} if error else {}) and out["sent"] == ([] if error else ["h"])
    assert "TOKEN6" not in json.dumps(out)


def test_a_server_error_is_tried_again_with_backoff_and_a_client_error_is_not(monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF", 0.2)
    hook = {"notify": [{"url": "", "format": "wecom", "name": "h"}]}
    with _server(bodies=[(503, b""), (429, b""), (200, b'{"errcode": 0}')]) as (base, got):
        hook["notify"][0]["url"] = f"{base}/h"
        started = time.monotonic()
        out = notify.send(notify.hooks(hook), "deploy/rainbow/pro/start", {})
        took = time.monotonic() - started
    assert out["sent"] == ["h"] and len(got) == 3 and took >= 0.2 + 0.4
    with _server(bodies=[(404, b""), (200, b'{"errcode": 0}')]) as (base, got):
        hook["notify"][0]["url"] = f"{base}/h"
        out = notify.send(notify.hooks(hook), "deploy/rainbow/pro/start", {})
    assert out["failed"] == {"h": "HTTP 404"} and len(got) == 1
