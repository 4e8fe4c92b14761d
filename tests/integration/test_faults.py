"""
Fault injection on the real cluster: each fault is injected, then the outcome is asserted:
the command's exit code and message, every node's ``current``, every node's LB state, the
history.  Bad input is refused with a clear error and changes nothing.  Secrets never leak.

A tally (faults injected / survived with nothing lost, bad inputs tried / refused cleanly) is
printed when the module ends.

Uses the session cluster (``fresh``: ``clean_cluster`` without a pillar refresh the minions do not
need); adds one minion of its own, stg-1 with its PHP node (a second env), once for the module.
"""

import concurrent.futures
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types
import uuid

import pytest

from sandbox import pillar as sandbox_pillar
from sandbox import repo as sample_repo
from sandbox import web

from .conftest import NET, NODES, SECRETS, USER, WEB, in_parallel

_VERSION = [6, 0]
PWNED = f"/tmp/dpl-pwned-{uuid.uuid4().hex[:8]}"  # created only if a value ever reached a shell
TALLY = {"faults injected": 0, "faults survived, nothing lost": 0, "bad inputs tried": 0, "bad inputs refused cleanly": 0,
         "runs retried: a live minion did not answer in time": 0}
OUTPUTS = []  # (what, stdout, stderr) of every salt-run / salt command of this module: searched for secrets


# --------------------------------------------------------------------------- helpers


def new_version(c, **kwargs):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(c.repo, tag, **kwargs)
    return tag


def run(c, fun, **kwargs):
    """salt-run deploy.<fun> key=value ... (recorded for the secrets test)."""
    ret = c.run(fun, **kwargs)
    OUTPUTS.append((f"{fun} {kwargs}", ret.stdout, ret.stderr))
    return ret


def call(c, target, fun, *args):
    ret = c.call(target, fun, *args)
    OUTPUTS.append((f"salt {target} {fun} {args}", ret.stdout, ret.stderr))
    return ret


def parse(stdout):
    """salt-run --out=json prints one document per progress event and the return: merge them."""
    for text in (stdout, stdout.replace("}\n{", ", ")):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def argv(c, fun, **kwargs):
    return c.run_cli.cmdline(fun, *[f"{k}={v}" for k, v in kwargs.items()])


def spawn(c, fun, **kwargs):
    """A salt-run as a plain subprocess (the CLI factory object is not thread-safe)."""
    proc = subprocess.Popen(argv(c, fun, **kwargs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.started = time.monotonic()
    proc.what = f"{fun} {kwargs}"
    return proc


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    OUTPUTS.append((proc.what, out, err))
    return types.SimpleNamespace(returncode=proc.returncode, stdout=out, stderr=err, data=parse(out) or {},
                                 seconds=time.monotonic() - proc.started, pid=proc.pid)


def run_many(c, cases, workers=4):
    """Run [(fun, kwargs), ...] as parallel salt-run subprocesses; results in order."""
    def one(case):
        fun, kwargs = case
        proc = subprocess.run(argv(c, fun, **kwargs), capture_output=True, text=True, timeout=300)
        OUTPUTS.append((f"{fun} {kwargs}", proc.stdout, proc.stderr))
        return types.SimpleNamespace(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                                     data=parse(proc.stdout) or {})

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cases))


_RUNNER_SCRIPT = r"""
import json, sys
import salt.config, salt.runner
opts = salt.config.master_config(sys.argv[1])
client = salt.runner.RunnerClient(opts)
out = []
for fun, kwarg in json.loads(sys.stdin.read()):
    ret = client.cmd(fun, kwarg=kwarg, print_event=False, full_return=True)
    data = ret.get("return", ret) if isinstance(ret, dict) else ret
    code = ret.get("retcode") if isinstance(ret, dict) else None
    if code is None and isinstance(data, dict):
        code = data.get("retcode", 0)
    out.append({"retcode": code, "data": data})
print("@@@" + json.dumps(out, default=str))
"""


def run_in_one_process(c, cases):
    """Many runner calls through Salt's RunnerClient (what salt-run itself uses) in ONE process:
    the exit code salt-run would give is the return's ``retcode``.  Much cheaper than one salt-run
    per case on a loaded 2-core machine; a sample of the cases also goes through the real CLI."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER_SCRIPT, c.master.config["conf_file"]],
        input=json.dumps(cases), capture_output=True, text=True, timeout=600,
    )
    OUTPUTS.append(("runner batch", proc.stdout, proc.stderr))
    assert "@@@" in proc.stdout, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    results = json.loads(proc.stdout.split("@@@", 1)[1])
    return [types.SimpleNamespace(returncode=r["retcode"], data=r["data"] if isinstance(r["data"], dict) else {},
                                  raw=r["data"]) for r in results]


_FETCH_RACE_SCRIPT = r"""
import json, multiprocessing, os, sys
sys.path.insert(0, os.getcwd())
import salt.config, salt.runner
from sandbox import repo as sample_repo

conf, repo_path, major, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
opts = salt.config.master_config(conf)


def one(env, barrier, queue):
    client = salt.runner.RunnerClient(opts)
    barrier.wait()
    ret = client.cmd("deploy.release", kwarg={"project": "rainbow", "env": env, "test": True},
                     print_event=False, full_return=True)
    data = ret.get("return", ret) if isinstance(ret, dict) else ret
    data = data if isinstance(data, dict) else {"result": "?", "error": str(data)}
    queue.put([env, data.get("result"), str(data.get("error"))[:300]])


ctx = multiprocessing.get_context("fork")
out = []
for i in range(rounds):
    # a new commit with some weight, so that each fetch has something to write
    sample_repo.add_release(repo_path, f"v{major}.{i}.0", files={"blob.txt": os.urandom(150000).hex()})
    envs = ("pro", "stg", "pro", "stg")  # test=True takes no lock: four fetches at once
    barrier, queue = ctx.Barrier(len(envs)), ctx.Queue()
    procs = [ctx.Process(target=one, args=(env, barrier, queue)) for env in envs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    out += [queue.get(timeout=10) for _ in procs]
sample_repo.add_release(repo_path, f"v{major}.{rounds}.0", files={"blob.txt": None})
print("@@@" + json.dumps(out))
"""


def history(c, project="rainbow"):
    path = os.path.join(c.state_dir, "history", f"{project}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def lock_path(c, env="pro"):
    return os.path.join(c.state_dir, "locks", f"rainbow_{env}.lock")


def detached_path(c, env="pro"):
    return os.path.join(c.state_dir, "locks", f"rainbow_{env}.detached.json")


def lb_records(c):
    """The paths of the LB minion's records of the backend rainbow (one per HAProxy socket)."""
    return glob.glob(os.path.join(c.minions["lb-1"].config["cachedir"], "deploy_lb", "haproxy-rainbow*.json"))


def lb_record(c):
    """The LB minion's own record of detached servers (prior states)."""
    out = {}
    for path in lb_records(c):
        with open(path, encoding="utf-8") as fh:
            out.update(json.load(fh))
    return out


def snapshot(c):
    """What bad input or an early failure must not change."""
    return {
        "current": c.currents(),
        "lb": c.lb_states(),
        "dirs": {n: c.release_dirs(n) for n in NODES},
        "locked": os.path.exists(lock_path(c)),
        "detached": os.path.exists(detached_path(c)),
        "lb_record": lb_record(c),
    }


def meta(c, node, release):
    path = os.path.join(c.root(node), "meta", f"{release}.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return None


def assert_whole(c, node, allowed):
    """The node serves a whole release: `current` -> an existing, prepared release dir among `allowed`."""
    cur = c.current(node)
    assert cur in allowed, (node, cur, allowed)
    assert os.path.isdir(os.path.join(c.root(node), "releases", cur)), (node, cur)
    assert meta(c, node, cur) is not None, (node, cur)
    assert not [d for d in c.release_dirs(node) if d.startswith(".")], c.release_dirs(node)


def ensure_released(c):
    """Every node has a release (a test run alone on a fresh cluster)."""
    if None in c.currents().values():
        new_version(c)
        ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 0, ret.stdout[-2000:]


def wait_for(predicate, timeout=60, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def wait_answers(c, node, timeout=90):
    """After restarting a minion daemon: wait until it answers a job."""
    def pong():
        ret = c.salt.run("test.ping", minion_tgt=node, _timeout=10)
        return ret.returncode == 0 and ret.data is True
    wait_for(pong, timeout=timeout, interval=0.5, what=f"{node} to answer")


def restart_minion(c, node):
    minion = c.minions[node]
    if not minion.is_running():
        minion.start(start_timeout=120)
    wait_answers(c, node)


def write_master_pillar(c, project_extra=None, other_projects=None, node_extra=None, node_projects=None):
    """Rewrite the pillar files without refreshing the minions: the runner compiles the master's
    pillar afresh on every call, and deploy.prepare compiles the node's afresh too."""
    c.project_extra = project_extra or {}
    c.other_projects = other_projects or {}
    c.node_extra = node_extra or {}
    c.node_projects = node_projects or {}
    c.write_pillar()


def set_pillar_on(c, node, **kwargs):
    """Rewrite the pillar and refresh it on the one minion whose in-memory pillar matters
    (deploy.switch reads restart/checks from it), not on all of them."""
    write_master_pillar(c, **kwargs)
    ret = c.salt.run("saltutil.refresh_pillar", "wait=True", minion_tgt=node)
    assert ret.returncode == 0, ret


def fault(count=1):
    TALLY["faults injected"] += count


def survived(count=1):
    TALLY["faults survived, nothing lost"] += count


def pro_env(**overrides):
    env = sandbox_pillar.default_envs()["pro"]
    env.update(overrides)
    return env


NODE_SIDE = {"root", "user", "group", "restart", "checks", "config", "files", "shared", "keep_releases"}


@pytest.fixture
def fresh(cluster):
    """clean_cluster, minus its pillar refresh on every minion when the minions' pillar is still
    the default one: the runner compiles the master's pillar afresh on every call, and only the
    node-side keys (``NODE_SIDE``, node files) matter to the minions.  On this loaded 2-core
    machine ``saltutil.refresh_pillar`` on '*' costs 5-15 s per test."""
    c = cluster
    dirty = bool(c.node_extra or c.node_projects or NODE_SIDE & set(c.project_extra))
    c.node_extra, c.project_extra, c.other_projects, c.node_projects = {}, {}, {}, {}
    c.write_pillar()
    if dirty:
        c.refresh_pillar()
    for env in ("pro", "stg"):
        for path in (lock_path(c, env), detached_path(c, env)):
            if os.path.exists(path):
                os.unlink(path)
    for node in WEB:
        c.lb.command(f"set server rainbow/{node} state ready")
    yield c


def no_response(error):
    """How a silent minion is reported (the runner's own text, or Salt's)."""
    text = str(error).lower()
    return "no response" in text or "did not return" in text


def slow_only(ret):
    """Every failed node merely did not answer in time (a live minion on a loaded machine)."""
    nodes = (ret.data or {}).get("nodes") or {}
    failed = [v for v in nodes.values() if v.get("result") == "failed"]
    return bool(failed) and all("Minion did not return" in str(v.get("error")) for v in failed)


def run_retrying(c, fun, **kwargs):
    """For runs whose fault is not a silent minion: run again once if the only failures were live
    minions too slow for the session's deploy_timeout (5 s) + gather_job_timeout (5 s) on this
    loaded machine; counted in the tally, so the report can say how often."""
    ret = run(c, fun, **kwargs)
    if ret.returncode != 0 and slow_only(ret) and all(c.minions[n].is_running() for n in c.minions):
        TALLY["runs retried: a live minion did not answer in time"] += 1
        ret = run(c, fun, **kwargs)
    return ret


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    yield TALLY
    lines = ["", "fault-injection tally (tests/integration/test_faults.py):"]
    lines += [f"  {key}: {value}" for key, value in TALLY.items()]
    text = "\n".join(lines) + "\n"
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman:
        with capman.global_and_fixture_disabled():
            print(text, flush=True)
    else:  # pragma: no cover
        print(text, flush=True)


@pytest.fixture(scope="module")
def stg(cluster):
    """A second env's own node: minion stg-1 (grains env: stg), with its own root and PHP node."""
    addr = f"{NET}.20"
    root = os.path.join(cluster.work, "nodes", "stg-1", "rainbow")
    os.makedirs(root, exist_ok=True)
    for part in ("nodes", "nodes/stg-1"):
        os.chmod(os.path.join(cluster.work, part), 0o755)
    php = web.PhpNode("stg-1", addr, root, os.path.join(cluster.work, "svc", "stg-1"), user=USER)
    minion = cluster.master.salt_minion_daemon(
        "stg-1", overrides={"grains": {"roles": ["rainbow"], "env": "stg"}, "log_level_logfile": "info"}
    )
    try:
        # independent: the PHP node and the minion start at the same time
        in_parallel(lambda start: start(), [php.start, lambda: minion.start(start_timeout=120)])
        node = sandbox_pillar.node_pillar(root, addr, php.reload_command())
        yield types.SimpleNamespace(minion=minion, php=php, root=root, addr=addr,
                                    node_projects={"stg-1": {"rainbow": node}})
    finally:
        minion.terminate()
        cluster.master.salt_key_cli().run("--yes", "--delete", "stg-1")
        php.stop()


def stg_current(stg):
    link = os.path.join(stg.root, "current")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


# --------------------------------------------------------------------------- bad input


BAD_VALUES = [
    "rain/bow",
    "..",
    "rain bow",
    f"x;touch {PWNED}",
    f"$(touch {PWNED})",
    f"`touch {PWNED}`",
]


def test_bad_names_are_refused_and_never_reach_a_shell(fresh):
    c = fresh
    before = snapshot(c)
    count = len(history(c))
    cases = []
    for value in BAD_VALUES:
        cases.append((("deploy.release", {"project": value, "env": "pro"}), "invalid project name"))
        cases.append((("deploy.release", {"project": "rainbow", "env": value}), "invalid env name"))
        cases.append((("deploy.rollback", {"project": "rainbow", "env": "pro", "to": value}), "invalid release"))
    for value in ["/etc/passwd", "..", "a/../b", "v1.0.0 x", f"x;touch {PWNED}", f"$(touch {PWNED})",
                  f"`touch {PWNED}`", f"--upload-pack=touch {PWNED}"]:
        cases.append((("deploy.release", {"project": "rainbow", "env": "pro", "ref": value}), "invalid ref"))
    cases += [
        (("deploy.release", {"project": "nope", "env": "pro"}), "unknown project 'nope'"),
        (("deploy.release", {"project": "rainbow", "env": "qa"}), "unknown env 'qa'"),
        (("deploy.rollback", {"project": "rainbow", "env": f"$(touch {PWNED})"}), "invalid env name"),
        (("deploy.unlock", {"project": "rainbow", "env": f"`touch {PWNED}`"}), "invalid env name"),
        (("deploy.releases", {"project": "rain/bow", "env": "pro"}), "invalid project name"),
        (("deploy.rollback", {"project": "rainbow", "env": "pro", "to": "x", "force": True}),
         "force=True is only for emergency=True"),
    ]
    TALLY["bad inputs tried"] += len(cases)
    results = run_in_one_process(c, [case for case, _ in cases])
    # a sample through the real salt-run: its exit code, and no shell anywhere on the way
    sample = [
        (("deploy.release", {"project": f"$(touch {PWNED})", "env": "pro"}), "invalid project name"),
        (("deploy.release", {"project": "rainbow", "env": f"`touch {PWNED}`"}), "invalid env name"),
        (("deploy.release", {"project": "rainbow", "env": "pro", "ref": f"x;touch {PWNED}"}), "invalid ref"),
        (("deploy.rollback", {"project": "rainbow", "env": "pro", "to": "../../etc"}), "invalid release"),
    ]
    TALLY["bad inputs tried"] += len(sample)
    results += run_many(c, [case for case, _ in sample])
    problems = []
    for (case, message), ret in zip(cases + sample, results, strict=True):
        ok = ret.returncode == 2 and ret.data.get("result") == "refused" and message in str(ret.data.get("error"))
        if ok:
            TALLY["bad inputs refused cleanly"] += 1
        else:
            problems.append((case, ret.returncode, ret.data.get("error") or getattr(ret, "raw", None)))
    assert not problems, problems
    assert not os.path.exists(PWNED)
    assert snapshot(c) == before
    assert len(history(c)) == count  # refusals are not runs


def test_bad_pillar_and_batches_are_refused(fresh):
    c = fresh
    # the mirror is up to date before the parallel runs below
    assert run(c, "deploy.release", project="rainbow", env="pro", test=True).returncode == 0
    before = snapshot(c)
    base = sandbox_pillar.project_pillar(c.repo, {"driver": "none"})
    broken = {
        "noroot": ({k: v for k, v in base.items() if k != "root"}, "pillar is missing 'root'"),
        "norepo": ({k: v for k, v in base.items() if k != "repo"}, "pillar is missing 'repo'"),
        "noenvs": ({k: v for k, v in base.items() if k != "envs"}, "pillar is missing 'envs'"),
        "relroot": ({**base, "root": "data/www/rainbow"}, "must be an absolute path other than '/'"),
        "slashroot": ({**base, "root": "/"}, "must be an absolute path other than '/'"),
        "dslashroot": ({**base, "root": "//"}, "must be an absolute path other than '/'"),
    }
    batches = {"b0": 0, "bneg": -1, "b150": "150%", "babc": "abc"}
    envs = {name: pro_env(stages=[{"name": "gray", "target": "G@region:east", "batch": 1},
                                   {"name": "all", "batch": batch}])
            for name, batch in batches.items()}
    write_master_pillar(c, project_extra={"envs": envs}, other_projects={k: v for k, (v, _) in broken.items()})
    cases = [(("deploy.release", {"project": name, "env": "pro"}), message) for name, (_, message) in broken.items()]
    cases += [(("deploy.release", {"project": "rainbow", "env": name}), f"batch {batch!r} must be")
              for name, batch in batches.items()]
    TALLY["bad inputs tried"] += len(cases)
    results = run_in_one_process(c, [case for case, _ in cases])
    problems = []
    for (case, message), ret in zip(cases, results, strict=True):
        error = str(ret.data.get("error") or ret.raw)
        ok = ret.returncode == 2 and ret.data.get("result") == "refused" and message in error
        # a configuration error is a clear refusal, not an "unexpected error" with a traceback in the log
        ok = ok and "unexpected error" not in error
        if ok:
            TALLY["bad inputs refused cleanly"] += 1
        else:
            problems.append((case, ret.returncode, ret.data.get("result"), error[:300]))
    assert not problems, problems
    assert snapshot(c) == before
    for name in batches:
        assert not os.path.exists(lock_path(c, name))


def test_bad_config_sources_fail_prepare_and_change_nothing(fresh):
    c = fresh
    new_version(c)
    before = snapshot(c)
    outside = f"/tmp/dpl-evil-{uuid.uuid4().hex[:8]}.ini"
    ini = "config/app.ini"
    cases = [
        # node -> (its own config, expected message)
        ({"pre-1": {"config": {"../" * 8 + outside.lstrip("/"): {"source": "config/app.ini.example"}}}},
         "pre-1", "must not contain '..'"),
        ({"web-1": {"config": {ini: {"source": "../../../../../../etc/passwd"}}}}, "web-1", "must not contain '..'"),
        ({"web-2": {"config": {ini: {"source": "/etc/passwd"}}}}, "web-2", "must be a relative path inside the release"),
        ({"web-3": {"config": {ini: {"source": "salt://nope/app.ini.example"}}}}, "web-3", "does not exist on the master"),
    ]
    node_extra = {}
    for extra, _, _ in cases:
        node_extra.update(extra)
    write_master_pillar(c, node_extra=node_extra)  # deploy.prepare compiles the node's pillar afresh
    TALLY["bad inputs tried"] += len(cases)
    ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 1, ret.stdout[-2000:]
    assert "nothing was switched" in ret.data["error"]
    for _, node, message in cases:
        assert node in ret.data["error"]
        assert ret.data["nodes"][node]["result"] == "failed"
        assert message in ret.data["nodes"][node]["error"], (node, ret.data["nodes"][node])
        TALLY["bad inputs refused cleanly"] += 1
    assert snapshot(c) == before  # failed everywhere: nothing prepared, nothing switched
    # a source reached through a symlink of the release (a shared dir) resolves outside it
    write_master_pillar(c, node_extra={"web-1": {"config": {ini: {"source": "storage/logs/app.ini.example"}}}})
    planted = os.path.join(c.root("web-1"), "shared", "storage", "logs", "app.ini.example")
    os.makedirs(os.path.dirname(planted), exist_ok=True)
    with open(planted, "w", encoding="utf-8") as fh:
        fh.write("stolen = {{ pillar['rainbow_secrets']['pay_key'] }}\n")
    TALLY["bad inputs tried"] += 1
    try:
        again = run_retrying(c, "deploy.release", project="rainbow", env="pro")
    finally:
        os.unlink(planted)
    assert again.returncode == 1, again.stdout[-2000:]
    assert "resolves outside the release" in again.data["nodes"]["web-1"]["error"]
    assert "web-1" in again.data["error"]
    TALLY["bad inputs refused cleanly"] += 1
    assert not os.path.exists(outside)
    after = snapshot(c)
    # web-1 refused it; the other nodes keep the prepared (never switched) release
    assert after["current"] == before["current"] and after["lb"] == before["lb"]
    assert after["dirs"]["web-1"] == before["dirs"]["web-1"]
    for node in NODES:
        assert not [d for d in c.release_dirs(node) if d.startswith(".")], c.release_dirs(node)
    assert [h["result"] for h in history(c)[-2:]] == ["failure", "failure"]


# --------------------------------------------------------------------------- the lock


def test_five_releases_at_once_one_runs_and_another_env_runs_beside(fresh, stg):
    c = fresh
    new_version(c)
    stg_env = {"branch": "master", "preprod": "stg-1"}  # its own node, not behind the project's LB
    set_pillar_on(c, "stg-1", project_extra={"envs": {"stg": stg_env}}, node_projects=stg.node_projects)
    # the mirror already has the new commit: the concurrent fetches below have nothing to update
    # (concurrent fetches that do are test_concurrent_fetches_of_one_mirror_do_not_fail)
    assert run(c, "deploy.release", project="rainbow", env="pro", test=True).returncode == 0
    before = c.currents()
    count = len(history(c))
    fault(2)  # five releases of one env at once; a second env at the same time
    procs = [spawn(c, "deploy.release", project="rainbow", env="pro") for _ in range(5)]
    other = spawn(c, "deploy.release", project="rainbow", env="stg")
    started = {p.pid: p.started for p in procs + [other]}
    both_locked = False
    unlock = None
    done = {}
    try:
        while len(done) < 6:
            locks = (os.path.exists(lock_path(c)), os.path.exists(lock_path(c, "stg")))
            both_locked = both_locked or all(locks)
            if unlock is None and locks[0]:
                unlock = spawn(c, "deploy.unlock", project="rainbow", env="pro")  # a live lock: refused
            for proc in procs + [other]:
                if proc.pid not in done and proc.poll() is not None:
                    done[proc.pid] = (time.monotonic(), os.path.exists(lock_path(c)))
            time.sleep(0.02)
    finally:
        results = [finish(p) for p in procs]
        stg_ret = finish(other)
        unlock_ret = finish(unlock) if unlock else None
    winners = [r for r in results if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    summary = [(r.pid, r.returncode, r.data.get("result"), str(r.data.get("error"))[:400],
                {n: v.get("error", "")[:200] for n, v in (r.data.get("nodes") or {}).items() if v.get("error")})
               for r in results + [stg_ret]]
    assert len(winners) == 1, summary
    winner = winners[0]
    assert winner.data["result"] == "success", winner.stdout[-2000:]
    release = winner.data["release"]
    holders = set()
    for r in losers:
        assert r.returncode == 3 and r.data["result"] == "refused", r.stdout[-1000:]
        error = r.data["error"]
        assert "rainbow/pro is locked: release by root" in error, error
        assert f"pid {winner.pid})" in error, (winner.pid, error)  # names the holder
        holders.add(error.split(" since ")[0])
        # refused at once: while the winner still held the lock
        assert done[r.pid][1], "a refused run ended only after the winner had finished"
        assert done[r.pid][0] - started[r.pid] < done[winner.pid][0] - started[winner.pid]
    assert len(holders) == 1, holders
    assert unlock_ret is not None and unlock_ret.returncode == 3
    assert "held by a running release" in unlock_ret.data["error"]
    # the other env ran beside it
    assert stg_ret.returncode == 0, stg_ret.stdout[-2000:]
    assert both_locked, "the two envs never held their locks at the same time"
    stg_release = stg_ret.data["release"]
    assert stg_release.startswith("rainbow_stg_") and stg_current(stg) == stg_release
    assert c.currents() == {n: release for n in NODES}
    assert before != c.currents()
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert not os.path.exists(lock_path(c)) and not os.path.exists(lock_path(c, "stg"))
    new = history(c)[count:]
    assert sorted((h["env"], h["result"]) for h in new) == [("pro", "success"), ("stg", "success")], new
    survived(2)


def test_concurrent_fetches_of_one_mirror_do_not_fail(fresh):
    """Two envs of one project started together right after a push: both fetch the runner's
    mirror of the project at the same moment (test=True runs: build step 1 only, no lock).
    Neither may fail with git's "cannot lock ref"."""
    c = fresh
    write_master_pillar(c, project_extra={"envs": {"stg": {"branch": "master", "preprod": "stg-1"}}})
    rounds = 5
    _VERSION[1] += 1
    major = 100 + _VERSION[1]  # the script tags v<major>.<round>.0: unique names
    fault(rounds)
    proc = subprocess.run([sys.executable, "-c", _FETCH_RACE_SCRIPT, c.master.config["conf_file"], c.repo,
                           str(major), str(rounds)], capture_output=True, text=True, timeout=300)
    OUTPUTS.append(("fetch race", proc.stdout, proc.stderr))
    assert "@@@" in proc.stdout, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    results = json.loads(proc.stdout.split("@@@", 1)[1])
    assert len(results) == 4 * rounds
    failed = [r for r in results if r[1] is not None]
    survived(rounds - len({i // 4 for i, r in enumerate(results) if r[1] is not None}))
    assert not failed, failed


def test_an_env_whose_nodes_are_not_behind_the_project_lb(fresh, stg):
    """An env with its own nodes and `lb: {driver: none}` releases them without touching the
    project's load balancer; without that override the haproxy backend has no stg-1 and the
    release is refused before anything changes."""
    c = fresh
    env = {"branch": "master", "target": "G@env:stg", "stages": [{"name": "all", "batch": 1}]}
    set_pillar_on(c, "stg-1", project_extra={"envs": {"stg": env}}, node_projects=stg.node_projects)
    before_stg = stg_current(stg)
    lb_before = c.lb_states()
    TALLY["bad inputs tried"] += 1
    ret = run(c, "deploy.release", project="rainbow", env="stg")
    assert ret.returncode == 1
    assert "stg-1" in ret.data["error"] and "haproxy" in ret.data["error"], ret.data["error"]
    assert stg_current(stg) == before_stg and c.lb_states() == lb_before
    TALLY["bad inputs refused cleanly"] += 1
    write_master_pillar(c, project_extra={"envs": {"stg": {**env, "lb": {"driver": "none"}}}},
                        node_projects=stg.node_projects)
    ret = run(c, "deploy.release", project="rainbow", env="stg")
    assert ret.returncode == 0, ret.data.get("error") or ret.stdout[-2000:]
    assert stg_current(stg) == ret.data["release"]
    assert "out of the LB" not in (ret.stdout + ret.stderr)
    assert c.lb_states() == lb_before


# --------------------------------------------------------------------------- the runner killed


def _kill_when(c, proc, predicate, what):
    try:
        wait_for(lambda: proc.poll() is not None or predicate(), timeout=90, what=what)
        assert proc.poll() is None, "the release ended before it could be killed"
        assert predicate()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
            proc.stderr.close()


def _killed_in_two_node_batch(c, maint):
    """Start a release whose stage `all` is one batch [web-2, web-3] (web-2's restart is slow),
    with `maint` put in maint by an operator first; SIGKILL the runner once both are detached
    and web-2 is switched; wait for web-2's own job to end.  Returns (old currents, killed release)."""
    stages = [{"name": "gray", "target": "G@region:east", "batch": 1}, {"name": "all", "batch": 2}]
    reload2 = c.php["web-2"].reload_command()
    set_pillar_on(c, "web-2", project_extra={"envs": {"pro": {"stages": stages}}},
                  node_extra={"web-2": {"restart": [{"cmd": "sleep 4"}, {"cmd": reload2}]}})
    old = c.currents()
    c.lb.command(f"set server rainbow/{maint} state maint")
    prior = {"web-2": "ready", "web-3": "ready", maint: "maint"}
    fault()
    proc = spawn(c, "deploy.release", project="rainbow", env="pro")
    _kill_when(c, proc, lambda: lb_record(c) == prior and c.current("web-2") != old["web-2"],
               "web-2 and web-3 detached, web-2 switched")
    killed = c.current("web-2")
    with open(detached_path(c), encoding="utf-8") as fh:
        assert json.load(fh) == ["web-2", "web-3"]
    assert c.lb_states() == {"web-1": "ready", "web-2": "maint", "web-3": "maint"}
    # the nodes' own job ends by itself (restart, checks, status); every node is on a whole release
    wait_for(lambda: (meta(c, "web-2", killed) or {}).get("status") in ("good", "bad"), timeout=60,
             what="web-2's switch job to end")
    assert c.current("pre-1") == c.current("web-1") == c.current("web-3") == killed
    for node in NODES:
        assert_whole(c, node, {old[node], killed})
    assert lb_record(c) == prior
    return old, killed


def test_killed_runner_then_unlock_restores_the_lb_and_keeps_operator_maint(fresh):
    c = fresh
    ensure_released(c)
    new_version(c)
    try:
        _, killed = _killed_in_two_node_batch(c, maint="web-3")
        shown = run(c, "deploy.lock_status", project="rainbow", env="pro")
        assert shown.returncode == 0
        assert shown.data["locked"] is True and shown.data["alive"] is False
        assert shown.data["detached"] == ["web-2", "web-3"]
        ret = run(c, "deploy.unlock", project="rainbow", env="pro")
        assert ret.returncode == 0, ret.stdout[-2000:]
        assert ret.data["result"] == "cleared"
        assert any("took over a stale lock of release by root" in w for w in ret.data["warnings"]), ret.data
        assert any("restored LB state of web-2, web-3" in w for w in ret.data["warnings"]), ret.data
        # back in their prior state: web-2 ready, the operator's web-3 stays in maint
        assert c.lb_states() == {"web-1": "ready", "web-2": "ready", "web-3": "maint"}
        assert lb_record(c) == {}
        assert not os.path.exists(lock_path(c)) and not os.path.exists(detached_path(c))
        assert c.currents() == {n: killed for n in NODES}
        last = history(c)[-1]
        assert last["result"] == "interrupted" and last["env"] == "pro" and last["kind"] == "release"
        again = run(c, "deploy.unlock", project="rainbow", env="pro")
        assert again.returncode == 0 and again.data["locked"] is False
        survived()
    finally:
        c.lb.command("set server rainbow/web-3 state ready")


def test_killed_runner_then_next_release_takes_over_and_keeps_operator_maint(fresh):
    c = fresh
    ensure_released(c)
    new_version(c)
    try:
        _killed_in_two_node_batch(c, maint="web-2")
        set_pillar_on(c, "web-2")
        new_version(c)
        ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 0, ret.stdout[-3000:]
        warnings = ret.data["warnings"]
        assert any("took over a stale lock of release by root" in w for w in warnings), warnings
        assert any("restored LB state of web-2, web-3" in w for w in warnings), warnings
        assert c.currents() == {n: ret.data["release"] for n in NODES}
        assert c.lb_states() == {"web-1": "ready", "web-2": "maint", "web-3": "ready"}
        assert {n: ret.data["nodes"][n]["lb"] for n in WEB} == c.lb_states()
        assert lb_record(c) == {}
        assert not os.path.exists(detached_path(c))
        assert [h["result"] for h in history(c)[-2:]] == ["interrupted", "success"]
        survived()
    finally:
        c.lb.command("set server rainbow/web-2 state ready")


# --------------------------------------------------------------------------- minions down


def test_minion_down_before_the_release(fresh):
    c = fresh
    ensure_released(c)
    old = c.currents()
    new_version(c)
    fault(2)
    c.minions["web-2"].terminate()
    try:
        # max_failures 0: stops before anything is switched
        ret = run(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 1
        assert "prepare failed on web-2: nothing was switched" in ret.data["error"]
        assert no_response(ret.data["nodes"]["web-2"]["error"])
        assert c.currents() == old
        assert c.lb_states() == {n: "ready" for n in WEB}
        assert history(c)[-1]["result"] == "failure"
        assert not os.path.exists(lock_path(c)) and not os.path.exists(detached_path(c))
        survived()
        # max_failures 1: goes on without web-2
        write_master_pillar(c, project_extra={"envs": {"pro": {"max_failures": 1}}})
        ret = run(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 1  # not every node has the release
        nodes = ret.data["nodes"]
        assert nodes["web-2"]["result"] == "failed" and no_response(nodes["web-2"]["error"])
        assert "web-2" in (ret.stdout + ret.stderr)
        release = ret.data["release"]
        assert {n: c.current(n) for n in NODES} == {**{n: release for n in NODES}, "web-2": old["web-2"]}
        assert all(nodes[n]["result"] == "ok" for n in NODES if n != "web-2")
        # web-2 was never taken out: it still serves its release
        assert c.lb_states() == {n: "ready" for n in WEB}
        assert history(c)[-1]["release"] == release
        assert not os.path.exists(detached_path(c)) and lb_record(c) == {}
        survived()
    finally:
        restart_minion(c, "web-2")


def test_minion_stopped_in_the_middle_of_its_batch(fresh):
    c = fresh
    ensure_released(c)
    old = c.currents()
    new_version(c)
    reload2 = c.php["web-2"].reload_command()
    set_pillar_on(c, "web-2", node_extra={"web-2": {"restart": [{"cmd": "sleep 8"}, {"cmd": reload2}]}})
    fault()
    proc = spawn(c, "deploy.release", project="rainbow", env="pro")
    try:
        wait_for(lambda: proc.poll() is not None or (lb_record(c).get("web-2") and c.current("web-2") != old["web-2"]),
                 timeout=90, what="web-2 detached and switched")
        assert proc.poll() is None
        c.minions["web-2"].terminate()
        ret = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        restart_minion(c, "web-2")
    assert ret.returncode == 1, ret.stdout[-2000:]
    new = ret.data["release"]
    assert "web-2" in ret.data["error"] and "max_failures=0" in ret.data["error"], ret.data["error"]
    assert ret.data["nodes"]["web-2"]["result"] == "failed"
    assert no_response(ret.data["nodes"]["web-2"]["error"])
    # the rollout stopped: preprod and gray have it, web-3 was not reached
    assert c.current("pre-1") == new and c.current("web-1") == new
    assert c.current("web-3") == old["web-3"]
    assert "result" not in ret.data["nodes"].get("web-3", {})
    assert_whole(c, "web-2", {old["web-2"], new})
    status = (meta(c, "web-2", c.current("web-2")) or {}).get("status")
    print(f"web-2 after its minion died mid-switch: current {'new' if c.current('web-2') == new else 'old'}, "
          f"status {status}")
    try:
        # web-2's outcome is unknown (its switch may have happened without restart and checks):
        # it stays out of the LB and the summary says so; nothing else is left detached
        assert c.lb_states() == {"web-1": "ready", "web-2": "maint", "web-3": "ready"}
        assert {n: ret.data["nodes"][n]["lb"] for n in WEB} == c.lb_states()
        assert not os.path.exists(lock_path(c))
        assert history(c)[-1]["result"] == "failure"
        survived()
    finally:
        c.lb.command("set server rainbow/web-2 state ready")
        for record in lb_records(c):
            os.unlink(record)


def test_lb_minion_down_or_admin_socket_wrong_refused_before_any_switch(fresh):
    c = fresh
    new_version(c)
    before = snapshot(c)
    fault(2)
    c.minions["lb-1"].terminate()
    try:
        ret = run(c, "deploy.release", project="rainbow", env="pro")
    finally:
        restart_minion(c, "lb-1")
    assert ret.returncode == 1
    assert "load balancer (haproxy on lb-1)" in ret.data["error"] and no_response(ret.data["error"])
    assert snapshot(c) == before  # not even prepared anywhere
    assert history(c)[-1]["result"] == "failure"
    survived()
    write_master_pillar(c, project_extra={"lb": {"socket": "/tmp/nope.sock"}})
    ret = run(c, "deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 1
    assert "load balancer (haproxy on lb-1)" in ret.data["error"]
    assert "/tmp/nope.sock" in ret.data["error"] and "No such file" in ret.data["error"]
    assert snapshot(c) == before
    assert history(c)[-1]["result"] == "failure"
    survived()


# --------------------------------------------------------------------------- node and build faults


def test_node_faults_while_preparing_stop_before_any_switch(fresh):
    """Disk full on web-3 (its root on a small tmpfs, the artifact bigger than that), web-2's
    `current` a real directory, web-1's `current` pointing outside releases/: each is refused
    with its own message, nothing is overwritten or left half-written, nothing switches."""
    c = fresh
    ensure_released(c)
    new_version(c)
    cur1 = os.path.join(c.root("web-1"), "current")
    cur2 = os.path.join(c.root("web-2"), "current")
    saved1, saved2 = os.readlink(cur1), os.readlink(cur2)
    outside = os.path.join(c.work, "outside-release")
    os.makedirs(os.path.join(outside, "public"), exist_ok=True)
    mnt = os.path.join(c.work, "tmpfs-web-3")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", mnt], check=True)
    fault(3)
    try:
        os.unlink(cur1)
        os.symlink(outside, cur1)
        os.unlink(cur2)
        os.makedirs(os.path.join(cur2, "public"))
        with open(os.path.join(cur2, "public", "marker.txt"), "w", encoding="utf-8") as fh:
            fh.write("hand-made")
        before = snapshot(c)
        # deploy.prepare compiles the node's pillar afresh: no refresh needed
        write_master_pillar(c, project_extra={"build": ["head -c 600000 /dev/urandom > blob.bin"]},
                            node_extra={"web-3": {"root": mnt}})
        ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 1, ret.stdout[-2000:]
        assert "prepare failed on web-1, web-2, web-3: nothing was switched" in ret.data["error"], ret.data["error"]
        nodes = ret.data["nodes"]
        assert f"points to {outside}, outside" in nodes["web-1"]["error"], nodes["web-1"]
        assert "refusing to touch it" in nodes["web-1"]["error"]
        assert "is not a symlink: refusing to touch it" in nodes["web-2"]["error"], nodes["web-2"]
        assert "No space left" in nodes["web-3"]["error"], nodes["web-3"]
        # not overwritten
        assert os.readlink(cur1) == outside
        assert os.path.isdir(cur2) and not os.path.islink(cur2)
        with open(os.path.join(cur2, "public", "marker.txt"), encoding="utf-8") as fh:
            assert fh.read() == "hand-made"
        # no partial release on the full disk
        for sub in ("releases", "meta"):
            path = os.path.join(mnt, sub)
            assert not (os.listdir(path) if os.path.isdir(path) else []), (sub, os.listdir(path))
        assert not [n for n in os.listdir(mnt) if n.startswith(".")]
        assert not os.path.lexists(os.path.join(mnt, "current"))
        after = snapshot(c)
        assert after["current"] == before["current"] and after["lb"] == before["lb"]
        for node in ("web-1", "web-2", "web-3"):
            assert after["dirs"][node] == before["dirs"][node], node
        assert not [d for d in c.release_dirs("pre-1") if d.startswith(".")]
        assert history(c)[-1]["result"] == "failure"
        survived(3)
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)
        if os.path.islink(cur1):
            os.unlink(cur1)
        shutil.rmtree(cur2, ignore_errors=True)
        os.symlink(saved1, cur1)
        os.symlink(saved2, cur2)
        shutil.rmtree(outside)


def test_git_and_build_failures_stop_before_any_node_is_touched(fresh):
    c = fresh
    # the runner's cached mirror of the project exists
    if not os.path.isdir(os.path.join(c.state_dir, "git", "rainbow.git")):
        assert run(c, "deploy.release", project="rainbow", env="pro", test=True).returncode == 0
    count = len(history(c))
    cases = [  # the ref is resolved before the lock: an unknown one is bad input (2), an unreachable
        # repository a failure (1), neither leaves a history record; a build that fails (after the lock) does
        ({}, {"ref": "v9.9.9-nope"}, "git: unknown ref 'v9.9.9-nope'", 2),
        ({}, {"ref": "0123456789abcdef0123456789abcdef01234567"}, "git: unknown ref", 2),
        ({"build": ["echo build-broke >&2; exit 3"]}, {}, "build command failed (exit 3)", 1),
        # the runner keeps a mirror of the repository: a remote that is gone must still fail the fetch
        ({"repo": "/nonexistent/repo.git"}, {}, "git: cannot fetch /nonexistent/repo.git", 1),
    ]
    recorded = 1  # the build failure
    fault(len(cases))
    for project_extra, kwargs, message, code in cases:
        new_version(c)  # a commit never built: the build commands run
        before = snapshot(c)
        write_master_pillar(c, project_extra=project_extra)
        ret = run(c, "deploy.release", project="rainbow", env="pro", **kwargs)
        assert ret.returncode == code, (project_extra, kwargs, ret.stdout[-2000:])
        assert message in str(ret.data.get("error")), (project_extra, kwargs, ret.data.get("error"))
        if "build" in project_extra:
            assert "build-broke" in ret.data["error"]
        assert snapshot(c) == before, (project_extra, kwargs)
        assert code == 2 or history(c)[-1]["result"] == "failure"
        survived()
    assert len(history(c)) == count + recorded


# --------------------------------------------------------------------------- secrets


def _files_with(path, needles):
    """Files under path whose bytes (or, for tar.gz, members' bytes) contain any needle."""
    hits = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            try:
                if name.endswith((".tar.gz", ".tgz", ".tar")):
                    with tarfile.open(full) as tar:
                        for member in tar.getmembers():
                            if member.isfile():
                                data = tar.extractfile(member).read()
                                if any(n in data for n in needles):
                                    hits.append(f"{full}:{member.name}")
                    continue
                with open(full, "rb") as fh:
                    data = fh.read()
            except (OSError, tarfile.TarError):
                continue
            if any(n in data for n in needles):
                hits.append(full)
    return hits


def test_secrets_never_leak(fresh, event_listener):
    c = fresh
    started = time.time()
    new_version(c)
    ret = run_retrying(c, "deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-2000:]
    release = ret.data["release"]
    call(c, "*", "deploy.releases", "rainbow")
    call(c, "web-1", "deploy.info", "rainbow", release)
    run(c, "deploy.releases", project="rainbow", env="pro")
    run(c, "deploy.history", project="rainbow", env="pro")
    run(c, "deploy.stats", project="rainbow")
    secrets = list(SECRETS.values())
    needles = [s.encode() for s in secrets]
    # runner output and job returns of every command of this module
    leaked = [what for what, out, err in OUTPUTS if any(s in out or s in err for s in secrets)]
    assert not leaked, leaked
    # events on the master bus during this release
    events = event_listener.get_events([(c.master.id, "*")], after_time=started)
    assert len(events) > 10
    assert not [e.tag for e in events if any(s in json.dumps(e.full_data, default=str) for s in secrets)]
    # the master's job cache, history, artifacts; master and minion logs
    master = c.master.config
    places = [os.path.join(master["cachedir"], "jobs"), os.path.join(c.state_dir, "history")]
    places += [os.path.join(root, "deploy_artifacts") for root in master["file_roots"]["base"]]
    assert any(os.listdir(p) for p in places[2:] if os.path.isdir(p))
    logs = [master["log_file"]] + [m.config["log_file"] for m in c.minions.values()]
    logs += glob.glob(os.path.join(c.work, "salt", "stg-1", "logs", "*"))
    hits = [h for p in places for h in _files_with(p, needles)]
    for log_file in logs:
        with open(log_file, "rb") as fh:
            if any(n in fh.read() for n in needles):
                hits.append(log_file)
    assert not hits, hits
    assert all(os.path.getsize(p) > 0 for p in logs[:2])
    # on the nodes: only rendered config files hold them, 0640 or stricter, root's, group www-data
    www = pwd.getpwnam(USER).pw_gid
    roots = {node: c.root(node) for node in NODES}
    stg_root = os.path.join(c.work, "nodes", "stg-1", "rainbow")
    if os.path.isdir(os.path.join(stg_root, "releases")):
        roots["stg-1"] = stg_root
    for node, root in roots.items():
        rendered = _files_with(root, needles)
        if node in NODES:
            assert os.path.join(root, "releases", release, "config", "app.ini") in rendered
        for path in rendered:
            st = os.stat(path)
            assert path.startswith(os.path.join(root, "releases") + "/") and "/config/" in path, path
            assert st.st_mode & 0o137 == 0, (path, oct(st.st_mode))
            assert (st.st_uid, st.st_gid) == (0, www), path


def test_secrets_never_leak_from_a_failing_template(fresh, event_listener):
    """A committed template that fails on a secret's value (as a dict key) makes
    prepare fail on every node; the secret is in no output, event, history record or log."""
    c = fresh
    started = time.time()
    original = subprocess.run(["git", "--git-dir", c.repo, "show", "master:config/app.ini.example"],
                              capture_output=True, text=True, check=True).stdout
    leaky = "; leaks\nx = {{ {}[pillar.rainbow_secrets.sms_key] }}\ny = {{ 'a'.encode(pillar.rainbow_secrets.pay_key) }}\n"
    before = c.currents()
    new_version(c, files={"config/app.ini.example": leaky})
    try:
        ret = run(c, "deploy.release", project="rainbow", env="pro")
        assert ret.returncode != 0, ret.stdout[-2000:]
        assert "config config/app.ini: template error at line 2: UndefinedError" in ret.stdout, ret.stdout[-2000:]
        secrets = list(SECRETS.values())
        needles = [s.encode() for s in secrets]
        assert not any(s in ret.stdout or s in ret.stderr for s in secrets)
        events = event_listener.get_events([(c.master.id, "*")], after_time=started)
        assert events
        assert not [e.tag for e in events if any(s in json.dumps(e.full_data, default=str) for s in secrets)]
        master = c.master.config
        hits = [h for p in (os.path.join(master["cachedir"], "jobs"), os.path.join(c.state_dir, "history"))
                for h in _files_with(p, needles)]
        for log_file in [master["log_file"]] + [m.config["log_file"] for m in c.minions.values()]:
            with open(log_file, "rb") as fh:
                if any(n in fh.read() for n in needles):
                    hits.append(log_file)
        assert not hits, hits
        assert c.currents() == before  # nothing switched
    finally:
        new_version(c, files={"config/app.ini.example": original})
