"""Emergency rollback against the Salt floor.

    python bench/rollback_vs_ping.py [--reps 7] [--no-profile]

A sandbox with 10 web nodes (+ pre-1, lb-1); two releases (v1.1.0, v1.2.0) deployed on
every node of the env.  Then, alternating, ``--reps`` times each:

- ``salt-run -c <conf> deploy.rollback project=rainbow env=pro emergency=True`` (the first
  rep without ``to=``: the last good release; the others ``to=<the other release>``), so
  every rep really switches all 11 nodes of the env;
- ``salt -c <conf> -L pre-1,web-1..web-10 test.ping``: the same 11 minions the rollback
  targets (the env's nodes; lb-1 is not part of an emergency rollback);
- ``salt-run -c <conf> test.arg``: the floor of any salt-run command (CLI start-up);
- ``salt-run -c <conf> salt.execute <the 11 minions> test.ping tgt_type=list``: Salt's own runner
  making one batched call to the same minions: the floor of any runner that makes one Salt call;
- one in-process ``LocalClient.cmd(<the 11 minions>, 'test.ping')``: one Salt round trip
  without any CLI start-up (the unit the runner pays per batched call).

Before each rep (untimed) the target is checked with ``salt-run deploy.releases``: present
and ``good`` on every node.  A rollback marks the release it leaves ``bad``, so the release
left by the previous rep is marked good again with ``salt -L ... deploy.mark`` first, then
listed again: like the end of every deploy run, that leaves the master's record of the
nodes up to date, so the rollback takes its target from the record (one Salt call).

Then ``--listing-reps`` more rollbacks (default 3) with the master's record removed first:
the path a master without a record takes (list every node's releases, then switch: two
calls), measured the same way.

Reported: medians (min/max) and the ratio rollback/ping (target <= 1.4), where the
rollback's wall time goes (the runner's own ``seconds`` from its history record, the
progress line that marks the end of planning, the slowest node's switch), and with
profiling one extra rollback under cProfile (salt-run start-up, loader, pillar, each
LocalClient call).
"""

from __future__ import annotations

import json
import os
import pstats
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (PROJECT, STAT_HEADERS, Bench, base_parser, batch_envs, fmt, say,  # noqa: E402
                           stat_row, stats, table)

TARGET_RATIO = 1.4
PROGRESS_RE = re.compile(r"^\[\s*([0-9.]+)s\] \S+: (emergency|normal) rollback to ")


def releases_view(bench):
    wall, proc = bench.salt_run("deploy.releases", out="json", project=PROJECT, env="pro")
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"deploy.releases: no JSON (exit {proc.returncode}): {proc.stdout[-1500:]}") from exc


def ensure_good(bench, nodes, target):
    """The target is on every node and good there (deploy.releases); re-mark it good if a
    previous rollback marked it bad.  Returns what had to be re-marked."""
    remarked = []
    for _ in range(2):
        view = releases_view(bench)["nodes"]
        status = {n: next((r["status"] for r in view.get(n, []) if r["name"] == target), None) for n in nodes}
        missing = [n for n, s in status.items() if s is None]
        if missing:
            raise RuntimeError(f"{target} is not on {missing}")
        bad = [n for n, s in status.items() if s != "good"]
        if not bad:
            return remarked
        bench.salt("-L", ",".join(bad), "deploy.mark", PROJECT, target, "good")
        remarked = bad
    raise RuntimeError(f"{target} is still not good everywhere: {status}")


def profile_rollback(bench, to):
    """One emergency rollback under cProfile: where does salt-run's time go?"""
    out = tempfile.mktemp(prefix="dpl-bench-prof-", suffix=".prof")
    argv = [sys.executable, "-m", "cProfile", "-o", out, *bench.box.salt_cmd("salt-run"), "deploy.rollback",
            f"project={PROJECT}", "env=pro", "emergency=True", f"to={to}"]
    wall, proc = bench.run(argv)
    if proc.returncode != 0 or not os.path.exists(out):
        return {"error": f"exit {proc.returncode}: {proc.stdout[-500:]}"}
    st = pstats.Stats(out)
    os.unlink(out)
    entries = st.stats  # {(file, line, func): (cc, nc, tt, ct, callers)}

    def find(file_end, func, line=None):
        best = None
        for (f, ln, fn), (_cc, nc, _tt, ct, _callers) in entries.items():
            if f.endswith(file_end) and fn == func and (line is None or ln == line) \
                    and (best is None or ct > best[1]):
                best = (nc, ct)
        return best

    wanted = [
        ("whole salt-run process (under cProfile)", "salt/scripts.py", "salt_run"),
        ("python imports (all; incl. those made by the loader)", "<frozen importlib._bootstrap>", "_find_and_load"),
        ("salt loader: LazyLoader set-ups", "salt/loader/lazy.py", "__init__"),
        ("RunnerClient MasterMinion (runner's __salt__)", "salt/minion.py", "__init__"),
        ("Runner.run (after CLI parsing)", "salt/runner.py", "run"),
        ("deploy.rollback (the runner function)", "_runners/deploy.py", "rollback"),
        ("  _Run.__init__ (pillar, LocalClient, event)", "_runners/deploy.py", "__init__"),
        ("    _config -> master pillar compile", "_runners/deploy.py", "_config"),
        ("    LocalClient.__init__", "salt/client/__init__.py", "__init__"),
        ("  _take_lock", "_runners/deploy.py", "_take_lock"),
        ("  _plan (target matching, connected ids)", "_runners/deploy.py", "_plan"),
        ("  _emergency_target (the master's record)", "_runners/deploy.py", "_emergency_target"),
        ("  _inventories (deploy.releases; 0 calls with a record)", "_runners/deploy.py", "_inventories"),
        ("  _switch (1 call: deploy.switch)", "_runners/deploy.py", "_switch"),
        ("  _finish (history, events)", "_runners/deploy.py", "_finish"),
        ("LocalClient.cmd (all calls)", "salt/client/__init__.py", "cmd"),
        ("  waiting for returns (get_iter_returns)", "salt/client/__init__.py", "get_iter_returns"),
        ("  of which time.sleep(0.01) polling", "~", "<built-in method time.sleep>"),
    ]
    rows = []
    for label, file_end, func in wanted:
        found = find(file_end, func)
        rows.append({"step": label, "calls": found[0] if found else None,
                     "cumulative_seconds": round(found[1], 3) if found else None})
    return {"wall_seconds": round(wall, 3), "rows": rows}


def main(argv=None):  # noqa: C901 (the bench as a script, its steps inline; not run by the tests)
    parser = base_parser("rollback_vs_ping", __doc__, reps=7)
    parser.add_argument("--no-profile", action="store_true", help="skip the extra rollback under cProfile")
    parser.add_argument("--listing-reps", type=int, default=3,
                        help="rollbacks without the master's record (listing first), default 3")
    args = parser.parse_args(argv)

    bench = Bench("rollback_vs_ping", args, envs=batch_envs("34%"))
    with bench:
        box = bench.box
        nodes = list(box.nodes)  # pre-1, web-1..web-N: the env's nodes
        say("==> two releases on every node (untimed): v1.1.0, then v1.2.0")
        _, r1, _ = bench.release()
        bench.add_release("v1.2.0")
        _, r2, _ = bench.release()
        releases = [r1["release"], r2["release"]]
        say(f"    {releases[0]}\n    {releases[1]}")

        ping_argv = [*box.salt_cmd("salt"), "-L", ",".join(nodes), "test.ping"]
        floor_argv = [*box.salt_cmd("salt-run"), "test.arg"]
        # one batched call to the same minions from a runner (Salt's own salt.execute): the floor of any
        # salt-run command that makes one Salt call, before the nodes do any work
        runner_call_argv = [*box.salt_cmd("salt-run"), "salt.execute", ",".join(nodes), "test.ping", "tgt_type=list"]
        bench.run(ping_argv)  # warm-up (untimed)
        bench.run(floor_argv)
        bench.rtt(nodes)

        record_path = os.path.join(box.base, "var", "master", "cache", "deploy", "inventory", f"{PROJECT}_pro.json")

        def one_rep(i, total, without_record=False, number=None):
            cur = set(bench.currents(nodes).values())
            if len(cur) != 1 or cur.pop() not in releases:
                raise RuntimeError(f"nodes do not all serve one of the two releases: {bench.currents(nodes)}")
            current = box.current(nodes[0])
            target = releases[1 - releases.index(current)]
            remarked = ensure_good(bench, nodes, target)
            if without_record and os.path.exists(record_path):
                os.unlink(record_path)

            def rollback():
                kwargs = {"emergency": "True"}
                if i > 0:
                    kwargs["to"] = target
                return bench.deploy("deploy.rollback", **kwargs)

            def ping():
                wall, proc = bench.run(ping_argv)
                answered = sum(1 for n in nodes if re.search(rf"^{re.escape(n)}:\s*\n\s+True", proc.stdout, re.M))
                return wall, answered

            if i % 2 == 0:
                p_wall, answered = ping()
                r_wall, record, proc = rollback()
            else:
                r_wall, record, proc = rollback()
                p_wall, answered = ping()
            f_wall, _ = bench.run(floor_argv)
            x_wall, x_proc = bench.run(runner_call_argv)
            if x_proc.returncode != 0 or x_proc.stdout.count("True") != len(nodes):
                raise RuntimeError(f"salt-run salt.execute: exit {x_proc.returncode}: {x_proc.stdout[-800:]}")
            rtt, rtt_answered = bench.rtt(nodes)

            now = bench.currents(nodes)
            ok = (proc.returncode == 0 and record and record.get("result") == "success"
                  and all(v == target for v in now.values()))
            if not ok:
                raise RuntimeError(f"rep {i + 1}: rollback did not switch every node to {target}: exit "
                                   f"{proc.returncode}, {record and record.get('error')}, currents {now}\n"
                                   f"{proc.stdout[-2000:]}")
            if answered != len(nodes) or rtt_answered != len(nodes):
                raise RuntimeError(f"rep {i + 1}: only {answered}/{len(nodes)} minions answered test.ping")
            planned_at = next((float(m.group(1)) for m in map(PROGRESS_RE.match, proc.stdout.splitlines()) if m),
                              None)
            node_secs = [(n or {}).get("seconds") for n in (record.get("nodes") or {}).values()]
            rep = {
                "rep": i + 1, "order": "ping first" if i % 2 == 0 else "rollback first",
                "to": target, "with_to": i > 0, "remarked_good": remarked,
                "target_from": record.get("target_from"),
                "rollback_wall": round(r_wall, 3), "ping_wall": round(p_wall, 3), "runner_floor_wall": round(f_wall, 3),
                "runner_call_wall": round(x_wall, 3),
                "rtt_ping": round(rtt, 3),
                "runner_seconds": record.get("seconds"),
                "outside_runner": round(r_wall - record.get("seconds", 0), 3),
                "planned_at": planned_at,
                "switch_call": round(record["seconds"] - planned_at, 3) if planned_at is not None else None,
                "slowest_node_switch": max((s for s in node_secs if s is not None), default=None),
                "nodes_switched": len(node_secs),
            }
            say(f"rep {number or i + 1}/{total} ({rep['order']}): rollback {r_wall:.2f}s "
                f"(runner {record['seconds']}s, target "
                f"from the {rep['target_from']}) -> {target.split('_')[2]}, ping {p_wall:.2f}s, salt-run test.arg "
                f"{f_wall:.2f}s, in-process round trip {rtt:.2f}s")
            return rep

        reps = [one_rep(i, args.reps) for i in range(args.reps)]
        from_record = sum(1 for r in reps if r["target_from"] == "record")
        say(f"    target from the master's record in {from_record}/{len(reps)} reps")
        if args.listing_reps:
            say("==> without the master's record (removed before each rep): listing first")
        # i + 1: with to= (the first rep of all is the only one without), and the ping order goes on alternating
        listing = [one_rep(i + 1, args.listing_reps, without_record=True, number=i + 1)
                   for i in range(args.listing_reps)]
        if any(r["target_from"] != "listing" for r in listing):
            raise RuntimeError(f"a rollback without a record did not list first: {[r['target_from'] for r in listing]}")

        prof = None
        if not args.no_profile:
            current = box.current(nodes[0])
            target = releases[1 - releases.index(current)]
            ensure_good(bench, nodes, target)
            say("==> one more emergency rollback under cProfile")
            prof = profile_rollback(bench, target)

        keys = ("rollback_wall", "ping_wall", "runner_floor_wall", "runner_call_wall", "rtt_ping", "runner_seconds",
                "outside_runner", "planned_at", "switch_call", "slowest_node_switch")
        s = {k: stats([r[k] for r in reps]) for k in keys}
        ratio = round(s["rollback_wall"]["median"] / s["ping_wall"]["median"], 2)
        ratios = stats([r["rollback_wall"] / r["ping_wall"] for r in reps])
        ls = {k: stats([r[k] for r in listing]) for k in ("rollback_wall", "ping_wall", "planned_at")} \
            if listing else {}
        listing_ratio = round(ls["rollback_wall"]["median"] / ls["ping_wall"]["median"], 2) if listing else None

        say()
        say(f"==> emergency rollback of {len(nodes)} nodes vs `salt -L <same {len(nodes)} minions> test.ping`, "
            f"{args.reps} reps")
        say(bench.machine_line())
        say(table([
            stat_row("salt-run deploy.rollback emergency=True (wall)", s["rollback_wall"]),
            stat_row("salt -L <env nodes> test.ping (wall)", s["ping_wall"]),
            stat_row("salt-run test.arg (wall: salt-run floor)", s["runner_floor_wall"]),
            stat_row("salt-run salt.execute <env nodes> test.ping (wall: one call from a runner)",
                     s["runner_call_wall"]),
            stat_row("LocalClient.cmd(<env nodes>, test.ping) in-process (1 round trip)", s["rtt_ping"]),
            stat_row("  rollback: runner's own seconds (history)", s["runner_seconds"]),
            stat_row("  rollback: wall - runner seconds (start-up, pillar, exit)", s["outside_runner"]),
            stat_row("  rollback: runner start -> 'rollback to' (lock, plan, target from the record)", s["planned_at"]),
            stat_row("  rollback: 'rollback to' -> end (the switch call + record)", s["switch_call"]),
            stat_row("  rollback: slowest node's switch (switch+restart+checks)", s["slowest_node_switch"]),
            *([stat_row("without a record: rollback (wall; lists, then switches)", ls["rollback_wall"]),
               stat_row("without a record: test.ping (wall)", ls["ping_wall"]),
               stat_row("  without a record: runner start -> 'rollback to' (incl. listing)", ls["planned_at"])]
              if listing else []),
        ], STAT_HEADERS))
        verdict = "met" if ratio <= TARGET_RATIO else f"MISSED by {ratio - TARGET_RATIO:.2f}x " \
                  f"({(ratio / TARGET_RATIO - 1) * 100:.0f}% over)"
        say(f"ratio rollback/ping (medians): {ratio}x  (per-rep ratios: median {ratios['median']:.2f}, "
            f"min {ratios['min']:.2f}, max {ratios['max']:.2f}); target <= {TARGET_RATIO}x: {verdict}")
        if listing:
            say(f"without the master's record (listing first, {len(listing)} reps): {listing_ratio}x")
        call_ratio = round(s["runner_call_wall"]["median"] / s["ping_wall"]["median"], 2)
        say(f"one Salt call from any runner, no node work (salt-run salt.execute ... test.ping): {call_ratio}x "
            f"the ping; the rollback adds {s['rollback_wall']['median'] - s['runner_call_wall']['median']:.2f}s to it")
        if prof and "rows" in prof:
            say()
            say(f"==> cProfile of one emergency rollback (wall {prof['wall_seconds']}s under the profiler; "
                f"cumulative seconds, inflated by profiling)")
            say(table([[r["step"], fmt(r["cumulative_seconds"]), r["calls"] if r["calls"] is not None else "-"]
                       for r in prof["rows"]], ["step", "cumulative", "calls"]))
        bench.finish(runner_call_ratio=call_ratio, reps=reps, listing_reps=listing, listing_summary=ls,
                     listing_ratio=listing_ratio,
                     summary=s, ratio=ratio, per_rep_ratio=ratios, target_ratio=TARGET_RATIO,
                     target_met=ratio <= TARGET_RATIO, nodes=nodes, ping_target="-L " + ",".join(nodes),
                     releases=releases, profile=prof)
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
