"""How fast the runner reads a batched call's returns: Salt's ``LocalClient.cmd`` against
``deploy_master.jobs``.

    python bench/returns.py [--reps 5] [--web 10]

A sandbox with ``--web`` web nodes (+ pre-1, lb-1) and one release on every node.  Then, alternating,
``--reps`` times each, one batched call to the web nodes:

- ``test.arg`` with an argument of 100 bytes, 16 kB and 64 kB (every return echoes the job's
  arguments: the bytes read grow with the argument times the nodes);
- ``deploy.current project=rainbow inventory=True`` (what a switch or prepare returns: the node's
  inventory, ~2 kB);

made two ways, in-process on the sandbox's master, with the same client:

- **Salt's client** (the runner up to this change): ``LocalClient.cmd(..., tgt_type='list',
  full_return=True)``; it polls the event bus without blocking, and Salt 3008's TCP transport reads
  one 4 kB chunk per poll, with 10 ms between polls;
- **blocking reads, events only** (before the job-cache check): ``jobs.publish`` + ``jobs.gather``;
- **blocking reads + job cache** (the runner now): ``jobs.run``, which also reads each return from the
  master's job cache (one ``get_jid`` per call when every return is there), so that an event a peer
  minion forged does not count.

Reported: medians (min/max) of each and the ratio.  Every call must bring back every node.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_utils"))

from bench._common import PROJECT, STAT_HEADERS, Bench, base_parser, say, stat_row, stats, table  # noqa: E402
from deploy_master import jobs  # noqa: E402


def cases():
    return [
        ("test.arg, 100 B argument", "test.arg", ["x" * 100], {}),
        ("test.arg, 16 kB argument", "test.arg", ["x" * 16384], {}),
        ("test.arg, 64 kB argument", "test.arg", ["x" * 65536], {}),
        ("deploy.current with inventory", "deploy.current", [], {"project": PROJECT, "inventory": True}),
    ]


def salt_cmd(client, nodes, fun, arg, kwarg):
    return client.cmd(nodes, fun, arg, tgt_type="list", kwarg=kwarg, full_return=True, timeout=30) or {}


def events_only(client, nodes, fun, arg, kwarg):
    import salt.utils.jid  # pylint: disable=import-outside-toplevel

    jid = salt.utils.jid.gen_jid(client.opts)
    if not jobs.publish(client, nodes, fun, kwarg, jid, 30, arg=arg):
        return {}
    return jobs.gather(client, jid, nodes, timeout=30, quiet=10)


def blocking(client, nodes, fun, arg, kwarg):
    import salt.utils.jid  # pylint: disable=import-outside-toplevel

    return jobs.run(client, nodes, fun, salt.utils.jid.gen_jid(client.opts), timeout=30, quiet=10, arg=arg, kwarg=kwarg)


WAYS = (("Salt's client (LocalClient.cmd)", salt_cmd), ("blocking reads, events only", events_only),
        ("blocking reads + job cache (jobs.run)", blocking))


def main():
    parser = base_parser("returns", __doc__, reps=5)
    args = parser.parse_args()
    with Bench("returns", args) as bench:
        nodes = sorted(f"web-{i}" for i in range(1, args.web + 1))
        bench.release()
        client = bench.local_client()
        times = {(label, way): [] for label, *_ in cases() for way, _ in WAYS}
        for rep in range(args.reps):
            for label, fun, arg, kwarg in cases():
                for way, call in (WAYS if rep % 2 == 0 else WAYS[::-1]):  # alternating order
                    started = time.monotonic()
                    got = call(client, nodes, fun, arg, kwarg)
                    times[(label, way)].append(time.monotonic() - started)
                    if len(got) != len(nodes):
                        raise RuntimeError(f"{way}: {fun} brought back {len(got)} of {len(nodes)} nodes")
            say(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{label}: " + " / ".join(f"{times[(label, way)][-1]:.2f}s" for way, _ in WAYS)
                for label, *_ in cases()))
        rows, result = [], {}
        for label, *_ in cases():
            for way, _ in WAYS:
                st = stats(times[(label, way)])
                rows.append(stat_row(f"{label}: {way}", st))
                result.setdefault(label, {})[way] = st
            result[label]["ratio"] = round(result[label][WAYS[2][0]]["median"] / result[label][WAYS[0][0]]["median"], 3)
            result[label]["cache_check_ratio"] = round(
                result[label][WAYS[2][0]]["median"] / result[label][WAYS[1][0]]["median"], 3)
        say(f"\n==> one batched call to {len(nodes)} web nodes, {args.reps} reps each, alternating")
        say(bench.machine_line())
        say(table(rows, STAT_HEADERS))
        for label, *_ in cases():
            say(f"{label}: jobs.run / Salt's client (medians): {result[label]['ratio']:.2f}; "
                f"with the job-cache check / events only: {result[label]['cache_check_ratio']:.2f}")
        bench.finish(calls=result, nodes=len(nodes))


if __name__ == "__main__":
    main()
