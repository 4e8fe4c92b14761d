"""A rolling release of 10 web nodes in 3 batches, and its orchestration overhead.

    python bench/release.py [--reps 3]

A sandbox with 10 web nodes (+ pre-1, lb-1) whose env ``pro`` is: preprod pre-1, then one
stage ``all`` with ``batch: 34%`` (batches of 4, 4, 2 web nodes), HAProxy driven by lb-1.
One untimed release (v1.1.0) warms up the master's git mirror; then ``--reps`` times: a new
version is committed (``sandbox.repo.add_release``, v2.0.<n>) and released with
``salt-run -c <conf> deploy.release project=rainbow env=pro``.

Reported per rep, from the runner's history record: total wall, the runner's seconds, build,
prepare, preprod, each batch's seconds, each batch's drain seconds, the slowest node's
switch seconds (deploy.switch: activate + restart + checks) and the orchestration overhead
per batch = batch seconds - (drain + slowest node's switch), target <= 0.3 s.  A batch that is not its
stage's last makes two calls (``deploy_lb.swap``: the previous
batch back and this one out; then the switch); the last makes three.

Baseline in the same run, per batch: ``salt -c <conf> -L <batch nodes> test.ping`` (wall,
CLI included), and one in-process ``LocalClient.cmd`` test.ping round trip to the batch's
nodes and to lb-1 (a batch makes three calls: detach on lb-1, switch on the batch, attach on
lb-1, so 2 x RTT(lb-1) + RTT(batch) is Salt's floor for the overhead).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (STAT_HEADERS, Bench, base_parser, batch_envs, fmt, say, stat_row, stats,  # noqa: E402
                           table, timings_of)

TARGET_OVERHEAD = 0.3


def analyse(record):
    build, prepare, preprod, batches, drains = timings_of(record)
    nodes = record.get("nodes") or {}
    rows = []
    for i, b in enumerate(batches):
        drain = drains[i] if i < len(drains) and drains[i] is not None else 0.0
        switch = max((nodes.get(n, {}).get("seconds") or 0.0) for n in b["nodes"])
        rows.append({
            "batch": b["batch"], "nodes": b["nodes"], "seconds": b["seconds"], "drain": drain,
            "slowest_switch": switch, "overhead": round(b["seconds"] - drain - switch, 3),
            "out_of_lb": max((nodes.get(n, {}).get("out_of_lb") or 0.0) for n in b["nodes"]),
        })
    return {"build": build, "prepare": prepare, "preprod": preprod, "batches": rows,
            "preprod_switch": (nodes.get("pre-1") or {}).get("seconds")}


def main(argv=None):
    parser = base_parser("release", __doc__, reps=3)
    parser.add_argument("--batch", default="34%", help="batch size of the stage (default %(default)s)")
    args = parser.parse_args(argv)

    bench = Bench("release", args, envs=batch_envs(args.batch))
    with bench:
        say("==> warm-up release of v1.1.0 (untimed: clones the master's git mirror)")
        _, first, _ = bench.release()
        plan = [b["nodes"] for b in timings_of(first)[3]]
        say(f"    batches: {' | '.join(','.join(b) for b in plan)}")
        for nodes in plan:  # warm-up of the baseline commands
            bench.rtt(nodes)

        reps = []
        for i in range(1, args.reps + 1):
            version = f"v2.0.{i}"
            bench.add_release(version)
            wall, record, _ = bench.release()
            a = analyse(record)
            base = []
            for b in a["batches"]:
                p_wall, data = bench.salt("-L", ",".join(b["nodes"]), "test.ping")
                answered = sum(1 for v in data.values() if v is True)
                rtt_batch, n1 = bench.rtt(b["nodes"])
                rtt_lb, n2 = bench.rtt(["lb-1"])
                if answered != len(b["nodes"]) or n1 != len(b["nodes"]) or n2 != 1:
                    raise RuntimeError(f"baseline ping: not every minion answered ({b['nodes']})")
                base.append({"batch": b["batch"], "ping_cli": round(p_wall, 3), "rtt_batch": round(rtt_batch, 3),
                             "rtt_lb": round(rtt_lb, 3), "floor_3_calls": round(rtt_batch + 2 * rtt_lb, 3)})
            rep = {"rep": i, "version": version, "release": record["release"], "wall": round(wall, 3),
                   "runner_seconds": record["seconds"], **a, "baseline": base}
            reps.append(rep)
            say(f"rep {i}/{args.reps} {version}: wall {wall:.2f}s, runner {record['seconds']}s, build {a['build']}s, "
                f"prepare {a['prepare']}s, preprod {a['preprod']}s, batches "
                + ", ".join(f"#{b['batch']} {b['seconds']}s (drain {b['drain']}s, switch {b['slowest_switch']}s, "
                            f"overhead {b['overhead']}s)" for b in a["batches"]))

        nb = max(len(r["batches"]) for r in reps)
        s = {k: stats([r[k] for r in reps]) for k in ("wall", "runner_seconds", "build", "prepare", "preprod",
                                                        "preprod_switch")}
        per_batch = []
        for j in range(nb):
            bs = [r["batches"][j] for r in reps if j < len(r["batches"])]
            bl = [r["baseline"][j] for r in reps if j < len(r["baseline"])]
            per_batch.append({
                "batch": j + 1, "nodes": bs[0]["nodes"],
                **{k: stats([b[k] for b in bs]) for k in ("seconds", "drain", "slowest_switch", "overhead",
                                                           "out_of_lb")},
                **{k: stats([b[k] for b in bl]) for k in ("ping_cli", "rtt_batch", "rtt_lb", "floor_3_calls")},
            })
        all_overheads = stats([b["overhead"] for r in reps for b in r["batches"]])
        floor = stats([b["floor_3_calls"] for r in reps for b in r["baseline"]])

        say()
        say(f"==> release of a new version to pre-1 + {args.web} web nodes in {nb} batches, {args.reps} reps")
        say(bench.machine_line())
        rows = [stat_row("salt-run deploy.release (wall)", s["wall"]),
                stat_row("  runner's seconds (history)", s["runner_seconds"]),
                stat_row("  build", s["build"]), stat_row("  prepare (all nodes, parallel)", s["prepare"]),
                stat_row("  preprod (pre-1)", s["preprod"]),
                stat_row("    pre-1's switch (activate+restart+checks)", s["preprod_switch"])]
        for pb in per_batch:
            rows += [stat_row(f"  batch {pb['batch']} ({len(pb['nodes'])} nodes)", pb["seconds"]),
                     stat_row("    drain", pb["drain"]),
                     stat_row("    slowest node's switch", pb["slowest_switch"]),
                     stat_row("    overhead = batch - drain - switch", pb["overhead"]),
                     stat_row("    baseline: salt -L <batch> test.ping (wall)", pb["ping_cli"]),
                     stat_row("    baseline: 1 round trip to the batch (in-process)", pb["rtt_batch"]),
                     stat_row("    baseline: 1 round trip to lb-1 (in-process)", pb["rtt_lb"])]
        say(table(rows, STAT_HEADERS))
        ok = all_overheads["median"] <= TARGET_OVERHEAD
        say(f"orchestration overhead per batch (all batches of all reps): median {fmt(all_overheads['median'])}, "
            f"min {fmt(all_overheads['min'])}, max {fmt(all_overheads['max'])}; target <= {TARGET_OVERHEAD}s: "
            + ("met" if ok else f"MISSED by {all_overheads['median'] - TARGET_OVERHEAD:.2f}s"))
        say(f"Salt's floor for a batch's 3 calls (RTT batch + 2 x RTT lb-1, in-process): median {fmt(floor['median'])}"
            f"; overhead / floor = {all_overheads['median'] / floor['median']:.2f}")
        bench.finish(reps=reps, summary=s, per_batch=per_batch, overhead=all_overheads, floor_3_calls=floor,
                     target_overhead=TARGET_OVERHEAD, target_met=ok, batches=plan)
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
