"""Notifications: a run's events (start, pause, success, failure, rollback) posted to webhooks.

The runner's own run posts its five notifiable events (``deploy/<project>/<env>/<what>``) with
:func:`send` to the project's ``notify`` hooks from the master's pillar, one message per hook (never
from an event on the bus: a minion can fire any tag).  This module is the pure part: the hooks' validation, the
message (a fixed set of fields, never the event as a whole), the four wire formats, the
DingTalk signature, and the POST.

Pillar (``deploy:projects:<project>:notify``)::

    notify:
      - url: https://hooks.example.com/deploy      # http(s); may carry a token: never logged or returned
        format: json                               # json (default), slack, dingtalk, wecom
        events: [start, pause, success, failure, rollback]   # default: all five
        name: ops-channel                           # optional, used in logs instead of the URL
      - url: https://oapi.dingtalk.com/robot/send?access_token=...
        format: dingtalk
        secret: SEC...                              # optional: DingTalk's signing secret
"""

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
import urllib.request

from salt.exceptions import SaltInvocationError

from deploy_master import web

EVENTS = ("start", "pause", "success", "failure", "rollback")
FORMATS = ("json", "slack", "dingtalk", "wecom")
# the event fields a message may carry; everything else in an event stays on the bus
FIELDS = ("project", "env", "kind", "mode", "release", "result", "error", "seconds", "ref", "to", "run",
          "stage", "nodes", "reason", "resume", "user", "by")
TIMEOUT = 5  # seconds for one POST
ATTEMPTS = 3  # posts of one message to one hook, at most: again only after no answer, a 5xx or a 429
BACKOFF = 1.0  # seconds before the second attempt, doubled before each further one


def hooks(conf, project="?"):
    """The project's hooks (``notify``), validated; one clear error naming the bad entry."""
    items = conf.get("notify") or []
    if not isinstance(items, list):
        raise SaltInvocationError(f"project {project!r}: notify must be a list of hooks")
    out = []
    for index, hook in enumerate(items, 1):
        where = f"project {project!r}: notify hook {index}"
        if not isinstance(hook, dict):
            raise SaltInvocationError(f"{where} must be a dict with url, format, events")
        url = hook.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https") \
                or not urllib.parse.urlsplit(url).hostname:
            raise SaltInvocationError(f"{where}: url must be an http:// or https:// address")
        fmt = hook.get("format", "json")
        if fmt not in FORMATS:
            raise SaltInvocationError(f"{where}: unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        events = hook.get("events", list(EVENTS))
        if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
            raise SaltInvocationError(f"{where}: events must be a list of {', '.join(EVENTS)}")
        unknown = sorted(set(hook) - {"url", "format", "events", "name", "secret"})
        if unknown:
            raise SaltInvocationError(
                f"{where}: unknown key {unknown[0]!r}: accepted: url, format, events, name, secret")
        name = str(hook.get("name") or f"hook {index} ({fmt})")
        out.append({"url": url, "format": fmt, "events": list(events), "name": name, "secret": hook.get("secret")})
    return out


def parse_tag(tag):
    """``deploy/<project>/<env>/<what>`` -> (project, env, what); None for any other tag."""
    parts = str(tag).split("/")
    if len(parts) != 4 or parts[0] != "deploy" or parts[3] not in EVENTS:
        return None
    return parts[1], parts[2], parts[3]


def message(what, data):
    """The message for one event: the whitelisted fields, and one line of text for people."""
    msg = {"event": what, **{k: data[k] for k in FIELDS if data.get(k) not in (None, "", [], {})}}
    msg["time"] = data.get("_stamp") or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    msg["text"] = text(what, msg)
    return msg


def text(what, msg):
    """``rainbow/pro: release success: <release> in 31.2s``, and the error if any."""
    kind = msg.get("kind", "release")
    if kind == "rollback" and msg.get("mode") == "emergency":
        kind = "emergency rollback"
    head = f"{msg.get('project')}/{msg.get('env')}: "
    release = msg.get("release") or msg.get("to") or msg.get("ref") or ""
    if what == "start":
        line = f"{kind} started" + (f": {release}" if release else "")
    elif what == "pause":
        line = f"{kind} paused after stage {msg.get('stage', '?')}: {release}"
        line += f" (run {msg['run']}: salt-run deploy.promote or deploy.abort)" if msg.get("run") else ""
    elif what == "rollback":
        nodes = msg.get("nodes") or []
        line = f"{kind} rolled back {len(nodes)} node(s) to their previous release"
        line += f" after: {msg['reason']}" if msg.get("reason") else ""
    else:
        line = f"{kind} {msg.get('result', what)}" + (f": {release}" if release else "")
        line += f" in {msg['seconds']}s" if msg.get("seconds") is not None else ""
        line += f": {msg['error']}" if msg.get("error") else ""
    if msg.get("user"):  # who ran it, last: the text's beginning stays what chat filters match
        line += f" (by {msg['user']}" + (f", {msg['by']}" if msg.get("by") else "") + ")"
    return head + line


def payload(fmt, msg):
    """The JSON body of ``msg`` in one of the wire formats."""
    if fmt == "slack":
        return {"text": escape(fmt, msg["text"])}
    if fmt in ("dingtalk", "wecom"):  # both robots take {"msgtype": "text", "text": {"content": ...}}
        return {"msgtype": "text", "text": {"content": escape(fmt, msg["text"])}}
    return msg


# DingTalk and WeCom: what their robots turn into a mention, a link or markup, made inert
_CHAT_INERT = str.maketrans({"<": "\uff1c", ">": "\uff1e", "@": "\uff20", "[": "\uff3b", "]": "\uff3d",
                             "`": "\u02cb", "*": "\u2217", "#": "\uff03"})


def escape(fmt, text):
    """``text`` as plain text in the chat: Slack's control characters (``&``, ``<``, ``>``) as entities,
    so ``<!channel>`` or ``<https://x|label>`` from a release's output neither pings nor links;
    for DingTalk and WeCom, mention, link and markdown characters replaced by look-alikes."""
    if fmt == "slack":
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if fmt in ("dingtalk", "wecom"):
        return text.translate(_CHAT_INERT)
    return text


def signed_url(url, secret, now_ms=None):
    """DingTalk's signed robot address: ``&timestamp=<ms>&sign=<base64 HMAC-SHA256 of "ts\\nsecret">``."""
    stamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest).decode())
    return f"{url}{'&' if '?' in url else '?'}timestamp={stamp}&sign={sign}"




def host_allowed(url, hosts):
    """Whether ``url``'s host is in ``hosts`` (the master's ``deploy_notify_hosts``): an exact name,
    or ``*.example.com`` for any name under example.com; ``hosts`` None or empty allows every host."""
    if not hosts:
        return True
    if isinstance(hosts, str):
        hosts = [hosts]
    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    for entry in hosts:
        entry = str(entry).lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def post(hook, body, timeout=TIMEOUT):
    """POST ``body`` as JSON; returns None on a 2xx, else a short error that never names the URL,
    where a redirect pointed, or why the connection failed (that would tell open ports from closed)."""
    url = hook["url"]
    if hook["format"] == "dingtalk" and hook.get("secret"):
        url = signed_url(url, str(hook["secret"]))
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "salt-deploy"},
    )
    try:
        with web.OPENER.open(request, timeout=timeout) as response:  # nosec: the pillar's own address
            answer = response.read(65536)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            return f"HTTP {exc.code}: redirects are not followed"
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError):
        return "not delivered"
    return accepted(hook["format"], answer)


def accepted(fmt, answer):
    """None when the chat says it took the message (a 2xx alone is not enough for a chat: DingTalk and
    WeCom answer ``{"errcode": 0}``, Slack ``ok``), else why not: its code, never its text."""
    if fmt == "json":
        return None
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if fmt == "slack":
        if answer.strip() == b"ok" or (isinstance(data, dict) and data.get("ok") is True):
            return None
        return "refused by the chat (no ok)"
    code = data.get("errcode") if isinstance(data, dict) else None
    if code == 0 and not isinstance(code, bool):
        return None
    if isinstance(code, int) and not isinstance(code, bool):
        return f"refused by the chat (errcode {code})"
    return "refused by the chat (no errcode)"


def _again(error):
    """Whether a failed post may succeed if tried again: no answer, a server error, too many requests."""
    return error == "not delivered" or error == "HTTP 429" or error.startswith("HTTP 5")


def deliver(hook, body, timeout=TIMEOUT, attempts=None):
    """:func:`post`, again after :data:`BACKOFF`, 2 × that… while the failure may pass, at most ``attempts``
    times; returns None or the last error (``(after N attempts)`` added when there were several)."""
    pause, attempts = BACKOFF, attempts or ATTEMPTS
    for attempt in range(1, attempts + 1):
        error = post(hook, body, timeout)
        if error is None or not _again(error) or attempt == attempts:
            break
        time.sleep(pause)
        pause *= 2
    if error and attempt > 1:
        error = f"{error} (after {attempt} attempts)"
    return error


def send(hooks_, tag, data, log=None, hosts=None, timeout=TIMEOUT):
    """Post the event to every hook that wants it: ``{"event", "sent": [names], "failed": {name: error}}``.

    ``hosts``: the master's ``deploy_notify_hosts``; a hook whose host is not in it gets nothing."""
    parsed = parse_tag(tag)
    if not parsed:
        return {"event": None, "sent": [], "failed": {}}
    what = parsed[2]
    msg = message(what, {**data, "project": parsed[0], "env": parsed[1]})
    sent, failed = [], {}
    for hook in hooks_:
        if what not in hook["events"]:
            continue
        if host_allowed(hook["url"], hosts):
            error = deliver(hook, payload(hook["format"], msg), timeout)
        else:
            error = "host not in deploy_notify_hosts: not sent"
        if error:
            failed[hook["name"]] = error
            if log:
                log.warning("deploy: notification %s of %s to %s failed: %s", what, tag, hook["name"], error)
        else:
            sent.append(hook["name"])
    return {"event": what, "sent": sent, "failed": failed}
