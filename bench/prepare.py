"""Prepare at few and at many nodes, and where its cost goes.

    python bench/prepare.py [--web 50] [--small 10] [--reps 3]

One sandbox with ``--web`` web nodes (+ pre-1, lb-1) and two envs of the same project:
``few`` (web-1..web-<small>) and ``pro`` (every web node), each one stage ``all`` in one
batch, no preprod.  One untimed release of v1.1.0 to ``pro`` warms up the master's git
mirror; then ``--reps`` times a new version is committed and released to ``few``, then to
``pro`` (``salt-run deploy.release project=rainbow env=<env>``).

Reported per env: the runner's ``prepare`` seconds (history record) and the salt-master's
CPU seconds during the release (its processes and reaped children, from /proc), and the
ratio prepare(pro) / prepare(few) (goal: <= 2).

Baseline in the same run, at both sizes: ``salt -L <nodes> test.ping`` (wall), and
``salt -L <nodes> pillar.items`` (wall and master CPU seconds: one fresh pillar compile per
node on the master, what a prepare that reads current secrets needs at least once).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (PROJECT, STAT_HEADERS, Bench, base_parser, cpu_of, say, stat_row,  # noqa: E402
                           stats, table)

TARGET_RATIO = 2.0


def envs(small, web):
    few = ",".join(f"web-{i}" for i in range(1, small + 1))
    stage = [{"name": "all", "batch": "100%"}]
    return {
        "few": {"branch": "master", "target": f"L@{few}", "stages": stage, "max_failures": 0},
        "pro": {"branch": "master", "target": f"G@roles:{PROJECT} and G@env:pro and not pre-1", "stages": stage,
                "max_failures": 0},
    }


def release(bench, env):
    before = len(bench.history())
    cpu = cpu_of(bench.box, ["master"])
    wall, proc = bench.salt_run("deploy.release", project=PROJECT, env=env)
    cpu = cpu_of(bench.box, ["master"]) - cpu
    records = bench.history()
    record = records[-1] if len(records) > before else None
    if proc.returncode != 0 or not record or record.get("result") != "success":
        raise RuntimeError(f"release to {env} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-1500:]}")
    return {"wall": round(wall, 3), "prepare": record["timings"].get("prepare"), "master_cpu": round(cpu, 3)}


def baseline(bench, nodes):
    out = {}
    target = ",".join(nodes)
    out["ping"], _ = bench.salt("-L", target, "test.ping")
    cpu = cpu_of(bench.box, ["master"])
    out["pillar_items"], data = bench.salt("-L", target, "pillar.items", cli_timeout=120)
    out["pillar_items_master_cpu"] = cpu_of(bench.box, ["master"]) - cpu
    if len(data) != len(nodes):
        raise RuntimeError(f"pillar.items: {len(data)} of {len(nodes)} nodes answered")
    return {k: round(v, 3) for k, v in out.items()}


def main(argv=None):
    parser = base_parser("prepare", __doc__, reps=3)
    parser.set_defaults(web=50)
    parser.add_argument("--small", type=int, default=10, help="web nodes of the small env (default %(default)s)")
    args = parser.parse_args(argv)
    sizes = {"few": args.small, "pro": args.web}

    bench = Bench("prepare", args, envs=envs(args.small, args.web))
    with bench:
        say("==> warm-up release of v1.1.0 to every node (untimed)")
        release(bench, "pro")
        reps = []
        for i in range(1, args.reps + 1):
            version = f"v2.0.{i}"
            bench.add_release(version)
            rep = {"rep": i, "version": version}
            for env in ("few", "pro"):
                rep[env] = release(bench, env)
                rep[env + "_base"] = baseline(bench, [f"web-{n}" for n in range(1, sizes[env] + 1)])
            reps.append(rep)
            say(f"rep {i}: " + "; ".join(
                f"{env} ({sizes[env]} nodes): prepare {rep[env]['prepare']}s, master CPU {rep[env]['master_cpu']}s, "
                f"pillar.items {rep[env + '_base']['pillar_items']}s ({rep[env + '_base']['pillar_items_master_cpu']}s "
                f"master CPU), ping {rep[env + '_base']['ping']}s" for env in ("few", "pro")))
        summary = {}
        rows = []
        for env in ("few", "pro"):
            s = {k: stats([r[env][k] for r in reps]) for k in ("wall", "prepare", "master_cpu")}
            s.update({k: stats([r[env + "_base"][k] for r in reps])
                      for k in ("ping", "pillar_items", "pillar_items_master_cpu")})
            summary[env] = s
            n = sizes[env]
            rows += [stat_row(f"{n} nodes: salt-run deploy.release (wall)", s["wall"]),
                     stat_row(f"{n} nodes:   prepare (runner)", s["prepare"]),
                     stat_row(f"{n} nodes:   master CPU during the release", s["master_cpu"]),
                     stat_row(f"{n} nodes: baseline salt -L test.ping", s["ping"]),
                     stat_row(f"{n} nodes: baseline salt -L pillar.items", s["pillar_items"]),
                     stat_row(f"{n} nodes:   master CPU of pillar.items", s["pillar_items_master_cpu"])]
        say()
        say(f"==> prepare at {args.small} and {args.web} web nodes, {args.reps} reps")
        say(bench.machine_line())
        say(table(rows, STAT_HEADERS))
        ratio = summary["pro"]["prepare"]["median"] / summary["few"]["prepare"]["median"]
        say(f"prepare({args.web}) / prepare({args.small}) = {ratio:.2f}; target <= {TARGET_RATIO}: "
            + ("met" if ratio <= TARGET_RATIO else "MISSED"))
        bench.finish(reps=reps, summary=summary, ratio=round(ratio, 3), target_ratio=TARGET_RATIO, sizes=sizes)
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
