"""The analysis gate's HAProxy provider: the load balancer's own per-server counters.

``deploy_lb.stats`` (HAProxy's ``show stat``) is read at the start of a bake, every ``interval``
seconds, and at its end.  From those samples, for the servers on the new release and for those
still on the old one (the baseline):

- requests and 5xx responses in the bake: the differences of HAProxy's cumulative counters
  (``hrsp_1xx`` ... ``hrsp_5xx``, ``hrsp_other``) between the first and the last sample;
- ``latency_ms`` (also ``p95_ms``): the 95th percentile (nearest rank) of the servers' ``rtime``
  readings taken during the bake.  HAProxy keeps no percentiles: ``rtime`` is a server's *mean*
  response time over its last 1024 requests.  So this is a high percentile of short-window
  means, not of single requests: it catches a release that is slower overall, not a slow tail
  of a few percent of requests.  A reading counts only if the server answered requests since
  the previous sample (otherwise ``rtime`` still describes older traffic).

With several load balancers (pillar ``lb`` as a list), each sample is every LB's ``show stat`` in one
call, and a server's counters are summed across the LBs (:func:`combined`): its responses, errors
and counts add up; its mean and maximum times keep the largest reading.
"""

import math

from salt.exceptions import SaltInvocationError

DRIVERS = ("haproxy",)  # the LB drivers that keep per-server counters
LATENCY = "p95 of the mean response time (HAProxy rtime)"
LATENCY_SHORT = "p95 rtime"
RESPONSE_COUNTERS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
# show stat fields that are means or maxima, not counts: across LBs the largest reading is kept
NOT_SUMMED = ("qtime", "ctime", "rtime", "ttime", "qtime_max", "ctime_max", "rtime_max", "ttime_max")


def settings(raw, where):
    """HAProxy has no pillar keys of its own."""
    if raw:
        from deploy_master.gates import analysis  # pylint: disable=import-outside-toplevel

        raise SaltInvocationError(
            f"{where}: unknown analysis key {sorted(str(k) for k in raw)[0]!r}; accepted: {', '.join(analysis.KEYS)}")
    return {}


class Window:
    """One bake: the LB's counters of the new and old servers, sampled."""

    def __init__(self, settings, ctx):  # pylint: disable=redefined-outer-name
        self.ctx = ctx
        self.nodes = list(ctx.new) + list(ctx.old)
        self.taken = [combined(ctx.lb_call("stats", self.nodes))]

    def sample(self):
        self.taken.append(combined(self.ctx.lb_call("stats", self.nodes)))

    def figures(self):
        self.sample()
        out = figures_of([t["servers"] for t in self.taken], self.ctx.new, self.ctx.old)
        out["samples"] = len(self.taken)
        out["window"] = [self.taken[0].get("time"), self.taken[-1].get("time")]
        return out


def combined(per_lb):
    """One sample from every LB's (``{lb name: {"servers": {server: row}, "time"}}``): the servers'
    counters summed across the LBs (means and maxima: the largest; ``status``: the one every LB
    gives, or ``"<lb>: <status>, ..."``), the latest LB's time."""
    servers, statuses = {}, {}
    for name, sample in sorted(per_lb.items()):
        for server, row in (sample.get("servers") or {}).items():
            total = servers.setdefault(server, {})
            for key, value in row.items():
                if key == "status":
                    statuses.setdefault(server, {})[name] = value
                elif key in NOT_SUMMED:
                    total[key] = max(_counter(total, key), _counter(row, key))
                else:
                    total[key] = _counter(total, key) + _counter(row, key)
    for server, seen in statuses.items():
        values = set(seen.values())
        servers[server]["status"] = values.pop() if len(values) == 1 else ", ".join(
            f"{k}: {v}" for k, v in seen.items())
    return {"servers": servers, "time": max((s.get("time") or 0 for s in per_lb.values()), default=None)}


def figures_of(samples, new, old):
    """The figures of the new and old servers from ``samples`` (``{server: row}`` each, oldest first)."""
    return {"new": group_figures(samples, new), "old": group_figures(samples, old) if old else None, "notes": []}


def _counter(row, key):
    try:
        return int(row.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def _delta(first, last, key):
    """A cumulative counter's growth; a counter that went down was reset (HAProxy reloaded): its
    value now is what it counted since."""
    a, b = _counter(first, key), _counter(last, key)
    return b - a if b >= a else b


def server_figures(samples, server):
    """One server's figures over the bake from ``samples`` (a list of ``{server: row}``, oldest first)."""
    rows = [s[server] for s in samples if server in s]
    if len(rows) < 2:
        return {"responses": 0, "errors": 0, "rtimes": [], "samples": len(rows)}
    first, last = rows[0], rows[-1]
    counts = {key: _delta(first, last, key) for key in RESPONSE_COUNTERS}
    rtimes = []
    for before, after in zip(rows, rows[1:], strict=False):
        if sum(_delta(before, after, key) for key in RESPONSE_COUNTERS) > 0:
            rtimes.append(_counter(after, "rtime"))
    return {
        "responses": sum(counts.values()),
        "errors": counts["hrsp_5xx"],
        **{key: counts[key] for key in ("hrsp_2xx", "hrsp_4xx", "hrsp_5xx")},
        "rtimes": rtimes,
        "rtime_max": _counter(last, "rtime_max"),
        "status": last.get("status"),
        "samples": len(rows),
    }


def p95(values):
    """Nearest-rank 95th percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def group_figures(samples, servers):
    """The figures of a group of servers (the new release's or the old one's)."""
    per = {s: server_figures(samples, s) for s in servers}
    responses = sum(f["responses"] for f in per.values())
    errors = sum(f["errors"] for f in per.values())
    rtimes = [r for f in per.values() for r in f["rtimes"]]
    return {
        "servers": sorted(servers),
        "requests": responses,
        "responses": responses,
        "errors": errors,
        "latency_ms": p95(rtimes),
        "error_rate": round(errors / responses, 6) if responses else None,
        "p95_ms": p95(rtimes),
        "per_server": {s: {k: v for k, v in f.items() if k != "rtimes"} | {"p95_ms": p95(f["rtimes"])}
                       for s, f in per.items()},
    }
