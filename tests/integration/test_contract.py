"""
The runner's contract with CI servers and operators, on the real cluster: arguments, exit codes,
one JSON document on stdout, and aborting a run with SIGTERM / SIGINT.

Uses the session cluster (``clean_cluster``).
"""

import json
import os
import signal
import subprocess
import time

import psutil

from sandbox import repo as sample_repo

from .conftest import NODES, WEB
from .test_faults import no_response, detached_path, finish, history, lb_record, lock_path, run_many, snapshot, spawn, wait_for

_VERSION = [11, 0]

OK, FAILED, BAD_INPUT, LOCKED, ABORTED = 0, 1, 2, 3, 4


def new_version(c):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(c.repo, tag)
    return tag


def salt_run(c, *args):
    """salt-run ... --out=json as a plain subprocess: (returncode, stdout, stderr).  Run again (twice at
    most) when the only failures were live minions too slow for the session's deploy_timeout on this
    loaded machine (as test_faults.run_retrying does)."""
    for _ in range(3):
        proc = subprocess.run(c.run_cli.cmdline(*args), capture_output=True, text=True, timeout=300)
        try:
            nodes = json.loads(proc.stdout).get("nodes") or {}
        except (ValueError, AttributeError):
            nodes = {}
        failed = [v for v in nodes.values() if v.get("result") == "failed"]
        slow = failed and all(no_response(v.get("error")) for v in failed)
        if proc.returncode != 1 or not slow or not all(m.is_running() for m in c.minions.values()):
            break
    return proc.returncode, proc.stdout, proc.stderr


def released(c):
    if None in c.currents().values():
        new_version(c)
        code, out, _ = salt_run(c, "deploy.release", "project=rainbow", "env=pro")
        assert code == 0, out[-2000:]


# --------------------------------------------------------------------------- item 1: arguments


def test_unknown_or_missing_arguments_are_refused_with_the_bad_input_code(clean_cluster):
    c = clean_cluster
    released(c)
    before = snapshot(c)
    count = len(history(c))
    cases = [
        ("deploy.release", {"project": "rainbow", "env": "pro", "batch": 2}, "batch", "project, env, ref, test, by"),
        ("deploy.release", {"project": "rainbow", "envv": "pro"}, "envv", "project, env, ref, test, by"),
        ("deploy.rollback", {"project": "rainbow", "env": "pro", "emergancy": True}, "emergancy",
         "project, env, to, emergency, force, allow_bad, test, by"),
        ("deploy.releases", {"project": "rainbow", "env": "pro", "node": "web-1"}, "node", "project, env"),
        ("deploy.history", {"project": "rainbow", "lmit": 5}, "lmit", "project, env, limit"),
        ("deploy.stats", {"project": "rainbow", "envs": "pro"}, "envs", "project, env"),
        ("deploy.unlock", {"project": "rainbow", "env": "pro", "forse": True}, "forse", "project, env, force, by"),
        ("deploy.unlock", {"project": "rainbow", "env": "pro", "show": True}, "show", "project, env, force, by"),
        ("deploy.lock_status", {"project": "rainbow", "env": "pro", "force": True}, "force", "project, env"),
    ]
    results = run_many(c, [(fun, kwargs) for fun, kwargs, _, _ in cases])
    problems = []
    for (fun, kwargs, bad, accepted), ret in zip(cases, results, strict=True):
        error = str(ret.data.get("error"))
        ok = (ret.returncode == BAD_INPUT and ret.data.get("result") == "refused"
              and f"unknown argument {bad!r}" in error and f"accepted: {accepted}" in error
              and "\n" not in error and "CLI Example" not in ret.stdout)
        if not ok:
            problems.append((fun, kwargs, ret.returncode, ret.stdout[-600:]))
    # a required argument missing: the same code, not Salt's usage text
    code, out, _ = salt_run(c, "deploy.release", "project=rainbow")
    if code != BAD_INPUT or "missing argument 'env'" not in out or "CLI Example" in out:
        problems.append(("release without env", code, out[-600:]))
    assert not problems, problems
    assert snapshot(c) == before
    assert len(history(c)) == count


# --------------------------------------------------------------------------- item 2: exit codes, JSON


def test_out_json_is_one_document_and_exit_codes_tell_locked_from_bad_input(clean_cluster):
    c = clean_cluster
    tag = new_version(c)
    code, out, err = salt_run(c, "deploy.release", "project=rainbow", "env=pro")
    assert code == OK, (out[-2000:], err[-2000:])
    doc = json.loads(out)  # the whole of stdout: exactly one JSON document
    assert doc["result"] == "success" and doc["retcode"] == OK
    assert doc["release"].startswith(f"rainbow_pro_{tag}_master_")
    assert set(doc["nodes"]) == set(NODES) and all(doc["nodes"][n]["result"] == "ok" for n in NODES)
    assert "out of the LB" in err  # the progress lines went to stderr
    # locked: exit 3, naming the holder
    me = psutil.Process()
    os.makedirs(os.path.dirname(lock_path(c)), exist_ok=True)
    with open(lock_path(c), "w", encoding="utf-8") as fh:
        json.dump({"kind": "release", "user": "alice", "host": "10.0.0.5", "jid": "1", "pid": me.pid,
                   "created": me.create_time(), "since": "2026-11-29T00:00:00+00:00"}, fh)
    try:
        code, out, _ = salt_run(c, "deploy.release", "project=rainbow", "env=pro")
        doc = json.loads(out)
        assert code == LOCKED, out
        assert doc["result"] == "refused" and doc["retcode"] == LOCKED
        assert "rainbow/pro is locked: release by alice from 10.0.0.5" in doc["error"]
    finally:
        os.unlink(lock_path(c))
    # bad input: exit 2
    code, out, _ = salt_run(c, "deploy.release", "project=rainbow", "env=p;ro")
    doc = json.loads(out)
    assert code == BAD_INPUT and doc["retcode"] == BAD_INPUT and "invalid env name" in doc["error"], out
    # an unknown ref is bad input too: exit 2 (tests/integration/test_pillar.py has every case)
    code, out, _ = salt_run(c, "deploy.release", "project=rainbow", "env=pro", "ref=v99.0.0")
    doc = json.loads(out)
    assert code == BAD_INPUT and doc["result"] == "refused" and "unknown ref" in doc["error"], out


# --------------------------------------------------------------------------- item 3: abort


def _abort_mid_batch(c, sig, fun, **kwargs):
    """Start a run whose first web batch (web-1) restarts slowly, with an operator's maint on web-1;
    send ``sig`` while web-1 is out of the LB and switched; return (finished run, seconds after the signal)."""
    c.lb.command("set server rainbow/web-1 state maint")
    node_extra = {"web-1": {"restart": [{"cmd": "sleep 5"}, {"cmd": c.php["web-1"].reload_command()}]}}
    c.set_pillar(node_extra=node_extra)
    before = c.currents()
    proc = spawn(c, fun, **kwargs)
    try:
        wait_for(lambda: proc.poll() is not None or (lb_record(c).get("web-1") and c.current("web-1") != before["web-1"]),
                 timeout=120, what="web-1 detached and switched")
        assert proc.poll() is None, proc.communicate()
        signalled = time.monotonic()
        proc.send_signal(sig)
        ret = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return ret, time.monotonic() - signalled, before


def _assert_aborted(c, ret, seconds, before, kind):
    assert ret.returncode == ABORTED, (ret.stdout[-2000:], ret.stderr[-2000:])
    doc = json.loads(ret.stdout)
    assert doc["result"] == "aborted" and doc["retcode"] == ABORTED
    assert "aborted" in doc["error"] and "SIG" in doc["error"]
    assert seconds < 60, seconds
    target = doc["release"]
    # the batch in flight finished; no new batch started
    assert c.current("pre-1") == target and c.current("web-1") == target
    assert c.current("web-2") == before["web-2"] and c.current("web-3") == before["web-3"]
    # the operator's maint on web-1 is kept; the others are in service
    assert c.lb_states() == {"web-1": "maint", "web-2": "ready", "web-3": "ready"}
    assert lb_record(c) == {}
    assert not os.path.exists(lock_path(c)) and not os.path.exists(detached_path(c))
    last = history(c)[-1]
    assert last["kind"] == kind and last["result"] == "aborted"


def test_sigterm_during_a_batch_finishes_it_restores_the_lb_and_records_aborted(clean_cluster):
    c = clean_cluster
    released(c)
    code, out, _ = salt_run(c, "deploy.stats", "project=rainbow", "env=pro")
    aborted_before = json.loads(out)["releases"].get("aborted", 0)
    new_version(c)
    try:
        ret, seconds, before = _abort_mid_batch(c, signal.SIGTERM, "deploy.release", project="rainbow", env="pro")
        _assert_aborted(c, ret, seconds, before, "release")
        code, out, _ = salt_run(c, "deploy.stats", "project=rainbow", "env=pro")
        assert json.loads(out)["releases"]["aborted"] == aborted_before + 1
        # the env is split (pre-1, web-1 new; web-2, web-3 old); a normal rollback brings everyone back (SIGINT test)
        ret, seconds, before = _abort_mid_batch(c, signal.SIGINT, "deploy.rollback", project="rainbow", env="pro")
        assert c.current("web-2") == before["web-2"]  # web-2/3 were on the target already or untouched
        assert ret.returncode == ABORTED, (ret.stdout[-2000:], ret.stderr[-2000:])
        assert history(c)[-1]["result"] == "aborted" and history(c)[-1]["kind"] == "rollback"
        assert c.lb_states() == {"web-1": "maint", "web-2": "ready", "web-3": "ready"}
        assert not os.path.exists(lock_path(c)) and not os.path.exists(detached_path(c))
    finally:
        c.lb.command("set server rainbow/web-1 state ready")
        c.set_pillar()
    # the next run goes through as usual: no stale lock, nothing to take over
    new_version(c)
    code, out, _ = salt_run(c, "deploy.release", "project=rainbow", "env=pro")
    assert code == OK, out[-2000:]
    assert "warnings" not in json.loads(out)
    assert all(c.current(n) == json.loads(out)["release"] for n in NODES)
    assert c.lb_states() == {n: "ready" for n in WEB}
