"""What users see through the load balancer while the cluster changes.

    python bench/zero_downtime.py [--reps 1] [--rate 800] [--connections 16]

A sandbox with 10 web nodes behind HAProxy (env ``pro``: preprod pre-1, one stage in
batches of 34% -> 4, 4, 2 web nodes).  After an untimed first release (v1.1.0), each rep
runs four scenarios, each under a steady, bounded load through the LB:

1. release      a rolling release of a new version (3 batches: drain, switch, checks, back);
2. rollback     a normal rollback (the same path, to the last good release);
3. failing      a release whose checks fail on one node of the second batch (its pillar
                ``checks`` overridden with a text the page does not contain): that node
                switches back, the release stops, the third batch is not reached;
4. emergency    an emergency rollback (all nodes at once, no LB actions) to the last good
                release, given with ``to=``; whether the plain command (no ``to=``) would find
                it in this mixed state is probed beforehand with ``test=True`` and reported.

Load: ``wrk`` (``/usr/bin/wrk``) with ``bench/wrk_count.lua``: ``--connections`` keep-alive
connections, each waiting ``connections*1000/rate`` ms after every response (so at most
``--rate`` requests/s), started ``--lead`` s before the command and stopped (SIGINT) ``--tail``
s after it; at most 600 s.  Counted: requests, non-2xx responses, socket errors (connect,
read, write, timeout), latency, which release answered (first line of the page), and
HAProxy's own counters for the backend (retries, redispatches, 5xx, connection errors).
Target: 0 failed of >= 5,000 requests for the release and the normal rollback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import PROJECT, Bench, base_parser, batch_envs, say, stats, table, timings_of  # noqa: E402

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_count.lua")
WRK = "/usr/bin/wrk"
MIN_REQUESTS = 5000
HAP_FIELDS = ("stot", "hrsp_2xx", "hrsp_5xx", "econ", "eresp", "wretr", "wredis")


class Load:
    """wrk at a bounded rate until stop() (SIGINT: wrk prints its summary and the Lua counts)."""

    def __init__(self, url, rate, connections, threads=2, max_seconds=600):
        self.gap = max(int(round(connections * 1000.0 / rate)), 0)
        self.argv = [WRK, "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max_seconds}s",
                     "--timeout", "5s", "-s", LUA, url, "--", str(self.gap)]
        self.proc = None
        self.started = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        return self

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        window = time.monotonic() - self.started
        line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no counts (exit {self.proc.returncode}):\n{out[-1500:]}\n{err[-800:]}")
        data = json.loads(line[len("WRKJSON "):])
        data["window_seconds"] = round(window, 3)
        data["socket_errors"] = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
        data["failed"] = data["non2xx"] + data["socket_errors"]
        return data

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def haproxy_counters(box):
    out = box.lb.command("show stat")
    rows = csv.DictReader(io.StringIO(out.lstrip("# ")))
    for row in rows:
        if row.get("pxname") == PROJECT and row.get("svname") == "BACKEND":
            return {k: int(row.get(k) or 0) for k in HAP_FIELDS}
    return {k: 0 for k in HAP_FIELDS}


def main(argv=None):  # noqa: C901 (the bench as a script, its scenarios inline; not run by the tests)
    parser = base_parser("zero_downtime", __doc__, reps=1)
    parser.add_argument("--rate", type=int, default=800, help="most requests per second (default %(default)s)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default %(default)s)")
    parser.add_argument("--lead", type=float, default=0.5, help="seconds of load before each command")
    parser.add_argument("--tail", type=float, default=0.5, help="seconds of load after each command")
    args = parser.parse_args(argv)
    if not os.access(WRK, os.X_OK):
        say(f"{WRK} is missing: apt-get install -y wrk")
        return 1

    bench = Bench("zero_downtime", args, envs=batch_envs("34%"))
    with bench:
        box = bench.box
        say("==> first release of v1.1.0 (untimed)")
        _, first, _ = bench.release()
        batches = [b["nodes"] for b in timings_of(first)[3]]
        fail_node = batches[1][1] if len(batches) > 1 and len(batches[1]) > 1 else batches[-1][0]
        say(f"    batches: {' | '.join(','.join(b) for b in batches)}; the failing check goes on {fail_node}")
        box.wait_lb_up()
        good = first["release"]

        def run_scenario(name, action):
            states = box.wait_lb_up()
            if any(s != "UP" for s in states.values()):
                raise RuntimeError(f"{name}: not every web node is UP in HAProxy before the scenario: {states}")
            hap0 = haproxy_counters(box)
            load = Load(box.lb.url, args.rate, args.connections).start()
            bench.cleanups.append(load.kill)
            time.sleep(args.lead)
            t = time.monotonic()
            info = action()
            op = time.monotonic() - t
            time.sleep(args.tail)
            counts = load.stop()
            hap1 = haproxy_counters(box)
            hap = {k: hap1[k] - hap0[k] for k in HAP_FIELDS}
            res = {"scenario": name, "op_seconds": round(op, 3), **counts, "haproxy": hap, **info}
            say(f"  {name}: {op:.1f}s; {counts['requests']} requests in {counts['window_seconds']:.1f}s, "
                f"non-2xx {counts['non2xx']}, socket errors {counts['socket_errors']}, "
                f"p99 {counts['latency_p99_us'] / 1000:.0f} ms, max {counts['latency_max_us'] / 1000:.0f} ms; "
                f"HAProxy retries {hap['wretr']}, redispatches {hap['wredis']}; answered by {counts['versions']}")
            return res

        results = []
        for rep in range(1, args.reps + 1):
            say(f"==> rep {rep}/{args.reps}")
            v_new, v_bad = f"v4.{rep}.1", f"v4.{rep}.2"

            bench.add_release(v_new)

            def release():
                wall, record, _ = bench.release()
                return {"result": record["result"], "release": record["release"], "command_wall": round(wall, 3)}

            r1 = run_scenario("release", release)
            if set(bench.currents().values()) != {r1["release"]}:
                raise RuntimeError(f"release: not every node serves {r1['release']}: {bench.currents()}")

            def rollback():
                wall, record, proc = bench.deploy("deploy.rollback")
                if proc.returncode != 0 or record.get("result") != "success":
                    raise RuntimeError(
                        f"normal rollback failed: {record and record.get('error')}\n{proc.stdout[-2000:]}")
                return {"result": record["result"], "release": record["release"], "command_wall": round(wall, 3)}

            r2 = run_scenario("rollback", rollback)
            if set(bench.currents().values()) != {good}:
                raise RuntimeError(f"rollback: not every node serves {good}: {bench.currents()}")

            failing = [{"url": box.check_url(fail_node, "/"), "status": 200,
                        "contains": "a text this page never shows", "retries": 2, "delay": 0.2}]
            bench.set_pillar(node_extra={fail_node: {"checks": failing}})
            bench.add_release(v_bad)

            def failing_release():
                wall, record, proc = bench.release(expect_ok=False)
                if proc.returncode == 0 or not record or record.get("result") != "failure":
                    raise RuntimeError(f"the failing release did not fail: {proc.stdout[-2000:]}")
                return {"result": record["result"], "release": record["release"], "command_wall": round(wall, 3),
                        "failed_nodes": sorted(n for n, v in record["nodes"].items() if v.get("result") == "failed"),
                        "error": record.get("error"), "batches_run": len(timings_of(record)[3])}

            r3 = run_scenario("failing", failing_release)
            bench.set_pillar(node_extra={})
            r3["currents_after"] = {n: (c or "").split("_")[2] if c else None for n, c in bench.currents().items()}

            # would the plain command (no to=) find the last good release in this mixed state?
            _, probe = bench.salt_run("deploy.rollback", out="json", project=PROJECT, env="pro", emergency="True",
                                      test="True")
            try:
                probe = json.loads(probe.stdout)
            except ValueError:
                probe = {"error": probe.stdout[-500:]}
            r3["plain_emergency_rollback_would"] = probe.get("target") or ("refuse: " + str(probe.get("error")))

            def emergency():
                # to= the last good release: see r3["plain_emergency_rollback_would"] for the plain command
                wall, record, proc = bench.deploy("deploy.rollback", emergency="True", to=good)
                if proc.returncode != 0 or record.get("result") != "success":
                    raise RuntimeError(f"emergency rollback failed: {record and record.get('error')}\n"
                                       f"{proc.stdout[-2000:]}")
                return {"result": record["result"], "release": record["release"], "command_wall": round(wall, 3)}

            r4 = run_scenario("emergency", emergency)
            if set(bench.currents().values()) != {good}:
                raise RuntimeError(f"emergency rollback: not every node serves {good}: {bench.currents()}")
            for r in (r1, r2, r3, r4):
                r["rep"] = rep
            results += [r1, r2, r3, r4]

        say()
        say(f"==> requests through HAProxy during each operation ({args.connections} keep-alive connections, "
            f"<= {args.rate} req/s, load from {args.lead}s before to {args.tail}s after the command), "
            f"{args.reps} rep(s)")
        say(bench.machine_line())
        rows = []
        for r in results:
            rows.append([f"{r['scenario']} (rep {r['rep']})", f"{r['op_seconds']:.1f}s", r["requests"],
                         f"{r['requests'] / r['window_seconds']:.0f}/s", r["non2xx"], r["socket_errors"],
                         f"{r['latency_p99_us'] / 1000:.0f}/{r['latency_max_us'] / 1000:.0f}",
                         r["haproxy"]["wretr"], r["haproxy"]["wredis"], r["haproxy"]["hrsp_5xx"],
                         ", ".join(f"{k.split()[-1]}: {v}" for k, v in sorted(r["versions"].items()))])
        say(table(rows, ["scenario", "command", "requests", "rate", "non-2xx", "sock err", "p99/max ms",
                         "hap retries", "redispatch", "hap 5xx", "answered by"]))
        verdicts = {}
        for name in ("release", "rollback"):
            mine = [r for r in results if r["scenario"] == name]
            failed = sum(r["failed"] for r in mine)
            low = [r["requests"] for r in mine if r["requests"] < MIN_REQUESTS]
            verdicts[name] = {"failed": failed, "below_min_requests": low,
                              "met": failed == 0 and not low}
            say(f"target {name}: 0 failed of >= {MIN_REQUESTS}: "
                + ("met" if verdicts[name]["met"] else
                   f"MISSED (failed {failed}" + (f", fewer than {MIN_REQUESTS} requests: {low}" if low else "") + ")"))
        for r in results:
            if r["scenario"] == "failing":
                say(f"failing release (rep {r['rep']}): failed nodes {r['failed_nodes']}, batches run "
                    f"{r['batches_run']}, afterwards: {r['currents_after']}")
                say(f"  then `deploy.rollback emergency=True test=True` (no to=) would: "
                    f"{r['plain_emergency_rollback_would'][:300]}")
        em = [r for r in results if r["scenario"] == "emergency"]
        say(f"emergency rollback: failed {sum(r['failed'] for r in em)} of {sum(r['requests'] for r in em)} requests")
        bench.finish(scenarios=results, verdicts=verdicts, min_requests=MIN_REQUESTS, fail_node=fail_node,
                     batches=batches, wrk=Load(box.lb.url, args.rate, args.connections).argv,
                     op_seconds={n: stats([r["op_seconds"] for r in results if r["scenario"] == n])
                                 for n in ("release", "rollback", "failing", "emergency")})
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
