"""
Real web stacks and zero downtime: the article's pitfalls (section 6) on the real cluster.

- PHP (nginx + PHP-FPM, OPcache on with validate_timestamps=0): after a release and after a
  normal and an emergency rollback every node serves the release ``current`` points to, directly
  and through HAProxy, with no stale OPcache / realpath cache; without the FPM reload it does not.
- the nginx LB driver: a second project behind its own nginx load balancer.
- Java (Tomcat): stop, clear work+temp, start; without the clear a stale compiled JSP is served.
- zero downtime: a bounded HTTP load through HAProxy during a rolling release, a normal rollback
  and a release that fails on a later batch: no failed request; the same failure without the LB
  step does reach the clients; an emergency rollback under load is recorded.

Figures (requests / failures per operation) are printed and attached to each test's report
(``record_property``, visible in ``--junitxml``).

Uses the session cluster; the nginx-LB project's PHP nodes and LB and the Tomcat nodes start once for
the module, for the one test that needs each.
"""

import collections
import http.client
import json
import os
import threading
import time
import urllib.parse

import pytest

from sandbox import pillar
from sandbox import repo as sample_repo
from sandbox import web

from .conftest import NET, NODES, USER, WEB, in_parallel

_VERSION = [7, 0]
MIN_REQUESTS = int(os.environ.get("DPL_MIN_REQUESTS", "500"))  # per operation under load

# ---------------------------------------------------------------------------------------- PHP app

# A page that reaches code THROUGH the `current` symlink, as an application does whose
# include_path, autoloader or config names the deploy path (/data/www/rainbow/current/...).
# index.php cannot show a stale cache here: nginx hands PHP $realpath_root, so after a switch
# index.php is a new path (releases/<new>/public/index.php) and compiled afresh even with no
# reload at all.  An include of <root>/current/lib/which.php is the same path in every release:
# PHP keeps resolving it to the old release (the per-worker realpath cache, realpath_cache_ttl
# 120 s; and OPcache keyed by the unresolved path, forever with validate_timestamps=0) until
# PHP-FPM is reloaded.  Checked by hand: with opcache off it is still stale (realpath cache).
VIA_CURRENT_PHP = """<?php
// Code reached through the `current` symlink (include_path / autoloader / configured deploy path).
$root = dirname(__DIR__, 3);  // <root>/releases/<release>/public -> <root>
echo "via current: " . (require $root . '/current/lib/which.php') . "\\n";
"""
WHICH_PHP = "<?php\nreturn basename(dirname(__DIR__));  // the release this file was compiled from\n"
PHP_FILES = {"public/via_current.php": VIA_CURRENT_PHP, "lib/which.php": WHICH_PHP}


def new_version(repo, **kwargs):
    """Commit a new version (with the via-current page) to a sample repo; returns its tag."""
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    if sample_repo.git("config", "--get", "sandbox.kind", cwd=repo, check=False) != "java":
        kwargs.setdefault("files", PHP_FILES)
    sample_repo.add_release(repo, tag, **kwargs)
    return tag


def _lost_prepare_returns(ret):
    """The run stopped at prepare only because Salt lost returns: the minions finished
    deploy.prepare just as the LocalClient's find_job poll said they were no longer running it
    (a known Salt race).  Nothing was switched."""
    data = ret.data if isinstance(ret.data, dict) else {}
    errors = [n.get("error", "") for n in (data.get("nodes") or {}).values() if n.get("result") == "failed"]
    return (str(data.get("error", "")).startswith("prepare failed on") and errors
            and all(e.startswith("Minion did not return") for e in errors))


def release(c, project="rainbow", expect_ok=True, **kwargs):
    ret = c.run("deploy.release", project=project, env="pro", **kwargs)
    if _lost_prepare_returns(ret):  # not what this file tests: once more (prepared releases are reused)
        print(f"\nWARNING: deploy.release {project}: prepare lost minion returns, released again: {ret.data['error']}")
        ret = c.run("deploy.release", project=project, env="pro", **kwargs)
    if expect_ok:
        assert ret.returncode == 0, ret.stdout[-4000:]
        assert ret.data["result"] == "success"
    return ret


def rollback(c, **kwargs):
    ret = c.run("deploy.rollback", project="rainbow", env="pro", **kwargs)
    assert ret.returncode == 0, ret.stdout[-4000:]
    assert ret.data["result"] == "success"
    return ret


def settled(c):
    """Every node's current release (a first release if some node has none yet)."""
    if None in c.currents().values():
        uniform_release(c)
    return c.currents()


def uniform_release(c):
    """The release every node serves, with the via-current page; released first if there is none."""
    currents = set(c.currents().values())
    if len(currents) == 1 and None not in currents:
        (cur,) = currents
        if os.path.exists(os.path.join(c.root("web-1"), "releases", cur, "public", "via_current.php")):
            return cur
    new_version(c.repo)
    return release(c).data["release"]


def _line(body, key):
    for line in body.splitlines():
        if line.startswith(key + ": "):
            return line[len(key) + 2:]
    return None


def php_view(c, rounds=4):
    """What is served, {where: {"index: <release>", "via: <release>"}}: every node directly
    (``rounds`` requests per page, several FPM workers) and through HAProxy (``lb->web-N``)."""
    view = collections.defaultdict(set)

    def get(where, url, key, label):
        status, headers, body = web.http_get(url)
        assert status == 200, (url, status, body)
        view[where(headers)].add(f"{label}: {_line(body, key)}")

    for node, (addr, _) in NODES.items():
        for _ in range(rounds):
            get(lambda h, n=node: n, f"http://{addr}:8080/", "release", "index")
            get(lambda h, n=node: n, f"http://{addr}:8080/via_current.php", "via current", "via")
    for _ in range(rounds * len(WEB)):
        get(lambda h: f"lb->{h.get('x-served-by')}", c.lb.url, "release", "index")
        get(lambda h: f"lb->{h.get('x-served-by')}", c.lb.url + "via_current.php", "via current", "via")
    return dict(view)


def expected_view(index, via=None):
    want = {f"index: {index}", f"via: {via or index}"}
    return {**{n: want for n in NODES}, **{f"lb->{n}": want for n in WEB}}


def reload_all_php(c):
    for node in NODES:
        c.php[node].reload()


# ---------------------------------------------------------------------------------------- load


class Load:
    """A bounded HTTP load: ``threads`` clients, each on a keep-alive connection (reconnecting
    after an error) and paced to ``rate`` requests/s, GET ``url`` until stopped (or
    ``max_seconds``).  Counts answers that are not 2xx, connection errors and bodies that do not
    start with ``expect``.  CI-sized: at most 4 x 100 req/s, which leaves CPU to Salt on a 2-core machine."""

    def __init__(self, url, expect, threads=4, rate=100, max_seconds=150):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path or "/"
        self.expect = expect.encode()
        self.threads = threads
        self.interval = 1.0 / rate
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = self.ok = 0
        self.statuses, self.errors, self.bad = collections.Counter(), collections.Counter(), collections.Counter()
        self.served_by, self.releases = collections.Counter(), collections.Counter()
        self.samples = []  # first failures: (seconds since start, what)
        self.max_latency = 0.0
        self.workers = []

    def __enter__(self):
        self.started = time.monotonic()
        self.workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.threads)]
        for t in self.workers:
            t.start()
        deadline = time.monotonic() + 15
        while self.requests < 4 * self.threads and time.monotonic() < deadline:  # warm: every client answered
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.workers:
            t.join(20)
        self.seconds = time.monotonic() - self.started
        return False

    def _worker(self):
        conn = None
        while not self.stop.is_set() and time.monotonic() - self.started < self.max_seconds:
            t0 = time.monotonic()
            failure = status = by = None
            body = b""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body, status, by = resp.read(), resp.status, resp.getheader("X-Served-By")
                if resp.will_close:
                    conn.close()
                    conn = None
                if not 200 <= status < 300:
                    failure = f"HTTP {status}"
                elif not body.startswith(self.expect):
                    failure = f"unexpected body {body[:60]!r}"
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                    conn = None
            latency = time.monotonic() - t0
            with self.lock:
                self.requests += 1
                self.max_latency = max(self.max_latency, latency)
                if status is not None:
                    self.statuses[status] += 1
                if failure is None:
                    self.ok += 1
                    self.served_by[by] += 1
                    self.releases[_line(body.decode(errors="replace"), "release")] += 1
                else:
                    (self.errors if status is None else self.bad)[failure] += 1
                    if len(self.samples) < 20:
                        self.samples.append((round(t0 - self.started, 3), failure))
            pause = self.interval - (time.monotonic() - t0)
            if pause > 0:
                self.stop.wait(pause)

    @property
    def failures(self):
        return self.requests - self.ok

    def summary(self):
        return {
            "requests": self.requests,
            "failures": self.failures,
            "non_2xx_or_bad_body": dict(self.bad),
            "connection_errors": dict(self.errors),
            "first_failures": self.samples,
            "seconds": round(self.seconds, 2),
            "req_per_s": round(self.requests / max(self.seconds, 1e-9)),
            "max_latency_ms": round(self.max_latency * 1000),
            "served_by": dict(self.served_by),
            "releases_seen": len(self.releases),
        }


def report(record_property, name, load, extra=None):
    data = {**load.summary(), **(extra or {})}
    print(f"\nLOAD {name}: {json.dumps(data, sort_keys=True)}")
    record_property(f"load:{name}", json.dumps(data, sort_keys=True))
    return data


def under_load(c, record_property, name, operation, url=None, expect="rainbow "):
    """Run ``operation()`` with the load through the LB; return (its result, the load)."""
    with Load(url or c.lb.url, expect) as load:
        started = time.monotonic()
        result = operation()
        op_seconds = round(time.monotonic() - started, 2)
    report(record_property, name, load, {"operation_seconds": op_seconds})
    return result, load


def assert_no_failures(load, name):
    assert load.failures == 0, f"{name}: {load.failures} failed requests: {load.summary()}"
    assert load.requests >= MIN_REQUESTS, f"{name}: only {load.requests} requests under load: {load.summary()}"
    assert set(load.served_by) == set(WEB), load.summary()  # the load really went through every node


# ================================================================================ 1. PHP + OPcache


def test_php_release_and_both_rollbacks_serve_the_switched_release_everywhere(clean_cluster):
    c = clean_cluster
    new_version(c.repo)
    a = release(c).data["release"]
    assert php_view(c) == expected_view(a)

    new_version(c.repo)
    b = release(c).data["release"]
    assert c.currents() == {n: b for n in NODES}
    assert php_view(c) == expected_view(b)

    ret = rollback(c)
    assert ret.data["to"] == a
    assert c.currents() == {n: a for n in NODES}
    assert php_view(c) == expected_view(a)

    new_version(c.repo)
    d = release(c).data["release"]
    assert php_view(c) == expected_view(d)
    ret = rollback(c, emergency=True)
    assert ret.data["to"] == a  # b was rolled back from: bad
    assert c.currents() == {n: a for n in NODES}
    assert php_view(c) == expected_view(a)


def test_php_without_the_fpm_reload_serves_stale_code_through_current(clean_cluster):
    """The failing counterpart: the same release with no restart steps passes its checks (they
    look at index.php, a fresh path) but code reached through `current` is the old release."""
    c = clean_cluster
    old = uniform_release(c)
    assert php_view(c) == expected_view(old)  # every node has now resolved <root>/current -> old
    c.set_pillar(node_extra={n: {"restart": []} for n in NODES})
    reloaded = False
    try:
        new_version(c.repo)
        ret = release(c)
        new = ret.data["release"]
        assert c.currents() == {n: new for n in NODES}
        assert all(ret.data["nodes"][n]["result"] == "ok" for n in NODES)
        # index.php is the new release, the include through `current` the old one, on every node
        assert php_view(c) == expected_view(new, via=old)
        # what the restart step does: a PHP-FPM reload (new workers, new OPcache)
        reload_all_php(c)
        reloaded = True
        assert php_view(c) == expected_view(new)
    finally:
        if not reloaded:
            reload_all_php(c)


# ================================================================================ nginx LB driver

NG = "rainbow-ng"
NG_ADDR = {n: f"{NET}.{21 + i}" for i, n in enumerate(WEB)}


@pytest.fixture(scope="module")
def ng_stack(cluster):
    """Project rainbow-ng: its own repo, one nginx+PHP-FPM per web node (NET.21-23) and an
    nginx load balancer (the article's way: an upstream file, nginx -t, reload)."""
    work = cluster.work
    repo = sample_repo.make_sample_repo(os.path.join(work, "git", f"{NG}.git"), project=NG)
    nodes, lb = {}, None
    marks = os.path.join(work, "marks-ng")
    os.makedirs(marks, exist_ok=True)
    os.chmod(marks, 0o777)
    try:
        for node in WEB:
            root = cluster.root(node, NG)
            os.makedirs(root, exist_ok=True)
            nodes[node] = web.PhpNode(node, NG_ADDR[node], root, os.path.join(work, "svc", f"{node}-ng"), user=USER)
        lb = web.NginxLB(os.path.join(work, "svc", "nginx-lb"), "rainbow_ng",
                         {n: f"{NG_ADDR[n]}:8080" for n in WEB}, bind=f"{NET}.100:8001", user=USER)
        in_parallel(lambda svc: svc.start(), [*nodes.values(), lb])  # each waits for its own sockets
        yield {"repo": repo, "php": nodes, "lb": lb, "marks": marks}
    finally:
        in_parallel(lambda svc: svc.stop(), [*nodes.values(), *([lb] if lb is not None else [])])


def ng_pillar(c, stack):
    lb = stack["lb"]
    conf = pillar.project_pillar(
        stack["repo"],
        {"driver": "nginx", "minion": "lb-1", "upstream_file": lb.upstream_file,
         "servers": {n: f"{NG_ADDR[n]}:8080" for n in WEB},
         "nginx": lb.reload_command()[:-2]},  # [nginx, -p, DIR, -c, CONF]; the driver adds -t / -s reload
        envs={"pro": {"branch": "master", "target": "L@web-1,web-2,web-3", "max_failures": 0,
                      "stages": [{"name": "gray", "target": "G@region:east", "batch": 1}, {"name": "all", "batch": 1}]}},
    )
    conf["config"] = {}  # app.ini.example wants <project>_secrets, which only rainbow has
    node_projects = {}
    for node in WEB:
        own = pillar.node_pillar(c.root(node, NG), NG_ADDR[node], stack["php"][node].reload_command())
        # first restart step: keep a copy of the upstream file as it is while this node's batch runs
        own["restart"] = [{"cmd": f"cp {lb.upstream_file} {stack['marks']}/{node}.upstream"}] + own["restart"]
        node_projects[node] = {NG: own}
    c.set_pillar(other_projects={NG: conf}, node_projects=node_projects)


def test_release_behind_the_nginx_lb_driver(clean_cluster, ng_stack, record_property):
    c, lb = clean_cluster, ng_stack["lb"]
    ng_pillar(c, ng_stack)
    with open(lb.upstream_file, encoding="utf-8") as fh:
        original = fh.read()
    first = release(c, project=NG).data["release"]  # the project's first release: nodes had nothing
    assert {n: c.current(n, NG) for n in WEB} == {n: first for n in WEB}
    for name in os.listdir(ng_stack["marks"]):
        os.unlink(os.path.join(ng_stack["marks"], name))

    tag = new_version(ng_stack["repo"])
    ret, load = under_load(c, record_property, "nginx-lb release", lambda: release(c, project=NG), url=lb.url,
                           expect=f"{NG} ")
    new = ret.data["release"]
    assert f"_{tag}_" in new
    assert {n: c.current(n, NG) for n in WEB} == {n: new for n in WEB}
    assert all(ret.data["nodes"][n]["lb"] == "ready" and ret.data["nodes"][n]["out_of_lb"] > 0 for n in WEB)
    # while its batch ran, each node (and only it) was marked down in the upstream file ...
    for node in WEB:
        with open(os.path.join(ng_stack["marks"], f"{node}.upstream"), encoding="utf-8") as fh:
            during = fh.read()
        want = original.replace(f"server {NG_ADDR[node]}:8080;", f"server {NG_ADDR[node]}:8080 down;")
        assert want != original and during == want, (node, during)
    # ... and afterwards the file is exactly what it was
    with open(lb.upstream_file, encoding="utf-8") as fh:
        assert fh.read() == original
    # every node serves the new version through the nginx LB
    seen = collections.defaultdict(set)
    for _ in range(12):
        status, headers, body = web.http_get(lb.url)
        assert status == 200, body
        seen[headers.get("x-served-by")].add((body.splitlines()[0], _line(body, "release")))
    assert dict(seen) == {n: {(f"{NG} {tag[1:]}", new)} for n in WEB}
    assert load.failures == 0, load.summary()  # nginx -t + graceful reload drop nothing


# ================================================================================ 2. Java / Tomcat

JAVA = "rainbow-java"
JAVA_NODES = {"web-1": f"{NET}.31", "web-2": f"{NET}.32"}
# A reproducible build (SOURCE_DATE_EPOCH, Maven's project.build.outputTimestamp) gives every file
# of every release the same mtime.
FIXED_MTIME_BUILD = "SOURCE_DATE_EPOCH=1700000000; find . -exec touch -h -d \"@$SOURCE_DATE_EPOCH\" {} +"


@pytest.fixture(scope="module")
def java_stack(cluster):
    """Project rainbow-java: a java sample repo and a Tomcat CATALINA_BASE per node (not started:
    the first release's restart steps start it, as www-data)."""
    work = cluster.work
    # project "rainbow": the JSP prints "rainbow-java <VERSION>" (the version is part of the JSP text)
    repo = sample_repo.make_sample_repo(os.path.join(work, "git", f"{JAVA}.git"), project="rainbow", kind="java")
    tomcats = {}
    for node, addr in JAVA_NODES.items():
        root = cluster.root(node, JAVA)
        os.makedirs(root, exist_ok=True)
        tomcats[node] = web.TomcatNode(node, addr, root, os.path.join(work, "svc", f"{node}-tomcat"), user=USER)
        tomcats[node].write_config()
    try:
        yield {"repo": repo, "tomcat": tomcats}
    finally:
        in_parallel(lambda tomcat: tomcat.stop(), tomcats.values())  # each JVM shuts down on its own


def java_pillar(c, stack, version, clear=True, version_check=True):
    conf = pillar.project_pillar(
        stack["repo"], {"driver": "none"}, shared=[], build=[FIXED_MTIME_BUILD],
        # no LB in front of Tomcat here: both nodes in one batch (their restarts run in parallel)
        envs={"pro": {"branch": "master", "target": "L@web-1,web-2", "max_failures": 0,
                      "stages": [{"name": "all", "batch": 2}]}},
    )
    conf["config"] = {}
    node_projects = {}
    for node, addr in JAVA_NODES.items():
        tomcat = stack["tomcat"][node]
        restart = [{"cmd": tomcat.stop_command(), "timeout": 60}]
        if clear:
            restart.append({"clear": [tomcat.work_dir, tomcat.temp_dir]})
        restart.append({"cmd": tomcat.start_command(), "timeout": 60})
        checks = [{"url": f"http://{addr}:8080/health.jsp", "contains": "ok", "retries": 80, "delay": 0.5,
                   "timeout": 10}]
        if version_check:
            checks.insert(0, {"url": f"http://{addr}:8080/", "contains": f"{JAVA} {version}", "retries": 80,
                              "delay": 0.5, "timeout": 10})
        node_projects[node] = {JAVA: {"root": c.root(node, JAVA), "restart": restart, "checks": checks}}
    c.set_pillar(other_projects={JAVA: conf}, node_projects=node_projects)


def java_pages(stack):
    pages = {}
    for node, tomcat in stack["tomcat"].items():
        status, _, body = web.http_get(tomcat.url, timeout=10)
        pages[node] = (status, body.strip())
    return pages


def test_tomcat_release_needs_the_cleared_work_dir(clean_cluster, java_stack):
    """How Tomcat (Jasper) decides to recompile a JSP: it compares the JSP's mtime with the one it
    gave the compiled class (the class gets the JSP's mtime), and recompiles when they DIFFER --
    an older JSP is recompiled too (checked by hand on Tomcat 10).  The work dir is keyed by the
    context (ROOT) and the JSP's path, never by the release directory behind <root>/current.  So a
    restart without clearing `work` serves the previous release's compiled JSP whenever the new
    JSP has the same mtime: a reproducible build (fixed timestamps, as here), or git archive of
    two commits made within the same second.  The article's advice -- clear work and temp on
    every restart -- is what makes the release independent of mtimes."""
    c, stack = clean_cluster, java_stack
    # 1. the first release starts Tomcat on both nodes
    java_pillar(c, stack, "1.1.0")
    first = release(c, project=JAVA).data["release"]
    assert {n: c.current(n, JAVA) for n in JAVA_NODES} == {n: first for n in JAVA_NODES}
    assert java_pages(stack) == {n: (200, f"{JAVA} 1.1.0") for n in JAVA_NODES}
    mtimes = {os.stat(os.path.join(c.root(n, JAVA), "current", "index.jsp")).st_mtime for n in JAVA_NODES}
    assert mtimes == {1700000000}

    # 2. a release that changes the JSP text, same mtime: stop, clear work+temp, start -> new page
    tag = new_version(stack["repo"])
    java_pillar(c, stack, tag[1:])
    second = release(c, project=JAVA).data["release"]
    assert {n: c.current(n, JAVA) for n in JAVA_NODES} == {n: second for n in JAVA_NODES}
    assert java_pages(stack) == {n: (200, f"{JAVA} {tag[1:]}") for n in JAVA_NODES}

    # 3. the same without the clear step (health check only): `current` is the new release, the
    #    page is the previous release's compiled JSP
    stale = tag[1:]
    tag = new_version(stack["repo"])
    java_pillar(c, stack, tag[1:], clear=False, version_check=False)
    third = release(c, project=JAVA).data["release"]
    assert {n: c.current(n, JAVA) for n in JAVA_NODES} == {n: third for n in JAVA_NODES}
    with open(os.path.join(c.root("web-1", JAVA), "current", "index.jsp"), encoding="utf-8") as fh:
        assert f"{JAVA} {tag[1:]}" in fh.read()
    assert java_pages(stack) == {n: (200, f"{JAVA} {stale}") for n in JAVA_NODES}


# ================================================================================ 3. zero downtime


def test_zero_downtime_rolling_release_and_normal_rollback(clean_cluster, record_property):
    c = clean_cluster
    base = uniform_release(c)  # a good release on every node to roll back to
    tag = new_version(c.repo)
    ret, load = under_load(c, record_property, "rolling release", lambda: release(c))
    new = ret.data["release"]
    assert f"_{tag}_" in new and c.currents() == {n: new for n in NODES}
    assert {base, new} <= set(load.releases)  # the load saw the switch happen
    assert_no_failures(load, "rolling release")

    ret, load = under_load(c, record_property, "normal rollback", lambda: rollback(c))
    assert ret.data["to"] == base and c.currents() == {n: base for n in NODES}
    assert "out of the LB" in (ret.stdout + ret.stderr)
    assert_no_failures(load, "normal rollback")
    assert c.lb_states() == {n: "ready" for n in WEB}


BROKEN_INDEX = "<?php\nhttp_response_code(500);\necho \"rainbow broken on this node\\n\";\n"


def broken_on_web2(c, project_extra=None):
    """web-2's copy of the next release is broken (its own `files` replace index.php: HTTP 500),
    so its checks fail and it is switched back: the window a user could hit it is real."""
    c.set_pillar(project_extra=project_extra,
                 node_extra={"web-2": {"files": {"public/index.php": {"contents": BROKEN_INDEX, "mode": "0644"}}}})


def test_zero_downtime_when_a_later_batch_fails_its_checks(clean_cluster, record_property):
    c = clean_cluster
    before = settled(c)
    tag = new_version(c.repo)
    # web-2 (stage "all", batch 1) answers HTTP 500 on the new release: its checks fail
    broken_on_web2(c)
    ret, load = under_load(c, record_property, "release failing in a later batch",
                           lambda: release(c, expect_ok=False))
    assert ret.returncode == 1 and ret.data["result"] == "failure", ret.stdout[-3000:]
    new = ret.data["release"]
    assert f"_{tag}_" in new
    assert ret.data["nodes"]["web-2"]["result"] == "failed" and "switched back" in ret.data["nodes"]["web-2"]["error"]
    assert "status 500" in ret.data["nodes"]["web-2"]["error"]
    # preprod and the gray stage have the new release, web-2 was reverted, web-3 never reached
    assert c.currents() == {**before, "pre-1": new, "web-1": new}
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert_no_failures(load, "release failing in a later batch")


def test_without_the_lb_step_the_same_failure_reaches_users(clean_cluster, record_property):
    """The counterpart that shows the load client can fail: the same broken web-2, but the
    project has no LB driver, so web-2 stays in HAProxy's rotation while it is switched, checked
    and switched back.  Its HTTP 500 answers reach the clients (HAProxy retries 502/503 and
    connection failures, not a 500) until its health check takes it out."""
    c = clean_cluster
    before = settled(c)
    new_version(c.repo)
    broken_on_web2(c, project_extra={"lb": {"driver": "none"}})
    ret, load = under_load(c, record_property, "same failure without the LB step",
                           lambda: release(c, expect_ok=False))
    assert ret.returncode == 1 and ret.data["nodes"]["web-2"]["result"] == "failed", ret.stdout[-3000:]
    assert "out of the LB" not in (ret.stdout + ret.stderr)
    assert c.currents() == {**before, "pre-1": ret.data["release"], "web-1": ret.data["release"]}
    assert load.failures > 0, load.summary()
    assert set(load.summary()["non_2xx_or_bad_body"]) == {"HTTP 500"}, load.summary()
    c.lb.wait_status("web-2", "UP", timeout=20)  # back in rotation (health checks) for the next tests


def test_emergency_rollback_under_load_is_recorded(clean_cluster, record_property):
    """Emergency rollback: every node switched and restarted at once, no LB actions.  Failures
    are recorded (printed and in the report), not asserted to be zero."""
    c = clean_cluster
    new_version(c.repo)
    current = release(c).data["release"]
    target = c.run("deploy.releases", project="rainbow", env="pro").data["cluster"]["rollback_target"]
    if target is None:  # a fresh cluster: one more release, so that there is one to go back to
        target = current
        new_version(c.repo)
        current = release(c).data["release"]
    ret, load = under_load(c, record_property, "emergency rollback", lambda: rollback(c, emergency=True))
    assert ret.data["to"] == target and current != target
    assert c.currents() == {n: target for n in NODES}
    assert "out of the LB" not in (ret.stdout + ret.stderr)
    assert load.requests > 0
    record_property("emergency_rollback_failures", load.failures)
    # after it every node serves the target (the FPM reloads are done)
    assert php_view(c, rounds=2) == expected_view(target)

