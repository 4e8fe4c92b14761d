"""``python -m sandbox up|status|down``: a whole cluster in a local folder, and the main job on it.

up      start a salt-master, minions lb-1, pre-1, web-1..N, nginx + PHP-FPM per node,
        HAProxy in front, the sample repo; release it (`salt-run deploy.release`), show the
        site through the LB, add release v1.2.0, release again, show the site again,
        and print how to go on.  Exit 1 if any step fails (the sandbox stays up to inspect).
        --syndics N: a master of masters above N syndic masters, the minions split among them.
status  what runs, on which addresses, which release each node serves.
down    stop every daemon and service of the sandbox and remove its folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

from sandbox import console
from sandbox import repo as sample_repo
from sandbox.cluster import (DEFAULT_LB_PORT, DEFAULT_NET, DEFAULT_PATH, ENV, PROJECT, REPO_ROOT, Sandbox,
                             SandboxError, missing_requirements)

FETCHES = 4
RELEASE_TIMEOUT = 300


def say(text=""):
    print(text, flush=True)


def heading(text):
    say()
    say(f"==> {text}")


def _q(argv):
    return " ".join(shlex.quote(a) for a in argv)


def _path_args(box):
    return [] if box.path == os.path.abspath(DEFAULT_PATH) else ["--path", box.path]


def _python():
    """`python` if that is this interpreter on PATH, else the interpreter's full path."""
    found = shutil.which("python")
    same = found and os.path.realpath(found) == os.path.realpath(sys.executable) and \
        os.path.dirname(found) == os.path.dirname(sys.executable)
    return "python" if same else sys.executable


def _self_cmd(box, action):
    return _q([_python(), "-m", "sandbox", action, *_path_args(box)])


# --------------------------------------------------------------------------- steps of `up`


def run_release(box, number, master="master"):
    """salt-run deploy.release, output streamed; returns (ok, summary record from the history)."""
    argv = [*box.salt_cmd("salt-run", master), "deploy.release", f"project={PROJECT}", f"env={ENV}"]
    heading(f"release {number}: {_q(argv)}")
    before = len(read_history(box))
    started = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, text=True, bufsize=1)
    watchdog = threading.Timer(RELEASE_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        for line in condense(proc.stdout):
            say("    " + line)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if rc == -9:
        say(f"    (salt-run killed after {RELEASE_TIMEOUT}s)")
    wall = time.monotonic() - started
    records = read_history(box)
    record = records[-1] if len(records) > before else None  # this run's record (the runner's history file)
    ok = rc == 0 and (record is None or record.get("result") == "success")
    result = record.get("result") if record else "not in the history"
    say(f"release {number}: {'succeeded' if ok else 'FAILED'} (salt-run exit {rc}, result {result}, "
        f"{wall:.1f}s wall)")
    if record:
        say(f"release {number} timings: {format_timings(record)}")
        if record.get("error"):
            say(f"release {number} error: {record['error']}")
    return ok, record


def condense(lines):
    """salt-run's output without the noise: each progress event (nested `event:` block) as its
    message line, salt's "unclosed ..." resource warnings dropped; everything else as is."""
    in_event = False
    previous = ""
    for raw in lines:
        line = raw.rstrip("\n")
        text = line.strip()
        if text == "event:" and not line.startswith("    "):
            in_event = True
        elif in_event:
            if previous == "message:":
                yield text
            elif previous == "suffix:":
                in_event = False
        elif "unclosed " in text and ("destroy()" in text or text.startswith("[WARNING ]")):
            pass
        else:
            yield line
        previous = text


def read_history(box):
    """The runner's history records (``<cachedir>/deploy/history/<project>.jsonl`` on the master, or etcd)."""
    return box.read_history()


def format_timings(record):
    t = record.get("timings") or {}
    parts = [f"total {record.get('seconds')}s"]
    for key in ("build", "prepare", "preprod"):
        if key in t:
            parts.append(f"{key} {t[key]}s")
    for b in t.get("batches") or []:
        parts.append(f"{b.get('stage')}#{b.get('batch')} ({','.join(b.get('nodes') or [])}) {b.get('seconds')}s")
    return ", ".join(parts)


def show_site(box, expect_version):
    """GET the site through the LB; True if every answer is 200 and shows ``expect_version``."""
    heading(f"the site through the load balancer {box.lb.url}")
    states = box.wait_lb_up()
    say("    HAProxy health: " + ", ".join(f"{n} {s}" for n, s in states.items()))
    good = True
    for _ in range(FETCHES):
        try:
            status, server, first, release = box.fetch()
        except OSError as exc:
            say(f"    GET {box.lb.url} -> {exc}")
            good = False
            continue
        say(f"    GET {box.lb.url} -> {status} from {server}: {first!r}  (release {release})")
        good = good and status == 200 and first == f"{PROJECT} {expect_version}"
    say(f"LB served {PROJECT} {expect_version}: {'yes' if good else 'NO'}")
    return good


def usage(box):
    run = _q(box.salt_cmd("salt-run"))
    salt = _q(box.salt_cmd("salt"))
    heading(f"the sandbox is running in {box.path}")
    lines = [
        ("the site (through HAProxy)", f"curl -s {box.lb.url}"),
        ("one node directly", f"curl -s {box.php['web-1'].url}"),
        ("history of releases/rollbacks", f"{run} deploy.history project={PROJECT} env={ENV}"),
        ("releases on every node", f"{run} deploy.releases project={PROJECT} env={ENV}"),
        ("roll back (last good release)", f"{run} deploy.rollback project={PROJECT} env={ENV}"),
        ("emergency rollback", f"{run} deploy.rollback project={PROJECT} env={ENV} emergency=True"),
        ("statistics", f"{run} deploy.stats project={PROJECT}"),
        ("release again", f"{run} deploy.release project={PROJECT} env={ENV}"),
        ("a node's own view", f"{salt} '*' deploy.releases {PROJECT}"),
        *([("the same from the second master", f"{_q(box.salt_cmd('salt-run', 'master-b'))} deploy.history "
            f"project={PROJECT} env={ENV}")] if box.masters == 2 else []),
        ("a new version in the repo",
         f"cd {shlex.quote(REPO_ROOT)} && " + _q([_python(), "-c", f"from sandbox import repo; "
                                                  f"repo.add_release({json.dumps(box.repo)}, \"v1.3.0\")"])),
        ("what runs", _self_cmd(box, "status")),
        ("stop and remove everything", _self_cmd(box, "down")),
    ]
    width = max(len(a) for a, _ in lines)
    for what, cmd in lines:
        say(f"  {what:<{width}}  {cmd}")
    say(f"  (pillar: {box.pillar_dir}; logs: {box.log_dir}; nodes: {os.path.join(box.path, 'nodes')})")
    say()
    say(f"web console (salt-api): {box.console_url}")
    logins = ", ".join(f"{user} / {password}" for user, password in console.DEMO_USERS.items())
    say(f"  demo logins (file eauth, {box.users_file}): {logins}")
    say("  operator may run every deploy.* runner; viewer only deploy.projects, refs, releases, history, stats "
        "and lock_status")


# --------------------------------------------------------------------------- commands


def cmd_up(args):
    started = time.monotonic()
    problems = missing_requirements()
    if problems:
        raise SandboxError("this machine cannot run the sandbox yet:\n  " + "\n  ".join(problems))
    box = Sandbox(args.path, web=args.web, lb_port=args.lb_port, net=args.net, out=say,
                  masters=args.masters, store=args.store, etcd_ttl=args.etcd_ttl, light=args.light,
                  classic=args.classic, syndics=args.syndics)
    old = Sandbox.load(box.path, out=say)
    if old is not None:
        if old.anything_running():
            if not args.force:
                say(f"a sandbox is already running in {old.path} (see {_self_cmd(old, 'status')}); "
                    f"stop it with {_self_cmd(old, 'down')} or recreate it with `up --force`")
                return 1
            say(f"--force: removing the running sandbox in {old.path}")
        else:
            say(f"removing the stopped sandbox left in {old.path}")
        old.stop()
        old.remove()
    elif os.path.exists(box.path) and (not os.path.isdir(box.path) or os.listdir(box.path)):
        say(f"{box.path} exists and is not a sandbox: choose another --path")
        return 1
    box.preflight()
    masters = f" x2 (127.0.0.1, {box.master_addr['master-b']})" if box.masters == 2 else ""
    if box.syndics:
        below = {n: ", ".join(m for m in box.minion_ids if box.syndic_of[m] == n) for n in box.syndic_names}
        masters = (" of masters (127.0.0.1) above syndic masters "
                   + ", ".join(f"{n} ({box.master_addr[n]}: {below[n]})" for n in box.syndic_names)
                   + ", each with its salt-syndic")
    heading(f"starting the sandbox in {box.path}: salt-master{masters}"
            f"{', etcd' if box.store == 'etcd' else ''}, minions {', '.join(box.minion_ids)}, "
            f"nginx + PHP-FPM on {', '.join(box.addr[n] for n in box.nodes)}:8080, HAProxy on {box.lb.url}")
    try:
        box.up()
    except BaseException:
        say("the sandbox did not come up; stopping what started (logs stay in "
            f"{box.log_dir}; {_self_cmd(box, 'down')} removes the folder)")
        box.stop()
        box.save_state("failed")
        raise
    up_seconds = time.monotonic() - started
    say(f"cluster up in {up_seconds:.1f}s")

    ok1, _ = run_release(box, 1)
    site1 = ok1 and show_site(box, "1.1.0")
    ok2 = site2 = False
    if ok1:
        heading("a new release in the repository: v1.2.0")
        sha = sample_repo.add_release(box.repo, "v1.2.0")
        say(f"    committed {sha[:10]} on master and tagged v1.2.0 in {box.repo}")
        # with two masters, the second release is made from the other one
        ok2, _ = run_release(box, 2, master=box.master_names[-1])
        site2 = ok2 and show_site(box, "1.2.0")
    usage(box)
    total = time.monotonic() - started
    ok = ok1 and site1 and ok2 and site2
    say()
    say(f"{'done' if ok else 'FAILED'}: cluster up in {up_seconds:.1f}s, whole run {total:.1f}s"
        + ("" if ok else " (the sandbox stays up for inspection)"))
    return 0 if ok else 1


def cmd_status(args):
    box = Sandbox.load(args.path, out=say)
    if box is None:
        say(f"no sandbox in {os.path.abspath(args.path or DEFAULT_PATH)}")
        return 1
    st = box.status()
    say(f"sandbox in {box.path} (state: {box.state.get('phase')}, updated {box.state.get('updated')})")
    if box.ports.get("api"):
        say(f"  web console: {box.console_url}")
    say(f"  salt (ports publish {st['ports'].get('publish')}, ret {st['ports'].get('ret')}, config {box.conf_dir}):")
    for name, pid in st["daemons"].items():
        label = box.daemon_label(name)
        say(f"    {label:<24} "
            f"{'running, pid ' + str(pid) if pid else 'NOT running'}")
    lb = st["lb"]
    say(f"  HAProxy {lb['url']} (admin socket {lb['socket']}): {'running' if lb['running'] else 'NOT running'}")
    for node, info in st["nodes"].items():
        lbs = f", LB {info['lb']}" if info["lb"] else ""
        say(f"    {node:<7} {info['url']:<26} {'running' if info['running'] else 'NOT running':<12}"
            f" current: {info['current'] or '-'}{lbs}")
    all_up = all(st["daemons"].values()) and lb["running"] and all(i["running"] for i in st["nodes"].values())
    say(f"  {'everything runs' if all_up else 'NOT everything runs'}; "
        f"{_q(box.salt_cmd('salt-run'))} deploy.history project={PROJECT} env={ENV}")
    return 0 if all_up else 1


def cmd_down(args):
    path = os.path.abspath(args.path or DEFAULT_PATH)
    box = Sandbox.load(path, out=say)
    if box is None:
        if not os.path.exists(path):
            say(f"no sandbox in {path}: nothing to do")
            return 0
        box = Sandbox(path, out=say)  # no state file: stop by command lines, then remove
    killed = box.stop()
    for pid, line in killed:
        say(f"killed leftover pid {pid}: {line}")
    left = box.leftovers()
    if left:
        say(f"still running after down: {left}")
        return 1
    box.remove()
    say(f"sandbox in {path} stopped and removed")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "status", "down"):
        p = sub.add_parser(name)
        p.add_argument("--path", default=None, help=f"sandbox folder (default {DEFAULT_PATH})")
        if name == "up":
            p.add_argument("--web", type=int, default=3, help="number of web nodes, 1-100 (default 3)")
            p.add_argument("--light", action=argparse.BooleanOptionalAction, default=None,
                           help="minions run jobs in threads (multiprocessing: False) and PHP-FPM has 1 worker "
                                "per node (default: on above 50 web nodes)")
            p.add_argument("--lb-port", type=int, default=DEFAULT_LB_PORT,
                           help=f"HAProxy port on 127.0.0.1 (default {DEFAULT_LB_PORT})")
            p.add_argument("--net", default=DEFAULT_NET,
                           help=f"first three octets of the nodes' loopback addresses (default {DEFAULT_NET}: "
                                "pre-1 on .10, web-1 on .11, ...)")
            p.add_argument("--force", action="store_true", help="recreate a sandbox that is already running")
            p.add_argument("--masters", type=int, default=1, choices=(1, 2),
                           help="deployment servers (2: hot/hot, needs --store etcd)")
            p.add_argument("--store", default="local", choices=("local", "etcd"),
                           help="where the lock and history live (etcd: a local etcd the sandbox starts)")
            p.add_argument("--syndics", type=int, default=0,
                           help="a master of masters above this many syndic masters (1-4), the minions split among "
                                "them; the runner runs on the master of masters (docs/syndics.md)")
            p.add_argument("--etcd-ttl", type=int, default=10, help="seconds a dead run's lock lives on (etcd)")
            p.add_argument("--classic", action="store_true",
                           help="the install route without the package: this repository in the master's file_roots, "
                                "then saltutil.sync_all, sync_runners, sync_utils and sync_output")
    args = parser.parse_args(argv)
    try:
        return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.command](args)
    except SandboxError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
