"""Prepare at few and at many nodes, and where its cost goes.

    python bench/prepare.py [--web 50] [--small 10] [--reps 3]

One sandbox with ``--web`` web nodes (+ pre-1, lb-1) and two envs of the same project:
``few`` (web-1..web-<small>) and ``pro`` (every web node), each one stage ``all`` in one
batch, no preprod.  One untimed release of v1.1.0 to ``pro`` warms up the master's git
mirror; then ``--reps`` times a new version is committed and released to ``few``, then to
``pro`` (``salt-run deploy.release project=rainbow env=<env>``).

Every release is of a version committed just before it, so every node of the env fetches and
builds it.  Reported per env: the runner's ``prepare`` seconds (history record), the
salt-master's CPU seconds (its processes and reaped children, from /proc) during the whole
release and during prepare (from the runner's ``build`` event to its last ``prepare`` event,
read on the master's event bus), the ratio prepare(pro) / prepare(few) (goal: <= 2), and
prepare's master CPU per node against the floor below (goal: <= 1.3).

Baseline in the same run, at both sizes: ``salt -L <nodes> test.ping`` (wall),
``salt -L <nodes> pillar.items`` (wall and master CPU seconds: one fresh pillar compile per
node), and the floor of a prepare on the master, each alone: ``salt -L <nodes>
saltutil.refresh_pillar wait=True`` (one pillar compile per node) and ``salt -L <nodes>
cp.get_file`` of a file of as many bytes as the prepare sent (incompressible) through the
master's fileserver; the floor is the sum of their master CPU per node.
"""

from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (PROJECT, STAT_HEADERS, Bench, base_parser, cpu_of, get_file_floor, say,  # noqa: E402
                           stat_row, stats, table)

TARGET_RATIO = 2.0
TARGET_CPU = 1.3  # prepare's master CPU per node <= 1.3 x (refresh_pillar + cp.get_file) per node


def envs(small, web):
    few = ",".join(f"web-{i}" for i in range(1, small + 1))
    stage = [{"name": "all", "batch": "100%"}]
    return {
        "few": {"branch": "master", "target": f"L@{few}", "stages": stage, "max_failures": 0},
        "pro": {"branch": "master", "target": f"G@roles:{PROJECT} and G@env:pro and not pre-1", "stages": stage,
                "max_failures": 0},
    }


class PrepareCPU:
    """The master's CPU seconds at the runner's ``build`` event (the build done) and at its last
    ``prepare`` event (``done: true``), read on the master's event bus while a release runs."""

    def __init__(self, bench, env):
        import salt.utils.event  # pylint: disable=import-outside-toplevel

        opts = bench.local_client().opts
        self.bench, self.prefix = bench, f"deploy/{PROJECT}/{env}/"
        self.bus = salt.utils.event.get_event("master", sock_dir=opts["sock_dir"], opts=opts, listen=True)
        self.at = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stopping.is_set():
            ev = self.bus.get_event(wait=0.2, full=True, tag=self.prefix)
            if not ev:
                continue
            data = ev["data"]
            if data.get("type") == "build" and data.get("seconds") is not None:
                self.at["built"] = cpu_of(self.bench.box, ["master"])
            elif data.get("type") == "prepare" and data.get("done"):
                self.at["prepared"] = cpu_of(self.bench.box, ["master"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.bus.destroy()
        return False

    def seconds(self):
        if "built" not in self.at or "prepared" not in self.at:
            return None
        return self.at["prepared"] - self.at["built"]


def release(bench, env):
    before = len(bench.history())
    cpu = cpu_of(bench.box, ["master"])
    with PrepareCPU(bench, env) as during:
        wall, proc = bench.salt_run("deploy.release", project=PROJECT, env=env)
    cpu = cpu_of(bench.box, ["master"]) - cpu
    records = bench.history()
    record = records[-1] if len(records) > before else None
    if proc.returncode != 0 or not record or record.get("result") != "success":
        raise RuntimeError(f"release to {env} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-1500:]}")
    prep = during.seconds()
    return {"wall": round(wall, 3), "prepare": record["timings"].get("prepare"), "master_cpu": round(cpu, 3),
            "prepare_master_cpu": None if prep is None else round(prep, 3),
            "bytes": (record["timings"].get("distribute") or {}).get("bytes")}


def master_cpu(bench, *args, nodes):
    """(wall, master CPU seconds) of ``salt -L <nodes> <args>``; every node answers."""
    cpu = cpu_of(bench.box, ["master"])
    wall, data = bench.salt("-L", ",".join(nodes), *args, cli_timeout=300)
    cpu = cpu_of(bench.box, ["master"]) - cpu
    if len(data) != len(nodes) or not all(data.values()):
        raise RuntimeError(f"{args[0]}: {len(data)} of {len(nodes)} nodes answered: {str(data)[:1500]}")
    return wall, cpu


def baseline(bench, nodes, size):
    """The baselines at ``nodes``; ``size``: the bytes the prepare sent (fetched by cp.get_file)."""
    out = {}
    out["ping"], _ = bench.salt("-L", ",".join(nodes), "test.ping")
    out["pillar_items"], out["pillar_items_master_cpu"] = master_cpu(bench, "pillar.items", nodes=nodes)
    out["refresh_pillar"], out["refresh_pillar_master_cpu"] = master_cpu(
        bench, "saltutil.refresh_pillar", "wait=True", nodes=nodes)
    out["get_file"], cpu = get_file_floor(bench, nodes, size)
    out["get_file_master_cpu"] = cpu["master"]
    out = {k: round(v, 3) for k, v in out.items()}
    out["floor_master_cpu"] = round(out["refresh_pillar_master_cpu"] + out["get_file_master_cpu"], 3)
    out["bytes"] = size
    return out


def main(argv=None):
    parser = base_parser("prepare", __doc__, reps=3)
    parser.set_defaults(web=50)
    parser.add_argument("--small", type=int, default=10, help="web nodes of the small env (default %(default)s)")
    args = parser.parse_args(argv)
    sizes = {"few": args.small, "pro": args.web}

    bench = Bench("prepare", args, envs=envs(args.small, args.web))
    base_keys = ("ping", "pillar_items", "pillar_items_master_cpu", "refresh_pillar", "refresh_pillar_master_cpu",
                 "get_file", "get_file_master_cpu", "floor_master_cpu")
    with bench:
        say("==> warm-up release of v1.1.0 to every node (untimed)")
        release(bench, "pro")
        reps = []
        for i in range(1, args.reps + 1):
            rep = {"rep": i}
            for env in ("few", "pro"):
                version = f"v2.{i}.{env == 'pro':d}"  # a new version each release: every node of the env fetches it
                bench.add_release(version)
                rep[env] = release(bench, env)
                rep[env]["version"] = version
                nodes = [f"web-{n}" for n in range(1, sizes[env] + 1)]
                base = rep[env + "_base"] = baseline(bench, nodes, rep[env]["bytes"] or 1)
                per_node = rep[env]["prepare_master_cpu"] / sizes[env] if rep[env]["prepare_master_cpu"] else None
                rep[env]["prepare_master_cpu_per_node"] = per_node and round(per_node, 4)
                base["floor_master_cpu_per_node"] = round(base["floor_master_cpu"] / sizes[env], 4)
                rep[env]["cpu_ratio"] = per_node and round(per_node / base["floor_master_cpu_per_node"], 3)
            reps.append(rep)
            say(f"rep {i}: " + "; ".join(
                f"{env} ({sizes[env]} nodes): prepare {rep[env]['prepare']}s, master CPU: release "
                f"{rep[env]['master_cpu']}s, prepare {rep[env]['prepare_master_cpu']}s "
                f"({rep[env]['bytes']} bytes sent); refresh_pillar {rep[env + '_base']['refresh_pillar_master_cpu']}s, "
                f"cp.get_file {rep[env + '_base']['get_file_master_cpu']}s, pillar.items "
                f"{rep[env + '_base']['pillar_items_master_cpu']}s; prepare / floor {rep[env]['cpu_ratio']}"
                for env in ("few", "pro")))
        summary = {}
        rows = []
        for env in ("few", "pro"):
            s = {k: stats([r[env][k] for r in reps])
                 for k in ("wall", "prepare", "master_cpu", "prepare_master_cpu", "prepare_master_cpu_per_node",
                           "cpu_ratio")}
            s.update({k: stats([r[env + "_base"][k] for r in reps]) for k in (*base_keys, "floor_master_cpu_per_node")})
            summary[env] = s
            n = sizes[env]
            rows += [stat_row(f"{n} nodes: salt-run deploy.release (wall)", s["wall"]),
                     stat_row(f"{n} nodes:   prepare (runner)", s["prepare"]),
                     stat_row(f"{n} nodes:   master CPU during the release", s["master_cpu"]),
                     stat_row(f"{n} nodes:   master CPU during prepare", s["prepare_master_cpu"]),
                     stat_row(f"{n} nodes:   ... per node", s["prepare_master_cpu_per_node"]),
                     stat_row(f"{n} nodes: baseline salt -L test.ping", s["ping"]),
                     stat_row(f"{n} nodes: baseline salt -L pillar.items", s["pillar_items"]),
                     stat_row(f"{n} nodes:   master CPU of pillar.items", s["pillar_items_master_cpu"]),
                     stat_row(f"{n} nodes: baseline salt -L saltutil.refresh_pillar wait=True", s["refresh_pillar"]),
                     stat_row(f"{n} nodes:   master CPU of refresh_pillar", s["refresh_pillar_master_cpu"]),
                     stat_row(f"{n} nodes: baseline salt -L cp.get_file <the bytes prepare sent>", s["get_file"]),
                     stat_row(f"{n} nodes:   master CPU of cp.get_file", s["get_file_master_cpu"]),
                     stat_row(f"{n} nodes:   floor: refresh_pillar + cp.get_file, per node",
                              s["floor_master_cpu_per_node"]),
                     stat_row(f"{n} nodes: prepare / floor (master CPU per node)", s["cpu_ratio"], "x")]
        say()
        say(f"==> prepare at {args.small} and {args.web} web nodes, {args.reps} reps")
        say(bench.machine_line())
        say(table(rows, STAT_HEADERS))
        ratio = summary["pro"]["prepare"]["median"] / summary["few"]["prepare"]["median"]
        say(f"prepare({args.web}) / prepare({args.small}) = {ratio:.2f}; target <= {TARGET_RATIO}: "
            + ("met" if ratio <= TARGET_RATIO else "MISSED"))
        for env in ("few", "pro"):
            cpu_ratio = summary[env]["cpu_ratio"]["median"]
            say(f"{sizes[env]} nodes: prepare's master CPU per node / (refresh_pillar + cp.get_file) per node = "
                f"{cpu_ratio}; target <= {TARGET_CPU}: "
                + ("met" if cpu_ratio is not None and cpu_ratio <= TARGET_CPU else "MISSED"))
        bench.finish(reps=reps, summary=summary, ratio=round(ratio, 3), target_ratio=TARGET_RATIO,
                     target_cpu=TARGET_CPU, sizes=sizes)
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
