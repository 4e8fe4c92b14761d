"""
The web console (console/) on a real salt-api, driven in headless Chromium by Playwright.

One salt-api for the module, on the session's master (rest_cherrypy with the console as its
``app``/``static``, ``file`` eauth with an operator and a read-only viewer; see
sandbox/console.py).  Screenshots of each page go to artifacts/console/ (gitignored).

Builds nothing else: salt-api (on the session master) and Chromium start once for the module,
because only these tests need them.
"""

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import salt.payload
import salt.utils.event

from sandbox import console
from sandbox import repo as sample_repo

from .conftest import CONSOLE_USERS, NODES, SECRETS

from playwright import sync_api  # noqa: E402  (the tests extra installs it: no skip)

pytestmark = pytest.mark.slow  # salt-api and Chromium, real releases: minutes

CHROMIUM = "/usr/bin/chromium"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO_ROOT, "artifacts", "console")
RUN_TIMEOUT = 120_000  # ms: a release or rollback on the test cluster takes 10-30 s
# a commit whose subject is markup, and a committer whose name is an HTML entity (git strips < and >)
XSS_SUBJECT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> fix'
XSS_COMMITTER = "Eve &lt;b&gt; O'Hara"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def api(cluster):
    """salt-api on loopback with the console; yields its base URL."""
    cluster.set_pillar()
    for lock in ("rainbow_pro.lock", "rainbow_pro.detached.json"):
        path = os.path.join(cluster.state_dir, "locks", lock)
        if os.path.exists(path):
            os.unlink(path)
    daemon = cluster.master.salt_api_daemon()
    with daemon.started(start_timeout=90):
        base = f"http://127.0.0.1:{cluster.api_port}"
        assert console.wait_api("127.0.0.1", cluster.api_port, timeout=30)
        yield base
        # salt-api stops only once each /events stream it served sees one more event (its thread waits in
        # the bus): the browser is closed by now, so one event ends those threads
        opts = cluster.master.config
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            bus.fire_event({}, "salt-deploy/tests/console-done")
        time.sleep(1)


@pytest.fixture(scope="module")
def browser():
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


# --------------------------------------------------------------------------- helpers


def request(base, method, path, body=None, token=None):
    """(status, parsed JSON or text) of one request to salt-api."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def api_login(base, user):
    status, data = request(base, "POST", "/login", {"username": user, "password": CONSOLE_USERS[user], "eauth": "file"})
    assert status == 200, data
    return data["return"][0]["token"]


def run_as(base, token, fun, client="runner", **kwarg):
    return request(base, "POST", "/", [{"client": client, "fun": fun, "kwarg": kwarg}], token=token)


def shot(page, name):
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def no_secrets(text, where):
    for key, value in SECRETS.items():
        assert value not in text, f"secret {key} appears in {where}"


def open_console(context, base, user, password=None):
    page = context.new_page()
    page.goto(f"{base}{console.APP_PATH}")
    page.fill("#login-user", user)
    page.fill("#login-password", password if password is not None else CONSOLE_USERS[user])
    page.click("#login-submit")
    return page


def wait_nodes(page):
    """The node table of rainbow/pro lists every node."""
    page.wait_for_function(f"() => document.querySelectorAll('#nodes tbody tr').length === {len(NODES)}", timeout=60_000)


def node_currents(page):
    return page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.cells[1].firstChild.textContent)")


def push_branch(cluster, branch, subject, committer):
    """A commit on top of master with this subject and committer, pushed as ``branch``."""
    st = os.stat(cluster.repo)
    env = {**sample_repo._git_env(), "GIT_COMMITTER_NAME": committer, "GIT_AUTHOR_NAME": committer}
    with tempfile.TemporaryDirectory(prefix="dpl-x-") as tmp:
        work = os.path.join(tmp, "w")

        def git(*a):
            return subprocess.run(["git", *a], cwd=tmp if a[0] == "clone" else work, env=env, check=True,
                                  capture_output=True)

        git("clone", "-q", "--branch", "master", cluster.repo, work)
        git("commit", "-q", "--allow-empty", "-m", subject)
        git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}")
    sample_repo._fix_tree(cluster.repo, st.st_uid, st.st_gid)


class EventTap:
    """Reads salt-api's /events (as the page does) in a thread and keeps the raw text."""

    def __init__(self, base, token):
        self.base, self.token = base, token
        self.chunks = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        host, port = self.base.rsplit("/", 1)[-1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port))
        self.conn.request("GET", "/events", headers={"X-Auth-Token": self.token, "Accept": "text/event-stream"})
        resp = self.conn.getresponse()
        while not self.stop.is_set():
            try:
                line = resp.readline()
            except (OSError, ValueError, http.client.HTTPException):
                break
            if not line:
                break
            self.chunks.append(line.decode(errors="replace"))

    @property
    def text(self):
        return "".join(self.chunks)

    def close(self):
        self.stop.set()
        with contextlib.suppress(OSError, AttributeError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)


def wait_run(page):
    """Wait for the live view's run to end; True on success.  A run that failed only because a
    live minion did not answer in time (this 2-core machine under load) is False, to retry; any
    other failure fails the test."""
    page.wait_for_selector("#live-state.success, #live-state.failure", timeout=RUN_TIMEOUT)
    if page.is_visible("#live-state.success"):
        return True
    log = page.text_content("#live-log")
    assert "no response" in log or "did not return" in log, log
    return False


def run_via_ui(page, start, attempts=2):
    """``start(page)`` starts a release or rollback; wait for its success, retrying a run that failed
    only on silent minions."""
    for _ in range(attempts):
        start(page)
        page.wait_for_selector("#live-state.running", timeout=60_000)
        if wait_run(page):
            return
    raise AssertionError("the run failed twice on minions that did not answer in time")


def preview(page, ref):
    """Select ``ref``, preview its plan (test=True); returns the release name."""
    page.select_option("#ref", ref)
    page.click("#preview")
    page.wait_for_selector("#plan:not([hidden])", timeout=60_000)
    return page.text_content("#plan-release")


def release_via_ui(page, ref):
    def start(page):
        preview(page, ref)
        page.click("#confirm-release")
    run_via_ui(page, start)


# --------------------------------------------------------------------------- tests


def test_headers_forbid_framing(api, context):
    """The console and the API answer with the anti-framing headers (HTTP headers: a <meta> policy cannot
    forbid framing), and another site's Origin gets no CORS answer."""
    host, port = api.rsplit("/", 1)[-1].split(":")
    for path in (console.APP_PATH, f"{console.STATIC_PATH}/app.js", "/"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path, headers={"Accept": "text/html", "Origin": "https://evil.example"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200, (path, resp.status)
        assert resp.getheader("X-Frame-Options") == "DENY", path
        assert resp.getheader("Content-Security-Policy") == "frame-ancestors 'none'", path
        assert resp.getheader("Access-Control-Allow-Origin") is None, path
        assert resp.getheader("Access-Control-Allow-Credentials") is None, path
    # a page of another origin that frames the console gets an empty frame
    page = context.new_page()
    page.route("https://framer.example/", lambda route: route.fulfill(
        content_type="text/html", body=f'<iframe id="f" src="{api}{console.APP_PATH}"></iframe>'))
    page.goto("https://framer.example/")
    frame = page.frame_locator("#f")
    assert frame.locator("#login-form").count() == 0


def test_wrong_password_is_refused_without_detail(api, context):
    unknown = request(api, "POST", "/login", {"username": "nobody", "password": "x", "eauth": "file"})
    wrong = request(api, "POST", "/login", {"username": "operator", "password": "wrong", "eauth": "file"})
    assert unknown[0] == wrong[0] == 401
    assert unknown[1] == wrong[1]  # the same answer: nothing says which part was wrong
    page = open_console(context, api, "operator", password="wrong")
    page.wait_for_selector("#login-error:has-text('Login failed.')")
    assert page.text_content("#login-error") == "Login failed."
    assert page.is_hidden("#app")
    shot(page, "01-login-refused")


def test_operator_releases_watches_and_rolls_back(api, cluster, context):
    push_branch(cluster, "console-xss", XSS_SUBJECT, XSS_COMMITTER)
    tap = EventTap(api, api_login(api, "operator"))
    try:
        page = open_console(context, api, "operator")
        wait_nodes(page)
        page.wait_for_selector("#ref option", state="attached")
        assert page.text_content("#lock") == "unlocked"
        shot(page, "02-nodes")

        # release 1: the env's branch, previewed first (test=True), then confirmed
        page.select_option("#ref", "master")
        before = cluster.currents()
        page.click("#preview")
        page.wait_for_selector("#plan:not([hidden])", timeout=60_000)
        release1 = page.text_content("#plan-release")
        assert release1.startswith("rainbow_pro_")
        plan = page.eval_on_selector_all("#plan-lines li", "items => items.map(i => i.textContent)")
        assert plan[0].startswith("preprod: pre-1") and any("web-1" in line for line in plan), plan
        shot(page, "03-plan")
        assert cluster.currents() == before  # a preview changes nothing
        page.click("#confirm-release")
        page.wait_for_selector("#live-state.running", timeout=60_000)
        if not wait_run(page):
            release_via_ui(page, "master")
        live = page.text_content("#live")
        assert page.eval_on_selector_all("#live-nodes tbody tr.ok", "rows => rows.length") == len(NODES), live
        # every node's release from the events' fields
        shown = page.eval_on_selector_all("#live-nodes tbody tr", "rows => rows.map(r => r.cells[3].textContent)")
        assert all(release1 in text for text in shown), live
        shot(page, "04-live-success")
        assert cluster.currents() == {n: release1 for n in NODES}

        # the commit with markup in its subject: offered as text in the ref chooser
        page.click("#refresh")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#ref option')].some(o => o.value === 'console-xss')")
        page.select_option("#ref", "console-xss")
        assert XSS_SUBJECT in page.text_content("#ref-info")

        # release 2 of that commit; a second tab opened during the run shows the same live run
        page.click("#preview")
        page.wait_for_selector("#plan:not([hidden])", timeout=60_000)
        release2 = page.text_content("#plan-release")
        page.click("#confirm-release")
        page.wait_for_selector("#live-state.running")
        second = open_console(context, api, "operator")
        second.wait_for_selector("#live:not([hidden])", timeout=30_000)
        if not wait_run(page):  # retried in the first tab only
            second.wait_for_selector("#live-state.failure", timeout=RUN_TIMEOUT)
            release_via_ui(page, "console-xss")
        else:
            assert wait_run(second)
        assert second.eval_on_selector_all("#live-nodes tbody tr.ok", "rows => rows.length") >= 1
        shot(second, "05-second-tab")
        second.close()
        page.wait_for_function(f"() => document.querySelector('#nodes tbody tr td:nth-child(2)')?.textContent"
                               f"?.startsWith({json.dumps(release2)})", timeout=60_000)
        committers = page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.cells[3].textContent)")
        assert committers == [XSS_COMMITTER] * len(NODES)  # the entity shown as typed, not decoded
        assert page.evaluate("window.__xss") is None  # no markup from the repository ever ran
        assert page.locator("#nodes b, #ref-info img, #ref-info script").count() == 0

        # history and chart
        page.wait_for_function("() => document.querySelectorAll('#history tbody tr').length >= 2")
        rows = page.eval_on_selector_all("#history tbody tr", "rows => rows.map(r => [r.cells[4].textContent, r.cells[5].textContent])")
        assert rows[0] == [release2, "success"] and [release1, "success"] in rows, rows
        # the person recorded is the console's user (salt-api's eauth user), not the master's root
        people = page.eval_on_selector_all("#history tbody tr", "rows => rows.slice(0, 2).map(r => r.cells[2].textContent)")
        assert all(p.startswith("operator@") for p in people), people
        bars = page.eval_on_selector_all("#stats-chart rect.bar[data-series='release success']",
                                         "rects => rects.reduce((n, r) => n + Number(r.dataset.count || 0), 0)")
        assert bars >= 2
        assert re.match(r"releases: [1-9][0-9]* succeeded", page.text_content("#stats-totals"))
        shot(page, "06-history-chart")

        # roll back: the confirmation names the target, the live view follows it
        page.wait_for_function(f"() => document.querySelector('#rollback-target').textContent === {json.dumps(release1)}")
        page.click("#rollback")
        page.wait_for_selector("#confirm[open]", timeout=60_000)
        assert release1 in page.text_content("#confirm-text")
        shot(page, "07-rollback-confirm")
        page.click("#confirm-ok")
        page.wait_for_function("() => document.querySelector('#live-title').textContent.startsWith('rollback')")
        if not wait_run(page):
            def again(page):
                page.click("#rollback")
                page.wait_for_selector("#confirm[open]", timeout=60_000)
                page.click("#confirm-ok")
            run_via_ui(page, again, attempts=1)
        assert cluster.currents() == {n: release1 for n in NODES}
        page.wait_for_function(f"() => document.querySelector('#nodes tbody tr td:nth-child(2)')?.textContent"
                               f"?.startsWith({json.dumps(release1)})", timeout=60_000)
        shot(page, "08-rolled-back")
        no_secrets(page.content(), "the page")
    finally:
        tap.close()
    events = tap.text
    assert "deploy/rainbow/pro/done" in events and "deploy/rainbow/pro/node" in events
    no_secrets(events, "the event stream")


def test_viewer_sees_but_the_server_refuses_changes(api, context):
    page = open_console(context, api, "viewer")
    wait_nodes(page)
    page.wait_for_selector("#history tbody tr")
    page.click("#preview")  # the buttons are there; the server says no
    page.wait_for_selector("#notice.error", timeout=30_000)
    assert "refused by the server: viewer may not run deploy.release" in page.text_content("#notice")
    page.click("#rollback")
    page.wait_for_selector("#notice.error:has-text('deploy.rollback')", timeout=30_000)
    assert page.query_selector("#confirm[open]") is None  # refused before any confirmation
    assert page.is_visible("#app")  # still logged in: a refusal is not an expired session
    shot(page, "09-viewer-refused")
    no_secrets(page.content(), "the viewer's page")

    token = api_login(api, "viewer")
    for fun, kwarg in [("deploy.release", {}), ("deploy.rollback", {"emergency": True}),
                       ("deploy.unlock", {}), ("deploy.unlock", {"force": True})]:
        for client in ("runner", "runner_async"):
            status, _ = run_as(api, token, fun, client=client, project="rainbow", env="pro", **kwarg)
            assert status in (401, 403), (fun, client, status)
    status, data = run_as(api, token, "deploy.history", project="rainbow", env="pro", limit=1)
    assert status == 200 and isinstance(data["return"][0], list)
    status, data = run_as(api, token, "deploy.changes", project="rainbow", env="pro", ref="master")
    assert status == 200 and data["return"][0]["groups"], data


def test_operator_may_run_nothing_but_deploy(api):
    token = api_login(api, "operator")
    for low in [{"client": "runner", "fun": "test.arg", "kwarg": {}},
                {"client": "runner", "fun": "pillar.show_pillar", "kwarg": {}},
                {"client": "runner_async", "fun": "jobs.list_jobs", "kwarg": {}},
                {"client": "local", "tgt": "*", "fun": "pillar.items"},
                {"client": "wheel", "fun": "key.list_all"}]:
        status, data = request(api, "POST", "/", [low], token=token)
        assert status in (400, 401, 403), (low, status, data)
        no_secrets(json.dumps(data), f"the answer to {low}")
    assert run_as(api, token, "deploy.stats", project="rainbow")[0] == 200


def test_expired_token_goes_back_to_login(api, cluster, context):
    page = open_console(context, api, "operator")
    wait_nodes(page)
    # expire every token of the operator on the master (as time would)
    tokens = cluster.master.config.get("token_dir") or os.path.join(cluster.master.config["cachedir"], "tokens")
    expired = 0
    for name in os.listdir(tokens):
        path = os.path.join(tokens, name)
        with open(path, "rb") as fh:
            data = salt.payload.load(fh)
        tdata = data.get("data", data)  # Salt 3008 keeps {"data": token, "_expires": ...}
        if tdata.get("name") == "operator":
            tdata["expire"] = time.time() - 1
            if "_expires" in data:
                data["_expires"] = int(time.time()) - 1
            with open(path, "wb") as fh:
                salt.payload.dump(data, fh)
            expired += 1
    assert expired, f"no token of the operator in {tokens}"
    page.click("#refresh")
    page.wait_for_selector("#login-page:not([hidden])", timeout=30_000)
    assert "expired" in page.text_content("#login-error")
    assert page.is_hidden("#app")
    shot(page, "10-expired")


def stale_lock(cluster):
    """A lock whose run is gone (its pid does not exist); returns its path."""
    locks = os.path.join(cluster.state_dir, "locks")
    os.makedirs(locks, exist_ok=True)
    stale = {"kind": "release", "user": "alice", "host": "10.0.0.5", "jid": "20260101000000000000",
             "pid": 999_999_99, "created": 0, "since": "2026-01-01T00:00:00+00:00"}
    path = os.path.join(locks, "rainbow_pro.lock")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(stale, fh)
    return path


def test_viewer_may_only_show_the_lock(api, cluster):
    """The viewer's ACL names read-only functions only: deploy.lock_status shows the lock, deploy.unlock
    is refused whatever its arguments."""
    lock = stale_lock(cluster)
    token = api_login(api, "viewer")

    def call(fun, kwarg):
        return request(api, "POST", "/", [{"client": "runner", "fun": fun,
                                           "kwarg": {"project": "rainbow", "env": "pro", **kwarg}}], token=token)

    status, data = call("deploy.lock_status", {})
    assert status == 200 and data["return"][0]["locked"] is True and data["return"][0]["alive"] is False
    for kwarg in ({}, {"force": True}, {"show": True}, {"kwarg": {"show": True}}, {"force": True, "kwarg": {"show": True}}):
        assert call("deploy.unlock", kwarg)[0] == 401, kwarg
    assert os.path.exists(lock)  # nothing cleared it
    os.unlink(lock)


def test_views_for_the_console(cluster):
    views = cluster.run("deploy.projects")
    assert views.returncode == 0, views.stdout
    assert views.data["rainbow"]["envs"]["pro"]["branch"] == "master"
    refs = cluster.run("deploy.refs", project="rainbow")
    assert refs.returncode == 0, refs.stdout
    assert "master" in [b["name"] for b in refs.data["branches"]]
    assert {"v1.0.0", "v1.1.0"} <= {t["name"] for t in refs.data["tags"]}
    assert all(len(r["commit"]) == 40 and r["subject"] for r in refs.data["tags"])
    bad = cluster.run("deploy.refs", project="no/such")
    assert bad.returncode == 2 and "invalid project name" in bad.stdout
    # what a release of v1.0.0 would change: every node in one group or more, key names only
    changes = cluster.run("deploy.changes", project="rainbow", env="pro", ref="v1.0.0")
    assert changes.returncode == 0, changes.stdout
    assert sorted(n for g in changes.data["groups"] for n in g["nodes"]) == sorted(NODES)
    no_secrets(changes.stdout, "deploy.changes")
    unknown = cluster.run("deploy.changes", project="rainbow", env="pro", ref="no-such-ref")
    assert unknown.returncode == 2 and "unknown ref" in unknown.stdout


def test_stale_lock_shown_and_cleared(api, cluster, context):
    lock = stale_lock(cluster)
    page = open_console(context, api, "operator")
    page.wait_for_selector("#lock.stale")
    assert "release by alice from 10.0.0.5" in page.text_content("#lock")
    shot(page, "11-stale-lock")
    page.click("#unlock")
    page.wait_for_selector("#lock.free", timeout=60_000)
    assert not os.path.exists(lock)
    assert "cleared" in page.text_content("#notice")


# --------------------------------------------------------------------------- approvals: a paused release

_PAUSE_VERSION = [17, 0]  # a major version of its own: tags are shared by every module of the session


def paused_pillar(cluster):
    """rainbow/pro in two stages, gray (web-1) then the rest, with ``pause: true`` after gray."""
    stages = [{"name": "gray", "target": "G@region:east", "batch": 1, "pause": True}, {"name": "all", "batch": 1}]
    cluster.set_pillar(project_extra={"envs": {"pro": {"stages": stages}}})


def new_tag(cluster):
    _PAUSE_VERSION[1] += 1
    tag = f"v{_PAUSE_VERSION[0]}.{_PAUSE_VERSION[1]}.0"
    sample_repo.add_release(cluster.repo, tag)
    return tag


def one_release(cluster):
    """Every node on one release (the 'before' of a paused release)."""
    if len(set(cluster.currents().values())) != 1 or None in cluster.currents().values():
        new_tag(cluster)
        assert cluster.run("deploy.release", project="rainbow", env="pro").returncode == 0


def release_from_the_page(page, tag, until, before_confirm=None):
    """Release ``tag`` from the page (``before_confirm(page)``: checks of the preview) and wait until the
    live view's state is ``until``: returns the release name.  Only a silent minion (this machine under
    load) is retried, once."""
    wait_nodes(page)
    page.click("#refresh")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#ref option')].some(o => o.value === {json.dumps(tag)})")
    for attempt in range(2):
        release = preview(page, tag)
        if before_confirm:
            before_confirm(page)
        page.click("#confirm-release")
        page.wait_for_selector("#live-state.running", timeout=60_000)
        page.wait_for_selector(f"#live-state.{until}, #live-state.failure", timeout=RUN_TIMEOUT)
        if page.is_visible(f"#live-state.{until}"):
            return release
        log = page.text_content("#live-log")
        assert attempt == 0 and ("no response" in log or "did not return" in log), log
    return None


def _one_group_of_changes(page):
    # what changes: the nodes on one commit, the commit(s) the tag brings
    page.wait_for_selector("#plan-changes .changes-group ul.commits li")
    assert page.locator("#plan-changes .changes-group").count() == 1


def pause_from_the_page(page, cluster, tag):
    """Release ``tag`` from the page; wait until it is paused after gray (the paused run closes in the live
    view): returns its release name."""
    release = release_from_the_page(page, tag, "paused", _one_group_of_changes)
    page.wait_for_selector("#approval:not([hidden])", timeout=30_000)
    assert "paused after stage gray" in page.text_content("#approval-what")
    assert "next: stage all" in page.text_content("#approval-what")
    assert "operator@" in page.text_content("#approval-what")  # who started it
    switched = page.eval_on_selector_all("#approval-switched li", "items => items.map(i => i.dataset.node)")
    assert sorted(switched) == ["pre-1", "web-1"]
    assert page.is_visible("#lock.paused")
    return release


def settled(page):
    page.wait_for_selector("#live-state.success, #live-state.failure, #live-state.aborted", timeout=RUN_TIMEOUT)
    return page.get_attribute("#live-state", "class")


def test_paused_release_promoted_from_the_page(api, cluster, context):
    one_release(cluster)
    paused_pillar(cluster)
    try:
        before = cluster.currents()
        tag = new_tag(cluster)
        page = open_console(context, api, "operator")
        release = pause_from_the_page(page, cluster, tag)
        assert cluster.currents() == {**before, "pre-1": release, "web-1": release}
        # the paused state is read from the lock too: a console opened now shows the same approval
        other = open_console(context, api, "operator")
        other.wait_for_selector("#approval:not([hidden]) #promote", timeout=60_000)
        other.close()
        shot(page, "12-paused")
        page.click("#promote")
        page.wait_for_selector("#confirm[open]")
        page.click("#confirm-ok")
        page.wait_for_function("() => !document.querySelector('#live-state').classList.contains('paused')")
        assert settled(page) == "state success", page.text_content("#live")
        assert cluster.currents() == {n: release for n in NODES}
        page.wait_for_selector("#approval", state="hidden", timeout=30_000)
        page.wait_for_selector("#lock.free", timeout=30_000)
        # history: the promoted release, recorded with the console's user
        page.wait_for_function(f"() => [...document.querySelectorAll('#history tbody tr')].some("
                               f"r => r.cells[4].textContent === {json.dumps(release)} && "
                               f"r.cells[5].textContent.startsWith('success'))", timeout=60_000)
        people = page.eval_on_selector_all(
            "#history tbody tr", f"rows => rows.filter(r => r.cells[4].textContent === {json.dumps(release)})"
                                 f".map(r => r.cells[2].textContent)")
        assert people and all(p.startswith("operator@") for p in people), people
        shot(page, "13-promoted")
    finally:
        cluster.set_pillar()


def test_paused_release_aborted_from_the_page_viewer_sees_no_buttons(api, cluster, context):
    one_release(cluster)
    paused_pillar(cluster)
    try:
        before = cluster.currents()
        tag = new_tag(cluster)
        page = open_console(context, api, "operator")
        release = pause_from_the_page(page, cluster, tag)
        # the viewer sees the approval, without Promote or Abort; the server refuses them too
        viewer = open_console(context, api, "viewer")
        viewer.wait_for_selector("#approval:not([hidden]) #approval-readonly", timeout=60_000)
        assert viewer.locator("#promote, #abort").count() == 0
        assert "paused after stage gray" in viewer.text_content("#approval-what")
        shot(viewer, "14-viewer-paused")
        viewer.close()
        token = api_login(api, "viewer")
        for fun in ("deploy.promote", "deploy.abort"):
            for client in ("runner", "runner_async"):
                status, _ = run_as(api, token, fun, client=client, project="rainbow", env="pro")
                assert status == 401, (fun, client, status)
        assert cluster.currents() == {**before, "pre-1": release, "web-1": release}  # nothing moved
        page.click("#abort")
        page.wait_for_selector("#confirm[open]")
        page.click("#confirm-ok")
        page.wait_for_function("() => !document.querySelector('#live-state').classList.contains('paused')")
        assert settled(page) == "state aborted", page.text_content("#live")
        assert cluster.currents() == before
        page.wait_for_selector("#lock.free", timeout=30_000)
        page.wait_for_function(f"() => [...document.querySelectorAll('#history tbody tr')].some("
                               f"r => r.cells[4].textContent === {json.dumps(release)} && "
                               f"r.cells[5].textContent.startsWith('aborted'))", timeout=60_000)
        shot(page, "15-aborted")
    finally:
        cluster.set_pillar()


def test_timed_pause_counts_down_and_is_promoted_from_the_page(api, cluster, context):
    one_release(cluster)
    stages = [{"name": "gray", "target": "G@region:east", "batch": 1, "pause": 300}, {"name": "all", "batch": 1}]
    cluster.set_pillar(project_extra={"envs": {"pro": {"stages": stages}}})
    try:
        tag = new_tag(cluster)
        page = open_console(context, api, "operator")
        release = release_from_the_page(page, tag, "waiting")
        page.wait_for_selector("#approval-countdown", timeout=30_000)
        first = int(re.search(r"in (\d+)s", page.text_content("#approval-countdown")).group(1))
        assert 0 < first <= 300
        page.wait_for_function(f"() => Number(/in (\\d+)s/.exec(document.querySelector('#approval-countdown')"
                               f".textContent)[1]) < {first}", timeout=10_000)
        shot(page, "16-timed-pause")
        page.click("#promote")
        page.wait_for_selector("#confirm[open]")
        page.click("#confirm-ok")
        assert settled(page) == "state success", page.text_content("#live")
        assert cluster.currents() == {n: release for n in NODES}
        page.wait_for_selector("#approval", state="hidden", timeout=30_000)
    finally:
        cluster.set_pillar()
