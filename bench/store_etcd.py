"""The etcd store against the local disk: lock latency, release and emergency-rollback wall time.

    .venv/bin/python bench/store_etcd.py [--path /tmp/dpl-i13] [--reps 3] [--locks 200]

Uses a running ``python -m sandbox up --masters 2 --store etcd`` sandbox given by ``--path``, or
brings one up (and down) in /tmp/dpl-bench-etcd.  The store is switched between runs by rewriting
``deploy_store`` in the first master's config (salt-run reads it at each call), so both stores
are measured on the same cluster in the same run, alternating which goes first:

- lock take + release, in-process, ``--locks`` times each (medians, ms);
- ``salt-run deploy.release ref=v1.2.0`` (an artifact and release dirs already there) followed by
  ``salt-run deploy.rollback emergency=True`` with the same store (so each store's record of the
  nodes is the one its own release wrote), ``--reps`` pairs per store (medians, s).
Goal: the etcd store at most 5 % slower than the local disk.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import saltext_deploy  # noqa: E402,F401  makes the runner's package importable as deploy_master
from deploy_master import store  # noqa: E402
from sandbox.cluster import ENV, PROJECT, Sandbox  # noqa: E402
from sandbox import repo as sample_repo  # noqa: E402


def lock_latency(opts, n):
    s = store.get(opts)
    times = []
    for i in range(n):
        started = time.perf_counter()
        lock = s.lock("benchlock", "pro", "release").acquire(str(i))
        lock.release()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, min(times) * 1000, max(times) * 1000


def set_store(box, kind):
    path = os.path.join(box.conf_dir, "master")
    with open(path, encoding="utf-8") as fh:
        conf = yaml.safe_load(fh)
    conf["deploy_store"] = kind
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(conf, fh)


def timed(box, *args):
    argv = [*box.salt_cmd("salt-run"), *args, f"project={PROJECT}", f"env={ENV}"]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", help="a running sandbox with --masters 2 --store etcd")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--locks", type=int, default=200)
    args = parser.parse_args()
    box = Sandbox.load(args.path) if args.path else None
    own = box is None
    if own:
        box = Sandbox("/tmp/dpl-bench-etcd", net="127.0.251", lb_port=8251, masters=2, store="etcd")
        box.up()
    try:
        if own or not any(r.get("release", "").startswith(f"{PROJECT}_{ENV}_v1.2.0") for r in box.read_history()):
            set_store(box, "etcd")
            timed(box, "deploy.release")
            sample_repo.add_release(box.repo, "v1.2.0")
            timed(box, "deploy.release")
        etcd_opts = {"deploy_store": "etcd", "id": "bench",
                     **{k: v for k, v in box.store_opts().items() if k != "deploy_store"}}
        with tempfile.TemporaryDirectory() as tmp:
            local_opts = {"deploy_store": "local", "deploy_state_dir": tmp, "cachedir": tmp}
            lock_latency(local_opts, 10), lock_latency(etcd_opts, 10)  # warm up
            locks = {"local": lock_latency(local_opts, args.locks), "etcd": lock_latency(etcd_opts, args.locks)}
        walls = {"local": {"release": [], "emergency": []}, "etcd": {"release": [], "emergency": []}}
        for kind in ("local", "etcd"):  # warm-up: each store's record of the nodes filled once
            set_store(box, kind)
            timed(box, "deploy.release", "ref=v1.2.0")
            timed(box, "deploy.rollback", "emergency=True")
        for rep in range(args.reps):
            for kind in (("local", "etcd") if rep % 2 == 0 else ("etcd", "local")):
                set_store(box, kind)
                walls[kind]["release"].append(timed(box, "deploy.release", "ref=v1.2.0"))
                walls[kind]["emergency"].append(timed(box, "deploy.rollback", "emergency=True"))
                print(f"rep {rep + 1} {kind}: release {walls[kind]['release'][-1]:.2f}s, "
                      f"emergency rollback {walls[kind]['emergency'][-1]:.2f}s", flush=True)
        set_store(box, "etcd")
        load = os.getloadavg()[0]
        print()
        print(f"lock take+release, median of {args.locks} (ms): local {locks['local'][0]:.2f} "
              f"(min {locks['local'][1]:.2f}, max {locks['local'][2]:.2f}); etcd {locks['etcd'][0]:.2f} "
              f"(min {locks['etcd'][1]:.2f}, max {locks['etcd'][2]:.2f})")
        for what in ("release", "emergency"):
            loc, etc = statistics.median(walls["local"][what]), statistics.median(walls["etcd"][what])
            print(f"{what:<9} wall, median of {args.reps}: local {loc:.2f}s, etcd {etc:.2f}s -> "
                  f"{(etc / loc - 1) * 100:+.1f}% (goal <= +5%); "
                  f"all local {[round(x, 2) for x in walls['local'][what]]}, "
                  f"etcd {[round(x, 2) for x in walls['etcd'][what]]}")
        print(f"{box.web} web nodes + pre-1; load average at the end {load:.1f}")
    finally:
        if own:
            box.stop()
            box.remove()


if __name__ == "__main__":
    main()
