"""Release, emergency rollback and their Salt floors at 10, 50 and 100 web nodes, on one master
and on a master of masters (MoM) above syndic masters.

    python bench/scale.py [--sizes 10,50,100] [--syndics 0,2] [--reps 3] [--light/--no-light]

For each size N and each topology of ``--syndics`` (0: one master; k: the MoM above k syndic
masters ``sm-1``..``sm-k``, each a salt-master with its salt-syndic, the minions dealt to them in
turn: ``python -m sandbox up --syndics k``, docs/syndics.md), a sandbox of its own with N web
nodes (+ pre-1, lb-1), env ``pro``: preprod pre-1, then one stage ``all`` with ``batch: 25%``
(4 batches).  The topologies of one size run one after the other, so they compare.  By default
every run is light (``sandbox --light``: minions with ``multiprocessing: False``, one PHP-FPM
worker per node), so the sizes compare.  Everything is run from the top master (the MoM), as
an operator does.  Then:

1. the first release (v1.1.0) to the N+1 fresh nodes: its result and wall time;
2. a release of v1.2.0 (timed): wall, the runner's timings (prepare, preprod, each batch), the
   number of Salt jobs the run published (``timings.salt_calls``: it must grow with the
   batches, not the nodes), and for each daemon measured (below) its CPU seconds during the
   release (its processes and reaped children), the same per node of the env (N+1), and its
   peak memory (PSS: shared pages of forked workers counted once; with the RSS sum beside it);
3. ``--reps`` emergency rollbacks (``salt-run deploy.rollback ... emergency=True``),
   alternating between the two releases (the target re-marked good and listed first,
   untimed, so the rollback acts on the master's record: one Salt call); the CPU seconds of
   each daemon measured during them;
4. Salt's floors through the same topology, ``--reps`` each: ``salt -L <the env's N+1 nodes>
   test.ping``, the restart floor ``salt -L <the same nodes> deploy.restart rainbow`` (one Salt
   call running the same restart step, PHP-FPM reload, on the same nodes) and ``salt -L <the
   same nodes> cp.get_file`` of a new incompressible file of as many bytes as the timed
   release's prepare sent (``timings.distribute.bytes``), written into the ``file_roots`` the
   nodes fetch from (the syndic masters serve the MoM's); the daemons' CPU during the last two.

The daemons measured: the top master's salt-master (the MoM with syndics), each syndic master's
salt-master and, apart, its salt-syndic, and one minion (web-1, with its job processes).

Goals: on one master, emergency rollback <= 1.2 x the restart floor at 10 and 50 nodes; through
syndics, emergency rollback <= 1.2 x the restart floor through the same topology at 50 and 100
nodes.  The MoM's CPU per release at each N is printed beside the one master's, to show whether
it grows with the nodes.  The figures are printed as two tables (medians; one row per topology
and size, then one per daemon) and written to ``bench/results/scale-*.json`` (``runs``: one entry
per size and topology).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (PROJECT, RESULTS_DIR, Bench, PeakRSS, base_parser, batch_envs, cpu_each,  # noqa: E402
                           cpu_since, fmt, get_file_floor, say, stats, table, timings_of)

TARGET_FLOOR_RATIO = 1.2
GOAL_SIZES = {"one master": (10, 50), "syndics": (50, 100)}  # where the rollback/floor goal is judged


def measured(box):
    """The daemons measured: the top master, each syndic master's salt-master and salt-syndic, web-1."""
    return ["master", *[d for n in box.syndic_names for d in (n, f"{n}-syndic")], "web-1"]


def label(name, syndics):
    if name == "master":
        return "salt-master (MoM)" if syndics else "salt-master"
    if name.endswith("-syndic"):
        return f"salt-syndic {name[: -len('-syndic')]}"
    return f"salt-master {name}" if name.startswith("sm-") else f"salt-minion {name}"


def topology(syndics):
    return f"MoM + {syndics} syndics" if syndics else "one master"


def mark_good_and_list(bench, nodes, target):
    """Re-mark ``target`` good where a rollback marked it bad, then list (the master's record is current)."""
    bench.salt("-L", ",".join(nodes), "deploy.mark", PROJECT, target, "good", cli_timeout=60)
    wall, proc = bench.salt_run("deploy.releases", out="json", project=PROJECT, env="pro")
    if proc.returncode != 0:
        raise RuntimeError(f"deploy.releases failed: {proc.stdout[-1500:]}")


def timed_release(bench, box, names):
    before = cpu_each(box, names)
    with PeakRSS(box, names) as peak:
        wall, record, proc = bench.release()
    cpu = cpu_since(box, before)
    build, prepare, preprod, batches, drains = timings_of(record)
    nodes = record.get("nodes") or {}
    overhead = []  # goal 2: batch - drain - the slowest node's switch (activate, restart, checks)
    for i, b in enumerate(batches):
        drain = drains[i] if i < len(drains) and drains[i] is not None else 0.0
        overhead.append(round(b["seconds"] - drain - max((nodes.get(n, {}).get("seconds") or 0.0)
                                                          for n in b["nodes"]), 3))
    count = len(box.nodes)
    return {"overhead": overhead, "wall": round(wall, 3), "runner_seconds": record["seconds"], "prepare": prepare,
            "preprod": preprod,
            "batches": [b["seconds"] for b in batches], "batch_nodes": [len(b["nodes"]) for b in batches],
            "drain": drains, "salt_calls": record["timings"].get("salt_calls"),
            "bytes": (record["timings"].get("distribute") or {}).get("bytes"),
            "cpu": cpu, "cpu_per_node": {n: round(v / count, 4) for n, v in cpu.items()},
            "peak_pss": dict(peak.peak), "peak_rss_sum": dict(peak.peak_rss),
            "master_cpu": cpu["master"],
            "master_peak_rss": peak.peak["master"], "minion_peak_rss": peak.peak["web-1"],
            "master_peak_rss_sum": peak.peak_rss["master"], "minion_peak_rss_sum": peak.peak_rss["web-1"],
            "release": record["release"]}


def first_release(bench, n, syndics, nodes):
    say(f"==> {n} web nodes, {topology(syndics)}: first release (v1.1.0) to {len(nodes)} fresh nodes")
    wall, record, proc = bench.release(expect_ok=False)
    out = {"result": (record or {}).get("result"), "exit": proc.returncode, "wall": round(wall, 3),
           "error": (record or {}).get("error"), "prepare": timings_of(record)[1] if record else None,
           "salt_calls": ((record or {}).get("timings") or {}).get("salt_calls")}
    say(f"    {out}")
    if proc.returncode != 0:
        raise RuntimeError(f"the first release failed: {proc.stdout[-3000:]}")
    return out, record["release"]


def rollbacks(bench, box, nodes, names, targets, reps):
    out, cpus = [], []
    for i in range(reps):
        to = targets[i % 2]
        mark_good_and_list(bench, nodes, to)
        before = cpu_each(box, names)
        wall, rec, proc = bench.deploy("deploy.rollback", emergency="True", to=to)
        cpus.append(cpu_since(box, before))
        if proc.returncode != 0 or not rec or rec.get("result") != "success":
            raise RuntimeError(f"emergency rollback failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
        slowest = max((v.get("seconds") or 0) for v in rec["nodes"].values())
        out.append({"wall": round(wall, 3), "runner_seconds": rec["seconds"], "slowest_node": slowest,
                    "target_from": rec.get("target_from"), "salt_calls": rec["timings"].get("salt_calls"),
                    "cpu": cpus[-1]})
        say(f"    emergency rollback to {to[:40]}...: {out[-1]}")
    return {"wall": stats([r["wall"] for r in out]), "runner_seconds": stats([r["runner_seconds"] for r in out]),
            "slowest_node": stats([r["slowest_node"] for r in out]),
            "cpu": {n: stats([c[n] for c in cpus]) for n in names},
            "master_cpu": stats([c["master"] for c in cpus]), "reps": out}


def floors(bench, box, nodes, names, size, reps):
    """Salt's floors through the topology: test.ping, the restart floor, cp.get_file of ``size`` bytes."""
    ping, restart, get_file = [], [], []
    restart_cpu, get_file_cpu = [], []
    target = ",".join(nodes)
    # warm-up; -t also bounds the CLI's publish, which the default 5 s misses on a 100-node master
    bench.salt("-L", target, "test.ping", cli_timeout=60)
    for _ in range(reps):
        wall, data = bench.salt("-L", target, "test.ping", cli_timeout=60)
        if sum(1 for v in data.values() if v is True) != len(nodes):
            raise RuntimeError(f"baseline ping: not every node answered: {str(data)[:1500]}")
        ping.append(wall)
        before = cpu_each(box, names)
        wall, data = bench.salt("-L", target, "deploy.restart", PROJECT, cli_timeout=60)
        restart_cpu.append(cpu_since(box, before))
        ok = sum(1 for v in data.values() if isinstance(v, dict) and v.get("result") is not False)
        if ok != len(nodes):
            raise RuntimeError(f"baseline restart: {ok} of {len(nodes)} nodes restarted: {str(data)[:1500]}")
        restart.append(wall)
        wall, cpu = get_file_floor(bench, nodes, size, cpu_names=names)
        get_file.append(wall)
        get_file_cpu.append(cpu)
    return {"ping": stats(ping), "restart_floor": stats(restart), "get_file": stats(get_file),
            "get_file_bytes": size,
            "restart_floor_cpu": {n: stats([c[n] for c in restart_cpu]) for n in names},
            "get_file_cpu": {n: stats([c[n] for c in get_file_cpu]) for n in names}}


def one_run(args, n, syndics):
    sub = copy.copy(args)
    sub.web = n
    out = {"web": n, "syndics": syndics, "topology": topology(syndics)}
    bench = Bench("scale", sub, envs=batch_envs("25%"), syndics=syndics)
    with bench:
        box = bench.box
        nodes = list(box.nodes)
        names = measured(box)
        out["sandbox_up_seconds"] = bench.result.get("sandbox_up_seconds")
        out["light"] = box.light
        out["daemons"] = {d: label(d, syndics) for d in names}
        out["syndic_of"] = dict(box.syndic_of)
        out["first_release"], first = first_release(bench, n, syndics, nodes)
        bench.add_release("v1.2.0")
        say(f"==> {n} web nodes, {topology(syndics)}: release of v1.2.0 (timed)")
        rel = timed_release(bench, box, names)
        out["release"] = rel
        say(f"    wall {rel['wall']}s, prepare {rel['prepare']}s ({rel['bytes']} bytes sent), batches "
            f"{rel['batches']} ({rel['batch_nodes']} nodes; overhead {rel['overhead']}), salt calls "
            f"{rel['salt_calls']}; CPU " + ", ".join(f"{label(d, syndics)} {rel['cpu'][d]}s" for d in names)
            + "; peak PSS " + ", ".join(f"{label(d, syndics)} {rel['peak_pss'][d] / 1e6:.0f} MB" for d in names))
        second = rel["release"]

        out["rollback"] = rollbacks(bench, box, nodes, names, [first, second], args.reps)
        out.update(floors(bench, box, nodes, names, rel["bytes"] or 1, args.reps))
        rb = out["rollback"]["wall"]["median"]
        out["rollback_vs_ping"] = round(rb / out["ping"]["median"], 3)
        out["rollback_vs_floor"] = round(rb / out["restart_floor"]["median"], 3)
        say(f"    rollback {rb}s, ping {out['ping']['median']}s, restart floor {out['restart_floor']['median']}s, "
            f"cp.get_file of {out['get_file_bytes']} bytes {out['get_file']['median']}s: rollback/ping "
            f"{out['rollback_vs_ping']}, rollback/floor {out['rollback_vs_floor']}")
        out["cli_retries"] = bench.result.get("cli_retries", 0)
        out["machine"] = bench.machine_line()
    return out


def main(argv=None):
    parser = base_parser("scale", __doc__, reps=3)
    parser.add_argument("--sizes", default="10,50,100", help="web node counts (default %(default)s)")
    parser.add_argument("--syndics", default="0,2",
                        help="topologies, as syndic masters under the top master (0: one master; default "
                             "%(default)s)")
    parser.set_defaults(light=True)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tops = [int(s) for s in args.syndics.split(",") if s.strip()]
    started = time.monotonic()
    results = {"bench": "scale", "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "args": vars(args), "runs": []}
    try:
        for n in sizes:
            for k in tops:
                t = time.monotonic()
                try:
                    results["runs"].append(one_run(args, n, k))
                except Exception as exc:  # pylint: disable=broad-except  # report what the other runs gave
                    say(f"!! {n} web nodes, {topology(k)}: {type(exc).__name__}: {str(exc)[:3000]}")
                    results["runs"].append({"web": n, "syndics": k, "topology": topology(k),
                                            "error": f"{type(exc).__name__}: {str(exc)[:3000]}"})
                results["runs"][-1]["run_seconds"] = round(time.monotonic() - t, 1)
                say(f"    ({n} web nodes, {topology(k)} took {time.monotonic() - t:.0f}s)")
    finally:
        results["runtime_seconds"] = round(time.monotonic() - started, 1)
        results["loadavg_end"] = os.getloadavg()
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, f"scale-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
    report(results)
    say(f"result file: {os.path.relpath(path)}; runtime {results['runtime_seconds']}s")
    return 0 if all("error" not in r for r in results["runs"]) else 1


def _mb(pss, rss):
    return f"{pss / 1e6:.0f} MB ({rss / 1e6:.0f})"


def report(results):
    headers = ["topology", "web nodes", "first release", "release wall", "prepare", "batches (4)", "overhead/batch",
               "salt calls", "rollback", "ping", "restart floor", "cp.get_file (bytes)", "rb/ping", "rb/floor",
               "run"]
    rows, daemon_rows = [], []
    for s in results["runs"]:
        if "error" in s:
            rows.append([s["topology"], s["web"], "ERROR"] + ["-"] * (len(headers) - 4) + [fmt(s.get("run_seconds"))])
            continue
        r = s["release"]
        rows.append([
            s["topology"], s["web"], f"{s['first_release']['result']} {fmt(s['first_release']['wall'])}",
            fmt(r["wall"]), fmt(r["prepare"]), "/".join(f"{b:.2f}" for b in r["batches"]),
            "/".join(f"{b:.2f}" for b in r["overhead"]), r["salt_calls"],
            fmt(s["rollback"]["wall"]["median"]), fmt(s["ping"]["median"]), fmt(s["restart_floor"]["median"]),
            f"{fmt(s['get_file']['median'])} ({s['get_file_bytes']})",
            f"{s['rollback_vs_ping']:.2f}", f"{s['rollback_vs_floor']:.2f}", fmt(s.get("run_seconds"), digits=0),
        ])
        for d, name in s["daemons"].items():
            daemon_rows.append([
                s["topology"], s["web"], name, fmt(r["cpu"][d]), fmt(r["cpu_per_node"][d], digits=3),
                fmt(s["rollback"]["cpu"][d]["median"]), fmt(s["restart_floor_cpu"][d]["median"]),
                fmt(s["get_file_cpu"][d]["median"]), _mb(r["peak_pss"][d], r["peak_rss_sum"][d]),
            ])
    say()
    say(f"==> scale: {os.cpu_count()} cores; medians of {results['args']['reps']} reps for rollback, ping, floors; "
        "every command from the top master")
    say(table(rows, headers))
    say()
    say("==> CPU seconds and peak memory of each daemon (release: the timed release; per node: / the env's N+1 "
        "nodes; rollback, restart floor, cp.get_file: medians)")
    say(table(daemon_rows, ["topology", "web nodes", "daemon", "CPU release", "per node", "CPU rollback",
                            "CPU restart floor", "CPU cp.get_file", "peak PSS (RSS sum)"]))
    say()
    goals(results)
    for s in results["runs"]:
        if "error" in s:
            say(f"{s['web']} web nodes, {s['topology']}: {s['error'][:500]}")


def goals(results):
    runs = [s for s in results["runs"] if "error" not in s]
    for k in sorted({s["syndics"] for s in results["runs"]}):
        mine = {s["web"]: s for s in runs if s["syndics"] == k}
        for n in GOAL_SIZES["syndics" if k else "one master"]:
            what = (f"goal 1 at {n} nodes: emergency rollback / restart floor" if not k else
                    f"goal at {n} nodes: emergency rollback through {k} syndics / restart floor through the same "
                    "topology")
            if n not in mine:
                say(f"{what}: not measured in this run")
                continue
            ratio = mine[n]["rollback_vs_floor"]
            say(f"{what} = {ratio:.2f} (target <= {TARGET_FLOOR_RATIO}): "
                f"{'met' if ratio <= TARGET_FLOOR_RATIO else 'MISSED'}")
    for k in sorted({s["syndics"] for s in runs}):
        mine = sorted((s for s in runs if s["syndics"] == k), key=lambda s: s["web"])
        who = f"the MoM ({k} syndics)" if k else "the master (one master)"
        say(f"CPU per release of {who}: " + "; ".join(
            f"{s['web']} nodes {s['release']['cpu']['master']:.2f}s ({s['release']['cpu_per_node']['master']:.3f}s "
            "per node)" for s in mine))
        for sm in [d for d in mine[0]["daemons"] if d.startswith("sm-")] if mine else []:
            say(f"    CPU per release of {label(sm, k)}: " + "; ".join(
                f"{s['web']} nodes {s['release']['cpu'][sm]:.2f}s" for s in mine))


if __name__ == "__main__":
    sys.exit(main())
