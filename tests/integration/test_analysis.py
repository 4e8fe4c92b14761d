"""
Analysis of live traffic (pillar ``analysis``) on real daemons: HAProxy's own per-server counters,
read with ``deploy_lb.stats`` while load runs through the LB.

A release whose new code answers 500 for about 10 % of the requests to one page passes every
smoke check (they ask other pages) and is stopped by the analysis of the gray stage; a good one
passes.  The load records every request, so the test says how many users saw an error during
the bake, and checks it against HAProxy's count.

Uses the session cluster (``clean_cluster``); the load runs in threads of the test process.
"""

import collections
import csv
import io
import http.client
import threading
import time
import urllib.parse

from .conftest import NODES, WEB
from .test_release import history, new_version

API_GOOD = "<?php\nheader('Content-Type: text/plain');\necho \"api ok\\n\";\n"
# fails ~10 % of the requests; health.php and index.php (the smoke checks) stay fine
API_FLAKY = (
    "<?php\nheader('Content-Type: text/plain');\n"
    "if (mt_rand(1, 1000) <= 100) { http_response_code(500); echo \"api error\\n\"; exit; }\n"
    "echo \"api ok\\n\";\n"
)
ANALYSIS = {"bake": 10, "interval": 1, "max_error_rate": "1%", "max_p95_ms": 500, "min_requests": 100}


class Load:
    """``threads`` keep-alive clients GET ``url`` through the LB, each paced to ``rate`` requests/s;
    every answer is kept as (unix time, status or None, backend server)."""

    def __init__(self, url, threads=4, rate=40):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.threads, self.interval = threads, 1.0 / rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers = []

    def __enter__(self):
        self.workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.threads)]
        for t in self.workers:
            t.start()
        deadline = time.monotonic() + 15
        while len(self.answers) < 4 * self.threads and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.workers:
            t.join(20)
        return False

    def _worker(self):
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic()
            status = server = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                status, server = resp.status, resp.getheader("X-Backend-Server")
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                    conn = None
            with self.lock:
                self.answers.append((time.time(), status, server))
            pause = self.interval - (time.monotonic() - t0)
            if pause > 0:
                self.stop.wait(pause)

    def failed(self, start=0.0, end=float("inf")):
        """Answers that were not 2xx (or no answer), between two unix times: {server: count}."""
        with self.lock:
            return collections.Counter(s for t, st, s in self.answers
                                       if start <= t <= end and not (st and 200 <= st < 300))

    def count(self, start=0.0, end=float("inf")):
        with self.lock:
            return sum(1 for t, _, _ in self.answers if start <= t <= end)


def _api_url(c):
    return c.lb.url.rstrip("/") + "/api.php"


def _with_analysis(c, on_failure="stop", **changes):
    c.set_pillar(project_extra={"envs": {"pro": {"analysis": {**ANALYSIS, **changes}, "on_failure": on_failure}}})


def _everyone_serves_the_api(c):
    """Every node on a release with the good api.php, and up in HAProxy (whose health check asks
    `/`): in a fresh session the nodes serve nothing yet, and the old release must take traffic."""
    new_version(c, files={"public/api.php": API_GOOD})
    assert c.run("deploy.release", project="rainbow", env="pro").returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(_haproxy_status(c).values()) != {"UP"}:
        time.sleep(0.2)
    assert set(_haproxy_status(c).values()) == {"UP"}, _haproxy_status(c)


def _haproxy_status(c):
    rows = csv.DictReader(io.StringIO(c.lb.command("show stat").lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "rainbow" and r["svname"] in WEB}


def release_a_good_version_under_load(c, analysis):
    """Every node on a good release, then a release of a new good version with ``analysis(c)`` set, under
    load through the LB: it succeeds everywhere.  Returns (its return, its bakes, the load)."""
    _everyone_serves_the_api(c)
    new_version(c, files={"public/api.php": API_GOOD})
    analysis(c)
    with Load(_api_url(c)) as load:
        ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout
    release = ret.data["release"]
    assert c.currents() == {n: release for n in NODES}
    return ret, ret.data["timings"]["analysis"], load


def test_a_good_release_passes_the_analysis(clean_cluster):
    ret, runs, load = release_a_good_version_under_load(clean_cluster, _with_analysis)
    # after the gray stage: web-1 against web-2, web-3; after the last stage: everyone, absolute limits
    assert [(a["stage"], a["verdict"], a["mode"]) for a in runs] == [("gray", "pass", "baseline"),
                                                                     ("all", "pass", "absolute")], \
        [(a["stage"], a["mode"], a["notes"], a["new"]["responses"], (a["old"] or {}).get("responses")) for a in runs]
    gray = runs[0]
    assert gray["new"]["servers"] == ["web-1"] and gray["old"]["servers"] == ["web-2", "web-3"]
    assert gray["new"]["responses"] >= ANALYSIS["min_requests"] and gray["new"]["errors"] == 0
    assert gray["new"]["p95_ms"] is not None and gray["samples"] >= 5
    assert gray["seconds"] >= ANALYSIS["bake"]
    out = ret.stdout + ret.stderr
    assert "stage gray: analysis: watching live traffic on the LB for 10s" in out
    assert "-> pass" in out
    assert sum(load.failed().values()) == 0, load.failed()
    print(f"\nANALYSIS good release: gray {gray['new']['responses']} responses on web-1, "
          f"{gray['old']['responses']} on web-2+web-3, p95 rtime {gray['new']['p95_ms']} ms; "
          f"{load.count()} requests through the LB, 0 failed")


def test_a_release_failing_ten_percent_is_stopped_in_the_gray_stage_and_rolled_back(clean_cluster):
    c = clean_cluster
    _everyone_serves_the_api(c)
    before = c.currents()
    tag = new_version(c, files={"public/api.php": API_FLAKY})
    _with_analysis(c, on_failure="rollback")
    with Load(_api_url(c)) as load:
        ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 1, ret.stdout
    new = ret.data["release"]
    assert f"_{tag}_" in new
    error = ret.data["error"]
    assert error.startswith("analysis of stage gray failed: error rate "), error
    assert "on web-1) is above the old release's" in error and "max_error_rate 1.00%" in error
    # the smoke checks passed: web-1 was switched, checked and put back; the stop came from the analysis
    assert ret.data["nodes"]["web-1"]["result"] == "ok"
    (gray,) = ret.data["timings"]["analysis"]
    assert gray["stage"] == "gray" and gray["verdict"] == "fail" and gray["mode"] == "baseline"
    rate = gray["new"]["error_rate"]
    assert 0.04 <= rate <= 0.2, gray["new"]
    assert gray["old"]["errors"] == 0
    # the next stage never started (web-2, web-3 untouched); on_failure: rollback sent the gray stage's
    # node and the pre-production node back to the release they had, through the LB; everyone in the LB
    rolled = ret.data["rolled_back"]
    assert rolled["result"] == "success" and rolled["to"] == {"pre-1": before["pre-1"], "web-1": before["web-1"]}
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}
    rollback_rec, release_rec = history(c)[-2:]
    assert (rollback_rec["kind"], rollback_rec["mode"], rollback_rec["result"]) == ("rollback", "auto", "success")
    assert release_rec["result"] == "failure" and release_rec["timings"]["analysis"][0]["verdict"] == "fail"
    # what users saw: failed requests during the bake (between the first and the last sample),
    # all of them from web-1, about what HAProxy counted
    start, end = gray["window"]
    seen = load.failed(start, end)
    assert set(seen) == {"web-1"}, seen
    assert abs(seen["web-1"] - gray["new"]["errors"]) <= max(3, gray["new"]["errors"] // 5), (seen, gray["new"])
    print(f"\nANALYSIS bad release: during the {end - start:.1f}s bake {sum(seen.values())} of "
          f"{load.count(start, end)} requests through the LB failed (all on web-1); HAProxy counted "
          f"{gray['new']['errors']} 5xx of {gray['new']['responses']} on web-1 ({rate:.1%}) and "
          f"{gray['old']['errors']} of {gray['old']['responses']} on web-2+web-3; "
          f"{sum(load.failed().values())} of {load.count()} failed during the whole run (bake and automatic rollback)")


def test_analysis_with_an_nginx_lb_is_refused_before_anything_runs(clean_cluster):
    c = clean_cluster
    before = c.currents()
    c.set_pillar(project_extra={
        "lb": {"driver": "nginx", "minion": "lb-1", "upstream_file": "/etc/nginx/upstream.conf",
               "servers": {n: f"{NODES[n][0]}:8080" for n in WEB}},
        "envs": {"pro": {"analysis": ANALYSIS}},
    })
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 2, ret.stdout
    assert ret.data["error"].startswith("env 'pro': analysis needs the haproxy LB driver, not 'nginx': open-source "
                                        "nginx keeps no per-server response counters"), ret.data
    assert c.currents() == before


def test_stats_reads_haproxy_show_stat_and_nginx_refuses(clean_cluster):
    c = clean_cluster
    lb = f"{{driver: haproxy, socket: {c.lb.socket}, backend: rainbow}}"
    before = c.call("lb-1", "deploy_lb.stats", lb, "[web-1, web-2]")
    assert before.returncode == 0, before
    with Load(c.lb.url, threads=2, rate=20):
        time.sleep(2)
    after = c.call("lb-1", "deploy_lb.stats", lb, "[web-1, web-2]")
    first, last = before.data["servers"]["web-1"], after.data["servers"]["web-1"]
    assert last["status"] == "UP"
    for field in ("hrsp_2xx", "hrsp_5xx", "hrsp_other", "econ", "eresp", "rtime", "ttime", "rtime_max", "ttime_max"):
        assert isinstance(last[field], int), (field, last)
    assert last["hrsp_2xx"] > first["hrsp_2xx"]
    assert after.data["time"] > before.data["time"]
    missing = c.call("lb-1", "deploy_lb.stats", lb, "[web-9]")
    assert missing.returncode != 0 and "has no server named web-9" in str(missing.data), missing
    nginx = c.call("lb-1", "deploy_lb.stats", "{driver: nginx, upstream_file: /etc/nginx/upstream.conf}", "[web-1]")
    assert nginx.returncode != 0 and "open-source nginx does not keep them" in str(nginx.data), nginx
