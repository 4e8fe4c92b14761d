"""Analysis of live traffic on the load balancer: the pillar's ``analysis`` and the verdict (pure).

After a stage (or each batch), the runner reads the load balancer's own per-server counters
(``deploy_lb.stats``: HAProxy's ``show stat``) at the start of a bake, every ``interval``
seconds, and at its end.  From those samples this module computes, for the servers on the new
release and for the servers still on the old one (the baseline):

- responses and 5xx responses in the bake: the differences of HAProxy's cumulative counters
  (``hrsp_1xx`` … ``hrsp_5xx``, ``hrsp_other``) between the first and the last sample;
- the error rate: 5xx / responses;
- ``p95_ms``: the 95th percentile (nearest rank) of the servers' ``rtime`` readings taken
  during the bake.  HAProxy keeps no percentiles: ``rtime`` is a server's *mean* response
  time over its last 1024 requests.  So ``p95_ms`` is a high percentile of short-window
  means, not of single requests: it catches a release that is slower overall, not a slow
  tail of a few percent of requests.  A reading counts only if the server answered
  requests since the previous sample (otherwise ``rtime`` still describes older traffic).

The verdict (``decide``):

``compare: baseline`` (default)
    the new servers fail when their error rate is higher than the old servers' by more than
    ``max_error_rate`` (percentage points), or their ``p95_ms`` higher by more than
    ``max_p95_ms``.  When no old server is left in the LB or the old ones answered fewer than
    ``min_requests`` in the bake, the limits apply as absolute ones (and the figures say so).
``compare: absolute``
    the new servers fail when their error rate is above ``max_error_rate`` or their
    ``p95_ms`` above ``max_p95_ms``.

Too few requests on the new servers (fewer than ``min_requests`` in the bake) is
*inconclusive*: it fails the stage (``inconclusive: fail``, the default: a gate that lets a
release through without evidence is no gate) or passes it with a warning
(``inconclusive: pass``).
"""

import math
import re

from salt.exceptions import SaltInvocationError

KEYS = ("bake", "interval", "max_error_rate", "max_p95_ms", "min_requests", "after", "compare", "inconclusive")
DEFAULTS = {"bake": 60, "interval": 5, "max_error_rate": "1%", "max_p95_ms": None, "min_requests": 100,
            "after": "stage", "compare": "baseline", "inconclusive": "fail"}
CHOICES = {"after": ("stage", "batch"), "compare": ("baseline", "absolute"), "inconclusive": ("fail", "pass")}
RESPONSE_COUNTERS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
DRIVERS = ("haproxy",)


def _number(value, where, key, minimum, whole=False):
    try:
        number = None if isinstance(value, bool) else float(str(value).strip())
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < minimum or (whole and number != int(number)):
        kind = "a whole number" if whole else "a number"
        raise SaltInvocationError(f"{where}: analysis:{key} {value!r} must be {kind} >= {minimum}")
    return int(number) if whole else number


def _rate(value, where):
    """'1%' -> 0.01; only a percentage is accepted (a bare 1 could mean 1 % or 100 %)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*", str(value)) if isinstance(value, str) else None
    if not match or float(match.group(1)) > 100:
        raise SaltInvocationError(
            f"{where}: analysis:max_error_rate {value!r} must be a percentage from 0% to 100%, e.g. '1%' or '0.5%'")
    return float(match.group(1)) / 100


def _parse_keys(raw, where):
    out = {}
    for key, value in raw.items():
        if key == "max_error_rate":
            out[key] = _rate(value, where)
        elif key == "max_p95_ms":
            out[key] = None if value is None else _number(value, where, key, 0)
        elif key in ("bake", "interval"):
            out[key] = _number(value, where, key, 1 if key == "bake" else 0.5)
        elif key == "min_requests":
            out[key] = _number(value, where, key, 0, whole=True)
        elif value not in CHOICES[key]:
            raise SaltInvocationError(f"{where}: analysis:{key} {value!r} must be one of {', '.join(CHOICES[key])}")
        else:
            out[key] = value
    return out


def parse(value, where, base=None):
    """The analysis settings of an env (``base`` None) or of a stage (``base``: the env's).

    Returns a dict of every key (defaults filled in), or None when there is no analysis:
    an env without ``analysis``, a stage without one inherits the env's, ``analysis: false``
    turns it off for that stage.  A stage may give only the keys it changes.  One
    ``SaltInvocationError`` naming ``where`` and the key for anything wrong."""
    if value is None:
        return base
    if value is False:
        return None
    if value is True:
        return base if base is not None else _parse_keys(DEFAULTS, where)
    if not isinstance(value, dict):
        raise SaltInvocationError(f"{where}: analysis must be a dict of {', '.join(KEYS)} (or false for a stage)")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise SaltInvocationError(f"{where}: unknown analysis key {unknown[0]!r}; accepted: {', '.join(KEYS)}")
    out = dict(base) if base is not None else _parse_keys(DEFAULTS, where)
    out.update(_parse_keys(value, where))
    return out


def check_driver(driver, where):
    """Analysis reads the LB's per-server counters: only HAProxy has them."""
    if driver in DRIVERS:
        return
    if driver == "nginx":
        why = ("open-source nginx keeps no per-server response counters (only nginx Plus's API or a parser of "
               "its access log give them)")
    else:
        why = "there is no load balancer to read the traffic from"
    raise SaltInvocationError(
        f"{where}: analysis needs the haproxy LB driver, not {driver!r}: {why}; remove 'analysis' from this env")


def stage_settings(envc, stage_name, where):
    """The analysis settings that apply after the stage called ``stage_name`` (None: no analysis)."""
    env_settings = parse(envc.get("analysis"), where)
    for stage in envc.get("stages") or []:
        if isinstance(stage, dict) and str(stage.get("name")) == stage_name:
            return parse(stage.get("analysis"), f"{where} stage {stage_name!r}", env_settings)
    return env_settings


# --------------------------------------------------------------------------- figures


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
    for before, after in zip(rows, rows[1:]):
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
        "responses": responses,
        "errors": errors,
        "error_rate": round(errors / responses, 6) if responses else None,
        "p95_ms": p95(rtimes),
        "per_server": {s: {k: v for k, v in f.items() if k != "rtimes"} | {"p95_ms": p95(f["rtimes"])}
                       for s, f in per.items()},
    }


def _pct(rate):
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def decide(settings, samples, new, old):
    """The verdict: ``{"verdict": pass|fail|inconclusive, "passed": bool, "reasons": [...],
    "mode": baseline|absolute, "new": figures, "old": figures or None, "limits": ...}``.

    ``samples``: the LB's per-server rows, oldest first; ``new``: the servers on the new
    release; ``old``: those still on the old one (in the LB)."""
    new_fig = group_figures(samples, new)
    old_fig = group_figures(samples, old) if old else None
    limits = {k: settings[k] for k in ("max_error_rate", "max_p95_ms", "min_requests")}
    mode = settings["compare"]
    notes = []
    if mode == "baseline":
        if not old:
            mode = "absolute"
            notes.append("no server left on the old release: absolute limits")
        elif old_fig["responses"] < settings["min_requests"]:
            mode = "absolute"
            notes.append(f"the old release's servers answered {old_fig['responses']} requests, fewer than "
                         f"min_requests={settings['min_requests']}: absolute limits")
    out = {"mode": mode, "new": new_fig, "old": old_fig, "limits": limits, "notes": notes, "reasons": []}
    if new_fig["responses"] < settings["min_requests"]:
        out["reasons"].append(
            f"inconclusive: the new release's servers ({', '.join(new_fig['servers'])}) answered "
            f"{new_fig['responses']} requests in the bake, fewer than min_requests={settings['min_requests']}")
        out["verdict"] = "inconclusive"
        out["passed"] = settings["inconclusive"] == "pass"
        return out
    base_rate = old_fig["error_rate"] if mode == "baseline" else 0.0
    rate_limit = base_rate + settings["max_error_rate"]
    if (new_fig["error_rate"] or 0.0) > rate_limit + 1e-12:
        against = (f"the old release's {_pct(base_rate)} ({old_fig['errors']} of {old_fig['responses']} on "
                   f"{', '.join(old_fig['servers'])}) + " if mode == "baseline" else "")
        out["reasons"].append(
            f"error rate {_pct(new_fig['error_rate'])} ({new_fig['errors']} 5xx of {new_fig['responses']} responses "
            f"on {', '.join(new_fig['servers'])}) is above {against}max_error_rate "
            f"{_pct(settings['max_error_rate'])}")
    if settings["max_p95_ms"] is not None and new_fig["p95_ms"] is not None:
        base_p95 = (old_fig["p95_ms"] or 0) if mode == "baseline" else 0
        if new_fig["p95_ms"] > base_p95 + settings["max_p95_ms"]:
            against = f"the old release's {base_p95} ms + " if mode == "baseline" else ""
            out["reasons"].append(
                f"p95 of the mean response time (HAProxy rtime) {new_fig['p95_ms']} ms is above {against}"
                f"max_p95_ms {settings['max_p95_ms']:g} ms")
    out["verdict"] = "fail" if out["reasons"] else "pass"
    out["passed"] = not out["reasons"]
    return out


def describe(result):
    """One line for people: the figures the decision used."""
    new, old = result["new"], result["old"]
    line = (f"new ({', '.join(new['servers'])}): {new['responses']} responses, {new['errors']} 5xx "
            f"({_pct(new['error_rate'])}), p95 rtime {new['p95_ms']} ms")
    if old:
        line += (f"; old ({', '.join(old['servers'])}): {old['responses']} responses, {old['errors']} 5xx "
                 f"({_pct(old['error_rate'])}), p95 rtime {old['p95_ms']} ms")
    return f"{line}; {result['mode']} -> {result['verdict']}"
