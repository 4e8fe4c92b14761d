"""The analysis gate: live traffic on the new release against the old one (pillar ``analysis``).

After a stage (or each batch, ``after: batch``), the gate watches ``bake`` seconds of traffic
through its provider (``provider``, default ``haproxy``: ``deploy_master.gates.PROVIDERS``),
which gives, for the servers on the new release and those still on the old one (the baseline),
requests, 5xx errors and a latency.  The decision, the same for every provider:

``compare: baseline`` (default)
    the new servers fail when their error rate is higher than the old servers' by more than
    ``max_error_rate`` (percentage points), or their latency higher by more than
    ``max_p95_ms``.  When no old server is left or the old ones answered fewer than
    ``min_requests`` in the bake, the limits apply as absolute ones (and the figures say so).
``compare: absolute``
    the new servers fail when their error rate is above ``max_error_rate`` or their latency
    above ``max_p95_ms``.

Too few requests on the new servers (fewer than ``min_requests`` in the bake) is
*inconclusive*: it fails the stage (``inconclusive: fail``, the default: a gate that lets a
release through without evidence is no gate) or passes it with a warning
(``inconclusive: pass``).
"""

import math
import re
import time

from salt.exceptions import SaltInvocationError

from deploy_master import gates

NAME = "analysis"
KEYS = ("bake", "interval", "max_error_rate", "max_p95_ms", "min_requests", "after", "compare", "inconclusive",
        "provider")
DEFAULTS = {"bake": 60, "interval": 5, "max_error_rate": "1%", "max_p95_ms": None, "min_requests": 100,
            "after": "stage", "compare": "baseline", "inconclusive": "fail", "provider": "haproxy"}
CHOICES = {"after": ("stage", "batch"), "compare": ("baseline", "absolute"), "inconclusive": ("fail", "pass"),
           "provider": tuple(gates.PROVIDERS)}


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

    Returns a dict of every key (defaults filled in; ``options``: the provider's own keys, as its
    ``settings`` validated them), or None when there is no analysis: an env without
    ``analysis``, a stage without one inherits the env's, ``analysis: false`` turns it off for
    that stage.  A stage may give only the keys it changes.  One ``SaltInvocationError`` naming
    ``where`` and the key for anything wrong."""
    if value is None:
        return base
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"{where}: analysis must be a dict of {', '.join(KEYS)} (or false for a stage)")
    own = {k: v for k, v in value.items() if k in KEYS}
    out = dict(base) if base is not None else {**_parse_keys(DEFAULTS, where), "options": {}}
    out.update(_parse_keys(own, where))
    raw = {k: v for k, v in value.items() if k not in KEYS}
    if base is not None and out["provider"] == base["provider"]:
        raw = {**base["options"], **raw}
    out["options"] = gates.provider(out["provider"]).settings(raw, where)
    return out


def check_driver(settings, driver, where):
    """An LB-based provider reads the LB's per-server counters: only some drivers have them."""
    drivers = getattr(gates.provider(settings["provider"]), "DRIVERS", None)
    if drivers is None or driver in drivers:
        return
    if driver == "nginx":
        why = ("open-source nginx keeps no per-server response counters (only nginx Plus's API or a parser of "
               "its access log give them)")
    else:
        why = "there is no load balancer to read the traffic from"
    raise SaltInvocationError(
        f"{where}: analysis needs the haproxy LB driver, not {driver!r}: {why}; use provider: prometheus "
        "(docs/analysis.md) or remove 'analysis' from this env")


def check(envc, env, driver):
    """The env's and its stages' ``analysis``, each with its provider's needs (exit 2 on bad input)."""
    where = f"env {env!r}"
    base = parse(envc.get("analysis"), where)
    found = [base] if base is not None else []
    for index, stage in enumerate(envc.get("stages") or []):
        name = stage.get("name") or index + 1
        settings = parse(stage.get("analysis"), f"{where} stage {name!r}", base)
        if settings is not None:
            found.append(settings)
    for settings in found:
        check_driver(settings, driver, where)


def stage_settings(envc, stage_name, where):
    """The analysis settings that apply after the stage called ``stage_name`` (None: no analysis)."""
    env_settings = parse(envc.get("analysis"), where)
    for stage in envc.get("stages") or []:
        if isinstance(stage, dict) and str(stage.get("name")) == stage_name:
            return parse(stage.get("analysis"), f"{where} stage {stage_name!r}", env_settings)
    return env_settings


# --------------------------------------------------------------------------- the gate


def settings(envc, stage, where):  # pylint: disable=redefined-outer-name
    return stage_settings(envc, stage["name"], where)


def when(settings):  # pylint: disable=redefined-outer-name
    return settings["after"]


def run(settings, ctx):  # pylint: disable=redefined-outer-name
    """Watch ``bake`` seconds through the provider's window, sampling every ``interval``; decide."""
    started = time.monotonic()
    deadline = started + settings["bake"]
    window = gates.provider(settings["provider"]).Window(settings, ctx)
    next_sample = started + settings["interval"]
    samples = 1
    while time.monotonic() < deadline:
        ctx.check(f"during the analysis of {ctx.label}")
        if time.monotonic() >= next_sample:
            window.sample()
            samples += 1
            ctx.event("sample", f"{ctx.label}: analysis: sample {samples}")
            next_sample += settings["interval"]
        time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
    figures = window.figures()
    result = decide(settings, figures, ctx.new, ctx.old)
    record = {"seconds": round(time.monotonic() - started, 3), "samples": figures.get("samples", samples + 1),
              "window": figures.get("window"), "settings": settings, **result}
    return gates.Outcome(result["verdict"], result["passed"], {"new": result["new"], "old": result["old"]},
                         result["reasons"], record)


# --------------------------------------------------------------------------- the decision


def _pct(rate):
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def _group(fig, nodes):
    """A provider's group figures with what the decision reads filled in."""
    if fig is None:
        return None
    fig = dict(fig)
    fig.setdefault("servers", sorted(nodes))
    requests, errors = fig.get("requests"), fig.get("errors")
    fig.setdefault("error_rate", round(errors / requests, 6) if requests and errors is not None else None)
    return fig


def _missing(fig):
    """True if the provider has no count for the group (a failed query: its notes say why)."""
    return fig.get("requests") is None or fig.get("errors") is None


def _baseline(settings, old_fig, old):
    """The comparison actually made (``baseline`` may fall back to absolute limits) and why."""
    if settings["compare"] != "baseline":
        return "absolute", []
    if not old:
        return "absolute", ["no server left on the old release: absolute limits"]
    if _missing(old_fig):
        return "absolute", ["no figures for the old release's servers (see the notes): absolute limits"]
    if old_fig["requests"] < settings["min_requests"]:
        return "absolute", [f"the old release's servers answered {old_fig['requests']} requests, fewer than "
                            f"min_requests={settings['min_requests']}: absolute limits"]
    return "baseline", []


def _latency_reason(settings, new_fig, old_fig, mode, label):
    if settings["max_p95_ms"] is None or new_fig.get("latency_ms") is None:
        return None
    base = ((old_fig or {}).get("latency_ms") or 0) if mode == "baseline" else 0
    if new_fig["latency_ms"] <= base + settings["max_p95_ms"]:
        return None
    against = f"the old release's {base} ms + " if mode == "baseline" else ""
    return f"{label} {new_fig['latency_ms']} ms is above {against}max_p95_ms {settings['max_p95_ms']:g} ms"


def decide(settings, figures, new=(), old=()):
    """The verdict on a provider's ``figures``: ``{"verdict": pass|fail|inconclusive, "passed": bool,
    "reasons": [...], "mode": baseline|absolute, "new": figures, "old": figures or None, "limits",
    "notes"}``.  ``new``, ``old``: the nodes of each group (when the figures do not name them)."""
    provider = gates.provider(settings.get("provider", "haproxy"))
    new_fig = _group(figures["new"], new)
    old_fig = _group(figures.get("old"), old) if old or figures.get("old") else None
    limits = {k: settings[k] for k in ("max_error_rate", "max_p95_ms", "min_requests")}
    mode, notes = _baseline(settings, old_fig, old_fig and old_fig["servers"])
    out = {"mode": mode, "new": new_fig, "old": old_fig, "limits": limits,
           "notes": list(figures.get("notes") or []) + notes, "reasons": []}
    if _missing(new_fig) or new_fig["requests"] < settings["min_requests"]:
        found = ("have no figures (see the notes)" if _missing(new_fig) else
                 f"answered {new_fig['requests']} requests in the bake, fewer than "
                 f"min_requests={settings['min_requests']}")
        out["reasons"].append(f"inconclusive: the new release's servers ({', '.join(new_fig['servers'])}) {found}")
        out["verdict"] = "inconclusive"
        out["passed"] = settings["inconclusive"] == "pass"
        return out
    base_rate = old_fig["error_rate"] if mode == "baseline" else 0.0
    if (new_fig["error_rate"] or 0.0) > base_rate + settings["max_error_rate"] + 1e-12:
        against = (f"the old release's {_pct(base_rate)} ({old_fig['errors']} of {old_fig['requests']} on "
                   f"{', '.join(old_fig['servers'])}) + " if mode == "baseline" else "")
        out["reasons"].append(
            f"error rate {_pct(new_fig['error_rate'])} ({new_fig['errors']} 5xx of {new_fig['requests']} responses "
            f"on {', '.join(new_fig['servers'])}) is above {against}max_error_rate "
            f"{_pct(settings['max_error_rate'])}")
    slow = _latency_reason(settings, new_fig, old_fig, mode, getattr(provider, "LATENCY", "latency"))
    if slow:
        out["reasons"].append(slow)
    out["verdict"] = "fail" if out["reasons"] else "pass"
    out["passed"] = not out["reasons"]
    return out


def describe(result, settings=None):
    """One line for people: the figures the decision used."""
    provider = gates.provider((settings or {}).get("provider", "haproxy"))
    short = getattr(provider, "LATENCY_SHORT", "latency")
    new, old = result["new"], result["old"]
    line = (f"new ({', '.join(new['servers'])}): {new['requests']} responses, {new['errors']} 5xx "
            f"({_pct(new['error_rate'])}), {short} {new.get('latency_ms')} ms")
    if old:
        line += (f"; old ({', '.join(old['servers'])}): {old['requests']} responses, {old['errors']} 5xx "
                 f"({_pct(old['error_rate'])}), {short} {old.get('latency_ms')} ms")
    return f"{line}; {result['mode']} -> {result['verdict']}"
