"""
The analysis gate's ``prometheus`` provider on real daemons: a Prometheus (Debian's, on loopback, its own
config and data folder, scraping every second, basic auth on) scrapes HAProxy's built-in exporter
(``http-request use-service prometheus-exporter``) of the session's LB.

- ``Window.figures()`` against it: load through HAProxy to a page that fails ~10 % of the time on web-1
  (the canary) and never on web-2, web-3 (the baseline); the figures against what the load saw;
- what goes wrong gives ``None`` figures and a note, never the credentials: a wrong password, a label
  that matches nothing, a query Prometheus refuses, a redirect, a proxy in the environment, a server
  that does not answer.

Uses the session cluster (``clean_cluster``) and test_analysis' load and set-up.
"""

import csv
import http.server
import io
import os
import socket
import threading
import time

import pytest

from deploy_master.gates import prometheus as prom
from sandbox.prometheus import PrometheusServer

from .conftest import WEB
from .test_analysis import (ANALYSIS, API_FLAKY, API_GOOD, Load, _api_url, _everyone_serves_the_api,
                            release_a_good_version_under_load)
from .test_release import new_version

USER, PASSWORD = "deploy", "prom-9d41-S3cret"  # searched for in every note
PROBE = "prom-probe.php"


@pytest.fixture(scope="module")
def prometheus(work_dir, haproxy):
    server = PrometheusServer(os.path.join(work_dir, "svc", "prometheus"), {"haproxy": [haproxy.metrics_url]},
                              users={USER: PASSWORD})
    server.start()
    yield server
    server.stop()


def _settings(prometheus, **raw):
    base = {"url": prometheus.url, "recipe": "haproxy", "backend": "rainbow", "timeout": 5,
            "basic_auth": {"username": USER, "password": PASSWORD}}
    return prom.settings({k: v for k, v in {**base, **raw}.items() if v is not None}, "env 'pro'")


class Ctx:
    def __init__(self, new, old):
        self.new, self.old, self.servers = new, old, {n: n for n in WEB}
        self.log = lambda *a, **k: None

    def lb_call(self, fun, nodes):
        raise AssertionError("the prometheus provider asks Prometheus, not the LB")


def _window(settings, new=("web-1",), old=("web-2", "web-3"), seconds=0.0):
    w = prom.Window(settings, Ctx(list(new), list(old)))
    w.sample()
    if seconds:
        time.sleep(seconds)
    return w


@pytest.fixture
def probe(clean_cluster):
    """``/prom-probe.php`` in every web node's current release: flaky on web-1, good on the others."""
    c = clean_cluster
    if any(c.current(n) is None for n in WEB):
        _everyone_serves_the_api(c)
    paths = []
    for node in WEB:
        path = os.path.join(c.root(node), "current", "public", PROBE)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(API_FLAKY if node == "web-1" else API_GOOD)
        paths.append(path)
    yield c.lb.url.rstrip("/") + "/" + PROBE
    for path in paths:
        os.unlink(path)


def _haproxy_responses(c):
    """web node -> HAProxy's count of its responses (all classes), from ``show stat``."""
    rows = csv.DictReader(io.StringIO(c.lb.command("show stat").lstrip("# ")))
    keys = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
    return {r["svname"]: sum(int(r[k] or 0) for k in keys) for r in rows
            if r["pxname"] == "rainbow" and r["svname"] in WEB}


def test_figures_of_a_failing_canary_against_its_baseline(prometheus, probe, clean_cluster):
    c = clean_cluster
    settings = _settings(prometheus)
    with Load(probe, threads=2, rate=25) as load:
        time.sleep(1.5)  # a scrape or two of the load's traffic before the window opens
        before = _haproxy_responses(c)
        start = time.time()
        window = _window(settings, seconds=12)
        fig = window.figures()
        end = time.time()
        after = _haproxy_responses(c)
    assert fig["notes"] == [], fig
    new, old = fig["new"], fig["old"]
    assert new["servers"] == ["web-1"] and old["servers"] == ["web-2", "web-3"]
    assert fig["range"] in ("12s", "13s") and fig["window"][1] - fig["window"][0] >= 12
    assert window.queries["new"]["errors"] == (
        f'sum(increase(haproxy_server_http_responses_total{{proxy="rainbow",server=~"web-1",code="5xx"}}'
        f'[{fig["range"]}]))')
    # what HAProxy counted in the window (show stat), and what the users saw
    counted = {n: after[n] - before[n] for n in WEB}
    seen = load.failed(start, end)
    assert set(seen) <= {"web-1"}, seen
    assert abs(new["requests"] - counted["web-1"]) <= max(5, counted["web-1"] * 0.2), (new, counted)
    baseline = counted["web-2"] + counted["web-3"]
    assert abs(old["requests"] - baseline) <= max(5, baseline * 0.2), (old, counted)
    assert new["requests"] >= 100 and old["requests"] >= 200, fig
    assert old["errors"] == 0 and new["errors"] > 0
    assert 0.03 <= new["errors"] / new["requests"] <= 0.2, new
    assert abs(new["errors"] - seen["web-1"]) <= max(4, seen["web-1"] * 0.35), (new, seen)
    assert new["latency_ms"] is not None and old["latency_ms"] is not None and 0 <= new["latency_ms"] < 1000
    print(f"\nPROMETHEUS figures: window {fig['range']}: web-1 {new['requests']} requests, {new['errors']} 5xx "
          f"(HAProxy counted {counted['web-1']}, the load saw {seen['web-1']} fail), latency {new['latency_ms']} ms; "
          f"web-2+web-3 {old['requests']} requests, {old['errors']} 5xx (HAProxy counted "
          f"{baseline}), latency {old['latency_ms']} ms")


def _assert_no_figures(fig, reason, groups=("new", "old")):
    for group in groups:
        assert fig[group]["requests"] is None and fig[group]["errors"] is None, fig
    assert fig["notes"] and all(reason in note for note in fig["notes"]), fig["notes"]
    assert all(PASSWORD not in note and USER not in note for note in fig["notes"]), fig["notes"]


def test_a_wrong_password_gives_no_figures_and_keeps_it_out_of_the_notes(prometheus):
    settings = _settings(prometheus, basic_auth={"username": USER, "password": PASSWORD + "-wrong"})
    fig = _window(settings).figures()
    _assert_no_figures(fig, f"Prometheus at {prometheus.url} answered HTTP 401")
    assert len(fig["notes"]) == 6  # three queries of two groups
    assert PASSWORD not in str(settings) and "<hidden>" in str(settings)


def test_a_backend_that_matches_nothing_and_a_refused_query_say_why(prometheus):
    fig = _window(_settings(prometheus, backend="no-such-backend")).figures()
    _assert_no_figures(fig, "the query returned no series")
    assert fig["new"]["latency_ms"] is None
    bad = {"requests": 'sum(increase(haproxy_server_http_responses_total{server=~"{{ servers }}"}[{{ window }}])',
           "errors": 'sum(haproxy_server_http_responses_total{server=~"{{ servers }}",code="5xx"})'}
    fig = _window(_settings(prometheus, recipe=None, backend=None, queries=bad), old=()).figures()
    assert fig["new"]["requests"] is None and fig["new"]["errors"] is not None, fig
    (note,) = fig["notes"]
    assert note.startswith(f"prometheus: new requests: Prometheus at {prometheus.url} answered HTTP 400 "
                           f"(bad_data: "), note
    # the nginx recipe (nginx-module-vts) is valid PromQL: this Prometheus has no such series, and says only that
    fig = _window(_settings(prometheus, recipe="nginx", backend="rainbow")).figures()
    _assert_no_figures(fig, "the query returned no series")


class _Redirect(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_POST(self):  # noqa: N802 -- http.server's name
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_no_redirect_no_proxy_from_the_environment_and_a_bounded_wait(prometheus, monkeypatch):
    _Redirect.target = prometheus.url
    server = _serve(_Redirect)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        fig = _window(_settings(prometheus, url=url), old=()).figures()
        _assert_no_figures(fig, "answered HTTP 307: a redirect, not followed", groups=("new",))
    finally:
        server.shutdown()
        server.server_close()
    # a proxy in the environment (a dead one) is not used
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    fig = _window(_settings(prometheus), old=(), seconds=2).figures()
    assert fig["notes"] == [] and fig["new"]["requests"] is not None, fig
    # a server that takes the connection and never answers: the window ends within the timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        fig = _window(_settings(prometheus, url=url, timeout=1)).figures()
        took = time.monotonic() - t0
    assert took < 4, took
    assert all("timed out" in n or "within 1s" in n for n in fig["notes"]) and len(fig["notes"]) == 6, fig["notes"]
    _assert_no_figures(fig, f"127.0.0.1:{url.rsplit(':', 1)[1]}")



# --------------------------------------------------------------------------- end to end: salt-run deploy.release


def _with_prometheus(c, prometheus, on_failure="stop"):
    c.set_pillar(project_extra={"envs": {"pro": {"on_failure": on_failure, "analysis": {
        **ANALYSIS, "provider": "prometheus", "url": prometheus.url, "recipe": "haproxy", "backend": "rainbow",
        "basic_auth": {"username": USER, "password": PASSWORD}}}}})


def _no_password_anywhere(c, ret):
    assert PASSWORD not in ret.stdout + ret.stderr
    with open(os.path.join(c.state_dir, "history", "rainbow.jsonl"), encoding="utf-8") as fh:
        assert PASSWORD not in fh.read()


def test_a_good_release_passes_the_prometheus_analysis(prometheus, clean_cluster):
    c = clean_cluster
    ret, runs, load = release_a_good_version_under_load(c, lambda c: _with_prometheus(c, prometheus))
    assert [(a["stage"], a["verdict"], a["mode"]) for a in runs] == [("gray", "pass", "baseline"),
                                                                     ("all", "pass", "absolute")], runs
    gray = runs[0]
    assert gray["new"]["servers"] == ["web-1"] and gray["old"]["servers"] == ["web-2", "web-3"]
    assert gray["new"]["requests"] >= ANALYSIS["min_requests"] and gray["new"]["errors"] == 0, gray
    assert sum(load.failed().values()) == 0, load.failed()
    _no_password_anywhere(c, ret)
    print(f"\nPROMETHEUS good release: gray {gray['new']['requests']} requests on web-1, "
          f"{gray['old']['requests']} on web-2+web-3 (Prometheus); {load.count()} requests through the LB, 0 failed")


def test_a_release_failing_ten_percent_is_stopped_by_the_prometheus_analysis(prometheus, clean_cluster):
    c = clean_cluster
    _everyone_serves_the_api(c)
    before = c.currents()
    tag = new_version(c, files={"public/api.php": API_FLAKY})
    _with_prometheus(c, prometheus, on_failure="rollback")
    with Load(_api_url(c)) as load:
        ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 1, ret.stdout
    assert f"_{tag}_" in ret.data["release"]
    error = ret.data["error"]
    assert error.startswith("analysis of stage gray failed: error rate "), error
    assert "on web-1) is above the old release's" in error and "max_error_rate 1.00%" in error
    assert ret.data["nodes"]["web-1"]["result"] == "ok"
    (gray,) = ret.data["timings"]["analysis"]
    assert gray["stage"] == "gray" and gray["verdict"] == "fail" and gray["mode"] == "baseline"
    assert 0.03 <= gray["new"]["errors"] / gray["new"]["requests"] <= 0.2, gray["new"]
    assert gray["old"]["errors"] == 0
    rolled = ret.data["rolled_back"]
    assert rolled["result"] == "success" and rolled["to"] == {"pre-1": before["pre-1"], "web-1": before["web-1"]}
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}
    _no_password_anywhere(c, ret)
    new_version(c, files={"public/api.php": API_GOOD})  # the nodes marked the flaky head bad: leave a good one
    print(f"\nPROMETHEUS bad release: Prometheus counted {gray['new']['errors']} 5xx of {gray['new']['requests']} "
          f"on web-1 and {gray['old']['errors']} of {gray['old']['requests']} on web-2+web-3; "
          f"{sum(load.failed().values())} of {load.count()} requests failed during the whole run")
