"""
salt-run deploy.release end to end: real master and minions, nginx + PHP-FPM nodes, HAProxy.

Uses the session cluster (``clean_cluster``).
"""

import contextlib
import json
import pwd
import os
import pathlib
import signal
import subprocess
import threading
import time

from sandbox import repo as sample_repo
from sandbox import web

from .conftest import NODES, WEB

_VERSION = [3, 0]


def new_version(cluster, **kwargs):
    """Commit a new version to the sample repo; returns its tag (e.g. v3.1.0)."""
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(cluster.repo, tag, **kwargs)
    return tag


def lb_pages(cluster, count=6):
    return [web.http_get(cluster.lb.url)[2] for _ in range(count)]


def history(cluster):
    path = os.path.join(cluster.state_dir, "history", "rainbow.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def releases_on(cluster, node):
    ret = cluster.call(node, "deploy.releases", "rainbow")
    assert ret.returncode == 0, ret
    return {r["name"]: r for r in ret.data["releases"]}


def test_release_serves_new_version_everywhere(clean_cluster):
    c = clean_cluster
    tag = new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout
    summary = ret.data
    assert summary["result"] == "success"
    assert "outputter" not in summary  # --out=json: the return itself
    release = summary["release"]
    assert release.startswith(f"rainbow_pro_{tag}_master_") and release.endswith("_xuliangwei")
    # every node switched, old -> new, and back in the LB
    assert c.currents() == {n: release for n in NODES}
    for node in WEB:
        assert summary["nodes"][node]["result"] == "ok"
        assert summary["nodes"][node]["lb"] == "ready"
        assert summary["nodes"][node]["out_of_lb"] > 0
    assert c.lb_states() == {n: "ready" for n in WEB}
    # served through the LB and directly, the new version
    pages = lb_pages(c)
    assert all(f"rainbow {tag[1:]}" in page for page in pages), pages
    for addr, _ in NODES.values():
        assert f"rainbow {tag[1:]}" in web.http_get(f"http://{addr}:8080/")[2]
    # per-node config: the job node has its own crontab.xml, secrets rendered 0640 root:www-data
    cron = os.path.join(c.root("web-3"), "current", "config", "crontab.xml")
    assert "report" in pathlib.Path(cron).read_text(encoding="utf-8")
    assert "report" not in pathlib.Path(c.root("web-1"), "current", "config", "crontab.xml").read_text(encoding="utf-8")
    ini = os.path.join(c.root("web-1"), "current", "config", "app.ini")
    st = os.stat(ini)
    assert oct(st.st_mode & 0o777) == "0o640"
    assert (st.st_uid, st.st_gid) == (0, pwd.getpwnam("www-data").pw_gid)
    assert "SMSKEY-5f1d2c9a-secret" in pathlib.Path(ini).read_text(encoding="utf-8")
    # progress lines and the history record
    assert "out of the LB" in (ret.stdout + ret.stderr) and "back in the LB" in (ret.stdout + ret.stderr)
    last = history(c)[-1]
    assert last["kind"] == "release" and last["result"] == "success" and last["release"] == release
    assert set(last["nodes"]) == set(NODES)
    # a second release of the same commit reuses the artifact and the prepared release; without --out,
    # salt-run ends with the summary (deploy_summary), not the return's nested dump
    argv = [a for a in c.run_cli.cmdline("deploy.release", "project=rainbow", "env=pro")
            if not a.startswith(("--out=", "--out-indent="))]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reused" in (again.stdout + again.stderr) and "(0 unpacked)" in (again.stdout + again.stderr)
    end = again.stdout[again.stdout.rindex("release success in "):].splitlines()  # after the last progress line
    assert end[1].startswith(f"release: rainbow_pro_{tag}_master_") and "  preprod: pre-1 ok" in end, end
    assert end[-1] == "next: salt-run deploy.rollback project=rainbow env=pro   (back to the last good release)"
    assert len(end) <= 12 and "timings:" not in again.stdout and "outputter" not in again.stdout, again.stdout
    # changed build commands: the same commit is built again, not reused; nodes holding the
    # old build refuse the new one (a release name is one artifact), and nothing switches
    before = c.currents()
    c.set_pillar(project_extra={"build": ["echo rebuilt > BUILD.txt"]})
    rebuilt = c.run("deploy.release", project="rainbow", env="pro")
    assert rebuilt.returncode == 1
    assert "the build commands changed" in (rebuilt.stdout + rebuilt.stderr) and "build: echo rebuilt" in (rebuilt.stdout + rebuilt.stderr)
    assert "already exists on this node with a different checksum" in rebuilt.data["error"] + rebuilt.stdout
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}
    new_version(c)  # move the branch on: later tests must not meet this commit's rebuilt artifact


def test_broken_release_stops_at_preprod(clean_cluster):
    c = clean_cluster
    before = c.currents()
    tag = new_version(c, broken=True)
    ret = c.run("deploy.release", project="rainbow", env="pro", ref=tag)
    assert ret.returncode == 1
    assert ret.data["result"] == "failure"
    assert "pre-production node pre-1 failed" in ret.data["error"]
    # no web node changed; preprod switched back; the release is marked bad there
    assert c.currents() == before
    assert releases_on(c, "pre-1")[ret.data["release"]]["status"] == "bad"
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert history(c)[-1]["result"] == "failure"


def test_failure_in_later_batch_reverts_that_batch_only(clean_cluster):
    c = clean_cluster
    good = new_version(c)
    assert c.run("deploy.release", project="rainbow", env="pro").returncode == 0
    before = c.currents()
    tag = new_version(c)
    # web-2 (stage "all", batch 1) insists on the old version: its checks fail on the new one
    c.set_pillar(node_extra={"web-2": {"checks": [
        {"url": f"http://{NODES['web-2'][0]}:8080/", "contains": f"rainbow {good[1:]}", "retries": 2, "delay": 0.2}]}})
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 1
    new = ret.data["release"]
    assert f"_{tag}_" in new
    nodes = ret.data["nodes"]
    assert nodes["web-2"]["result"] == "failed" and "switched back" in nodes["web-2"]["error"]
    assert "max_failures=0" in ret.data["error"]
    # preprod and the gray stage have the new release, web-2 was reverted, web-3 was never reached
    assert c.current("pre-1") == new and c.current("web-1") == new
    assert c.current("web-2") == before["web-2"]
    assert c.current("web-3") == before["web-3"]
    assert "web-3" not in {n for n, v in nodes.items() if v.get("result")}
    # everyone in service, and the summary says so
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert {n: nodes[n]["lb"] for n in WEB} == {n: "ready" for n in WEB}
    assert releases_on(c, "web-2")[new]["status"] == "bad"


def test_operator_disabled_node_stays_disabled(clean_cluster):
    c = clean_cluster
    new_version(c)
    c.lb.command("set server rainbow/web-2 state maint")
    try:
        ret = c.run("deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 0, ret.stdout
        assert c.current("web-2") == ret.data["release"]
        assert c.lb_states() == {"web-1": "ready", "web-2": "maint", "web-3": "ready"}
        assert ret.data["nodes"]["web-2"]["lb"] == "maint"
    finally:
        c.lb.command("set server rainbow/web-2 state ready")


@contextlib.contextmanager
def release_holding_the_lock(c):
    """A release running in the background (a slow build keeps it on the lock); yields its result dict.

    The CLI factory object is not thread-safe: the background run is a plain subprocess."""
    lock = os.path.join(c.state_dir, "locks", "rainbow_pro.lock")
    first = {}
    argv = c.run_cli.cmdline("deploy.release", "project=rainbow", "env=pro")
    thread = threading.Thread(target=lambda: first.update(ret=subprocess.run(argv, capture_output=True, text=True)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(lock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(lock)
        yield first
    finally:
        thread.join(120)
    assert first["ret"].returncode == 0, first["ret"].stdout[-3000:]
    assert not os.path.exists(lock)


def test_concurrent_release_is_refused_naming_the_holder(clean_cluster):
    c = clean_cluster
    new_version(c)
    c.set_pillar(project_extra={"build": ["sleep 4"]})
    with release_holding_the_lock(c):
        started = time.monotonic()
        second = c.run("deploy.release", project="rainbow", env="pro")
        assert time.monotonic() - started < 15  # refused at once, not queued behind the first
        assert second.returncode == 3  # locked: a pipeline may retry
        assert second.data["result"] == "refused"
        assert "rainbow/pro is locked: release by root" in second.data["error"]
        assert "jid" in second.data["error"]
        rollback = c.run("deploy.rollback", project="rainbow", env="pro")
        assert rollback.returncode == 3 and "is locked" in rollback.data["error"]


def test_killed_run_leaves_a_stale_lock_that_is_taken_over(clean_cluster):
    c = clean_cluster
    new_version(c)
    node_extra = {"web-1": {"restart": [{"cmd": "sleep 5"}, {"cmd": c.php["web-1"].reload_command()}]}}
    c.set_pillar(node_extra=node_extra)
    detached = os.path.join(c.state_dir, "locks", "rainbow_pro.detached.json")
    proc = subprocess.Popen(
        c.run_cli.cmdline("deploy.release", "project=rainbow", "env=pro"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and c.lb.server_state("web-1") != "maint":
            time.sleep(0.05)
        assert c.lb.server_state("web-1") == "maint"
        assert json.loads(pathlib.Path(detached).read_text(encoding="utf-8")) == ["web-1"]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    time.sleep(6)  # the node's own job finishes: every node is on a whole release
    assert c.lb.server_state("web-1") == "maint"  # left out by the killed run
    shown = c.run("deploy.lock_status", project="rainbow", env="pro")
    assert shown.data["locked"] is True and shown.data["alive"] is False and shown.data["detached"] == ["web-1"]
    c.set_pillar()
    new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout
    assert any("took over a stale lock" in w for w in ret.data["warnings"])
    assert any("restored LB state of web-1" in w for w in ret.data["warnings"])
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert not os.path.exists(detached)
    assert c.currents() == {n: ret.data["release"] for n in NODES}
    assert "interrupted" in [h["result"] for h in history(c)]


def test_history_and_stats_count_what_ran(clean_cluster):
    c = clean_cluster
    before = c.run("deploy.stats", project="rainbow", env="pro").data
    new_version(c)
    assert c.run("deploy.release", project="rainbow", env="pro").returncode == 0
    tag = new_version(c, broken=True)
    assert c.run("deploy.release", project="rainbow", env="pro", ref=tag).returncode == 1
    after = c.run("deploy.stats", project="rainbow", env="pro").data
    assert after["releases"]["success"] == before["releases"]["success"] + 1
    assert after["releases"]["failure"] == before["releases"]["failure"] + 1
    assert after["mean_seconds"]["release"] > 0
    hist = c.run("deploy.history", project="rainbow", env="pro", limit=2).data
    assert [h["result"] for h in hist] == ["success", "failure"]
    assert all(h["user"] and h["started"] and h["release"] for h in hist)
    new_version(c)  # leave master releasable for the next tests


def test_test_mode_changes_nothing(clean_cluster):
    c = clean_cluster
    tag = new_version(c)
    before = c.currents()
    dirs = {n: c.release_dirs(n) for n in NODES}
    count = len(history(c))
    ret = c.run("deploy.release", project="rainbow", env="pro", test=True)
    assert ret.returncode == 0, ret.stdout
    assert ret.data["result"] is None
    assert f"_{tag}_" in ret.data["release"]
    assert any("web-1" in line and "gray" in line for line in ret.data["plan"])
    assert c.currents() == before
    assert {n: c.release_dirs(n) for n in NODES} == dirs
    assert len(history(c)) == count
    artifacts = os.path.join(c.master.config["file_roots"]["base"][0], "deploy_artifacts", "rainbow")
    assert os.listdir(artifacts)  # earlier releases left theirs
    assert not any(ret.data["release"] in name for name in os.listdir(artifacts))


def test_bad_input_is_refused_before_anything_runs(clean_cluster):
    c = clean_cluster
    before = c.currents()
    cases = [
        ({"project": "nope", "env": "pro"}, "unknown project 'nope'", 2),
        ({"project": "rainbow", "env": "qa"}, "unknown env 'qa'", 2),
        ({"project": "rainbow", "env": "pro", "ref": "no-such-branch"}, "unknown ref 'no-such-branch'", 2),
        ({"project": "rainbow", "env": "pro", "ref": "../etc"}, "invalid ref", 2),
        ({"project": "rain bow", "env": "pro"}, "invalid project name", 2),
        ({"project": "rainbow", "env": "pro;touch /tmp/dpl-pwned"}, "invalid env name", 2),
    ]
    for kwargs, message, code in cases:
        ret = c.run("deploy.release", **kwargs)
        assert ret.returncode == code, (kwargs, ret.stdout)
        assert message in ret.data["error"], (kwargs, ret.data)
    assert not os.path.exists("/tmp/dpl-pwned")
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}


def _manifest(cluster, release):
    path = os.path.join(cluster.master.config["file_roots"]["base"][0], "deploy_artifacts", "rainbow",
                        f"{release}.manifest.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def test_nodes_the_record_shows_without_a_release_get_the_artifact_unasked(clean_cluster):
    """A first release: the master's record shows no release of the project on a node, so that node
    lacks everything and the artifact itself travels without a deploy.lacking round trip.  The
    record is only a hint: nodes that do hold contents take what they lack from the artifact."""
    c = clean_cluster
    record = os.path.join(c.state_dir, "inventory", "rainbow_pro.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record)  # as on a new deployment server, or before any release
    tag = new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro", ref=tag)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    dist = ret.data["timings"]["distribute"]
    assert dist["asked"] is False and dist["bytes"] == dist["artifact_bytes"], dist
    assert f"{len(NODES)} nodes hold no release of rainbow (the master's record): the whole artifact" \
        in ret.stdout + ret.stderr
    assert c.currents() == {n: ret.data["release"] for n in NODES}
    # the record is back: the next release asks again
    sample_repo.add_release(c.repo, tag, files={"lib/unasked.txt": "one more file\n"}, tag=False)
    again = c.run("deploy.release", project="rainbow", env="pro")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.data["timings"]["distribute"]["asked"] is True
    assert "a part of" in again.stdout + again.stderr


def test_a_release_that_changes_one_file_moves_only_that_content(clean_cluster):
    """Incremental distribution: only the changed file's content travels, the
    rest of the new release is hard links to the blobs the nodes already hold."""
    c = clean_cluster
    tag = new_version(c, files={f"lib/part{i}.txt": f"part {i}\n" * 500 for i in range(20)})
    first = c.run("deploy.release", project="rainbow", env="pro", ref=tag)
    assert first.returncode == 0, first.stdout
    old = first.data["release"]
    # the same version files, one changed file: a commit on master with no new tag
    sample_repo.add_release(c.repo, tag, files={"lib/part7.txt": "part 7, changed\n"}, tag=False)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout
    new = ret.data["release"]
    assert new != old
    dist = ret.data["timings"]["distribute"]
    a, b = _manifest(c, old), _manifest(c, new)
    changed = {e[4] for e in b["entries"] if e[1] == "f"} - {e[4] for e in a["entries"] if e[1] == "f"}
    assert len(changed) == 1, changed
    # besides it, only contents that live solely under per-node paths (a shared folder's .gitkeep, a
    # config file rendered over): no release links them, so cleanup collected them and they travel again
    skip = set()  # per node: the job node has its own files (config/crontab.xml)
    for node in NODES:
        with open(os.path.join(c.root(node), "meta", "manifest", f"{old}.json"), encoding="utf-8") as fh:
            skip.update(json.load(fh)["skip"])

    def per_node(path):
        return any(path == s or path.startswith(s + "/") for s in skip)

    linked = {e[4] for e in a["entries"] if e[1] == "f" and not per_node(e[0])}
    again = {e[4] for e in b["entries"] if e[1] == "f" and per_node(e[0])} - linked
    assert dist["lacking"] == len(changed | again), (changed, again, dist)
    assert dist["bytes"] < dist["artifact_bytes"] / 2, dist
    assert "a part of" in ret.stdout + ret.stderr
    for node in NODES:
        o = os.path.join(c.root(node), "releases", old)
        n = os.path.join(c.root(node), "releases", new)
        for i in range(20):
            same = os.stat(os.path.join(o, "lib", f"part{i}.txt")).st_ino == os.stat(os.path.join(n, "lib", f"part{i}.txt")).st_ino
            assert same == (i != 7), (node, i)
        with open(os.path.join(n, "lib", "part7.txt"), encoding="utf-8") as fh:
            assert fh.read() == "part 7, changed\n"
        st = os.stat(os.path.join(n, "lib", "part7.txt"))
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o444
        # no archive left in the minion's cache; the part is gone from the master's fileserver
        assert not [f for _, _, fs in os.walk(c.minions[node].config["cachedir"]) for f in fs if f.endswith(".tar.gz")]
    folder = os.path.join(c.master.config["file_roots"]["base"][0], "deploy_artifacts", "rainbow")
    assert not [f for f in os.listdir(folder) if ".part-" in f]
    # every node serves the new release, and a rollback goes back to the old one through its own links
    assert c.currents() == {n: new for n in NODES}
    back = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert back.returncode == 0, back.stdout
    assert c.currents() == {n: old for n in NODES}
