"""Release, emergency rollback and their Salt floors at 10, 30, 50 and 100 web nodes.

    python bench/scale.py [--sizes 10,30,50,100] [--reps 3] [--light/--no-light]

For each size N, a sandbox of its own with N web nodes (+ pre-1, lb-1), env ``pro``: preprod
pre-1, then one stage ``all`` with ``batch: 25%`` (4 batches).  By default every size runs
light (``sandbox --light``: minions with ``multiprocessing: False``, one PHP-FPM worker per
node), so the sizes compare.  Then:

1. the first release (v1.1.0) to the N+1 fresh nodes: its result and wall time;
2. a release of v1.2.0 (timed): wall, the runner's timings (prepare, preprod, each batch), the
   number of Salt jobs the run published (``timings.salt_calls``: it must grow with the
   batches, not the nodes), the salt-master's CPU seconds during it (its processes and reaped
   children) and the peak memory (PSS: shared pages of forked workers counted once) of the master and of
   one minion (web-1, with its job processes);
3. ``--reps`` emergency rollbacks (``salt-run deploy.rollback ... emergency=True``),
   alternating between the two releases (the target re-marked good and listed first,
   untimed, so the rollback acts on the master's record: one Salt call); the master's CPU
   seconds during them;
4. baselines in the same sandbox, ``--reps`` each: ``salt -L <the env's N+1 nodes> test.ping``
   and the restart floor, ``salt -L <the same nodes> deploy.restart project=rainbow``: one Salt
   call running the same restart step (PHP-FPM reload) on the same nodes.

Goal 1: emergency rollback <= 1.2 x the restart floor at 10 and 50 nodes.
The figures are printed as one table (medians) and written to ``bench/results/scale-*.json``.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (PROJECT, RESULTS_DIR, Bench, PeakRSS, base_parser, batch_envs, cpu_of, fmt,  # noqa: E402
                           say, stats, table, timings_of)

TARGET_FLOOR_RATIO = 1.2


def mark_good_and_list(bench, nodes, target):
    """Re-mark ``target`` good where a rollback marked it bad, then list (the master's record is current)."""
    bench.salt("-L", ",".join(nodes), "deploy.mark", PROJECT, target, "good", cli_timeout=60)
    wall, proc = bench.salt_run("deploy.releases", out="json", project=PROJECT, env="pro")
    if proc.returncode != 0:
        raise RuntimeError(f"deploy.releases failed: {proc.stdout[-1500:]}")


def timed_release(bench, box):
    cpu = cpu_of(box, ["master"])
    with PeakRSS(box, ["master", "web-1"]) as peak:
        wall, record, proc = bench.release()
    cpu = cpu_of(box, ["master"]) - cpu
    build, prepare, preprod, batches, drains = timings_of(record)
    nodes = record.get("nodes") or {}
    overhead = []  # goal 2: batch - drain - the slowest node's switch (activate, restart, checks)
    for i, b in enumerate(batches):
        drain = drains[i] if i < len(drains) and drains[i] is not None else 0.0
        overhead.append(round(b["seconds"] - drain - max((nodes.get(n, {}).get("seconds") or 0.0)
                                                          for n in b["nodes"]), 3))
    return {"overhead": overhead, "wall": round(wall, 3), "runner_seconds": record["seconds"], "prepare": prepare,
            "preprod": preprod,
            "batches": [b["seconds"] for b in batches], "batch_nodes": [len(b["nodes"]) for b in batches],
            "drain": drains, "salt_calls": record["timings"].get("salt_calls"), "master_cpu": round(cpu, 3),
            "master_peak_rss": peak.peak["master"], "minion_peak_rss": peak.peak["web-1"],
            "master_peak_rss_sum": peak.peak_rss["master"], "minion_peak_rss_sum": peak.peak_rss["web-1"],
            "release": record["release"]}


def one_size(args, n):
    sub = copy.copy(args)
    sub.web = n
    out = {"web": n}
    bench = Bench("scale", sub, envs=batch_envs("25%"))
    with bench:
        box = bench.box
        nodes = list(box.nodes)
        out["sandbox_up_seconds"] = bench.result.get("sandbox_up_seconds")
        out["light"] = box.light
        say(f"==> {n} web nodes: first release (v1.1.0) to {len(nodes)} fresh nodes")
        wall, record, proc = bench.release(expect_ok=False)
        out["first_release"] = {"result": (record or {}).get("result"), "exit": proc.returncode,
                                "wall": round(wall, 3), "error": (record or {}).get("error"),
                                "prepare": timings_of(record)[1] if record else None,
                                "salt_calls": ((record or {}).get("timings") or {}).get("salt_calls")}
        say(f"    {out['first_release']}")
        if proc.returncode != 0:
            raise RuntimeError(f"the first release failed: {proc.stdout[-3000:]}")
        first = record["release"]
        bench.add_release("v1.2.0")
        say(f"==> {n} web nodes: release of v1.2.0 (timed)")
        rel = timed_release(bench, box)
        out["release"] = rel
        say(f"    wall {rel['wall']}s, prepare {rel['prepare']}s, batches {rel['batches']} ({rel['batch_nodes']} "
            f"nodes; overhead {rel['overhead']}), salt calls {rel['salt_calls']}, master CPU {rel['master_cpu']}s, "
            "peak PSS master "
            f"{rel['master_peak_rss'] / 1e6:.0f} MB, minion {rel['minion_peak_rss'] / 1e6:.0f} MB")
        second = rel["release"]

        rollbacks, cpus = [], []
        targets = [first, second]
        for i in range(args.reps):
            to = targets[i % 2]
            mark_good_and_list(bench, nodes, to)
            cpu = cpu_of(box, ["master"])
            wall, rec, proc = bench.deploy("deploy.rollback", emergency="True", to=to)
            cpus.append(cpu_of(box, ["master"]) - cpu)
            if proc.returncode != 0 or not rec or rec.get("result") != "success":
                raise RuntimeError(f"emergency rollback failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
            slowest = max((v.get("seconds") or 0) for v in rec["nodes"].values())
            rollbacks.append({"wall": round(wall, 3), "runner_seconds": rec["seconds"], "slowest_node": slowest,
                              "target_from": rec.get("target_from"), "salt_calls": rec["timings"].get("salt_calls")})
            say(f"    emergency rollback to {to[:40]}...: {rollbacks[-1]}")
        ping, floor = [], []
        target = ",".join(nodes)
        # warm-up; -t also bounds the CLI's publish, which the default 5 s misses on a 100-node master
        bench.salt("-L", target, "test.ping", cli_timeout=60)
        for _ in range(args.reps):
            wall, data = bench.salt("-L", target, "test.ping", cli_timeout=60)
            if sum(1 for v in data.values() if v is True) != len(nodes):
                raise RuntimeError("baseline ping: not every node answered")
            ping.append(wall)
            wall, data = bench.salt("-L", target, "deploy.restart", PROJECT, cli_timeout=60)
            ok = sum(1 for v in data.values() if isinstance(v, dict) and v.get("result") is not False)
            if ok != len(nodes):
                raise RuntimeError(f"baseline restart: {ok} of {len(nodes)} nodes restarted: {str(data)[:1500]}")
            floor.append(wall)
        out["rollback"] = {"wall": stats([r["wall"] for r in rollbacks]),
                           "runner_seconds": stats([r["runner_seconds"] for r in rollbacks]),
                           "slowest_node": stats([r["slowest_node"] for r in rollbacks]),
                           "master_cpu": stats(cpus), "reps": rollbacks}
        out["ping"] = stats(ping)
        out["restart_floor"] = stats(floor)
        out["rollback_vs_ping"] = round(out["rollback"]["wall"]["median"] / out["ping"]["median"], 3)
        out["rollback_vs_floor"] = round(out["rollback"]["wall"]["median"] / out["restart_floor"]["median"], 3)
        say(f"    rollback {out['rollback']['wall']['median']}s, ping {out['ping']['median']}s, restart floor "
            f"{out['restart_floor']['median']}s: rollback/ping {out['rollback_vs_ping']}, "
            f"rollback/floor {out['rollback_vs_floor']}")
        out["machine"] = bench.machine_line()
    return out


def main(argv=None):
    parser = base_parser("scale", __doc__, reps=3)
    parser.add_argument("--sizes", default="10,30,50,100", help="web node counts (default %(default)s)")
    parser.set_defaults(light=True)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.monotonic()
    results = {"bench": "scale", "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "args": vars(args), "sizes": []}
    try:
        for n in sizes:
            t = time.monotonic()
            try:
                results["sizes"].append(one_size(args, n))
            except Exception as exc:  # pylint: disable=broad-except  # report what the other sizes gave
                say(f"!! {n} web nodes: {type(exc).__name__}: {str(exc)[:3000]}")
                results["sizes"].append({"web": n, "error": f"{type(exc).__name__}: {str(exc)[:3000]}"})
            say(f"    ({n} web nodes took {time.monotonic() - t:.0f}s)")
    finally:
        results["runtime_seconds"] = round(time.monotonic() - started, 1)
        results["loadavg_end"] = os.getloadavg()
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, f"scale-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
    report(results)
    say(f"result file: {os.path.relpath(path)}; runtime {results['runtime_seconds']}s")
    return 0 if all("error" not in s for s in results["sizes"]) else 1


def report(results):
    headers = ["web nodes", "first release", "release wall", "prepare", "batches (4)", "overhead/batch", "salt calls",
               "rollback", "ping", "restart floor", "rb/ping", "rb/floor", "master CPU (release)",
               "master CPU (rollback)", "peak PSS master (RSS sum)", "peak PSS minion (RSS sum)"]
    rows = []
    for s in results["sizes"]:
        if "error" in s:
            rows.append([s["web"], "ERROR"] + ["-"] * (len(headers) - 2))
            continue
        r = s["release"]
        rows.append([
            s["web"], f"{s['first_release']['result']} {fmt(s['first_release']['wall'])}", fmt(r["wall"]),
            fmt(r["prepare"]), "/".join(f"{b:.2f}" for b in r["batches"]),
            "/".join(f"{b:.2f}" for b in r["overhead"]), r["salt_calls"],
            fmt(s["rollback"]["wall"]["median"]), fmt(s["ping"]["median"]), fmt(s["restart_floor"]["median"]),
            f"{s['rollback_vs_ping']:.2f}", f"{s['rollback_vs_floor']:.2f}", fmt(r["master_cpu"]),
            fmt(s["rollback"]["master_cpu"]["median"]),
            f"{r['master_peak_rss'] / 1e6:.0f} MB ({r['master_peak_rss_sum'] / 1e6:.0f})",
            f"{r['minion_peak_rss'] / 1e6:.0f} MB ({r['minion_peak_rss_sum'] / 1e6:.0f})",
        ])
    say()
    say(f"==> scale: {os.cpu_count()} cores; medians of {results['args']['reps']} reps for rollback, ping, floor")
    say(table(rows, headers))
    for s in results["sizes"]:
        if "error" not in s and s["web"] in (10, 50):
            ok = s["rollback_vs_floor"] <= TARGET_FLOOR_RATIO
            say(f"goal 1 at {s['web']} nodes: emergency rollback / restart floor = {s['rollback_vs_floor']:.2f} "
                f"(target <= {TARGET_FLOOR_RATIO}): {'met' if ok else 'MISSED'}")
    for s in results["sizes"]:
        if "error" in s:
            say(f"{s['web']} web nodes: {s['error'][:500]}")


if __name__ == "__main__":
    sys.exit(main())
