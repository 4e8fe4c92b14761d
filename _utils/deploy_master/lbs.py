"""The env's load balancers as the pillar gives them (``lb``: one definition or a list), and the
merging of their answers: pure, no Salt call (the run's LB actions: ``deploy_master.rollout.lb``).

:func:`parse` reads and checks ``lb`` into a list of definitions, each with a unique ``name``;
:func:`wait_up` reads ``lb_wait_up``; :func:`merge_states` and :func:`not_up_nodes` turn the
answers of several LBs into one per server.
"""

from salt.exceptions import SaltInvocationError

from deploy_master import pillar_schema

DRIVERS = tuple(d for d in pillar_schema.LB_DRIVERS if d != "none")
# the keys of each driver whose type is checked here (their values are checked on the LB minion)
REQUIRED = {"haproxy": ("minion", "socket", "backend"), "nginx": ("minion", "upstream_file", "servers")}
DEFAULT_WAIT_UP = 30
DEFAULT_DRAIN = 30


def _default_name(lb):
    where = lb.get("backend") if lb["driver"] == "haproxy" else "nginx"
    return f"{lb['minion']}/{where}"


def _entry(entry, label, where, single):
    """One LB definition of the pillar, checked, named."""
    if not isinstance(entry, dict):
        raise SaltInvocationError(f"{label}: must be a dict with a 'driver'")
    unknown = [k for k in entry if k not in pillar_schema.LB_KEYS]
    if unknown:
        text = pillar_schema.unknown_key(unknown[0], list(pillar_schema.LB_KEYS), label[len(where) + 2:])
        raise SaltInvocationError(f"{where}: {text}")
    driver = entry.get("driver")
    if driver not in DRIVERS:
        raise SaltInvocationError(f"{label}: unknown lb driver {driver!r}: use one of {', '.join(DRIVERS)}"
                                  + (" or none" if single else " (each entry of a list is a load balancer)"))
    if not entry.get("minion"):
        raise SaltInvocationError(f"{label} ({driver}): lb needs the 'minion' that runs the load balancer")
    for key in REQUIRED[driver]:
        kind = dict if key == "servers" else str
        if key in entry and not isinstance(entry[key], kind):
            raise SaltInvocationError(f"{label} ({driver}): {key} must be a {'dict' if kind is dict else 'string'}")
    seconds(entry.get("drain_timeout", DEFAULT_DRAIN), f"{label}: drain_timeout")
    return {**entry, "name": str(entry.get("name") or _default_name(entry))}


def parse(raw, where="project"):
    """The LB definitions of ``raw`` (a mapping, a list of mappings, or None), each with a unique
    ``name``; ``[]`` for no LB.  Bad input: one SaltInvocationError naming the entry and the key."""
    if raw is None or raw == {} or (isinstance(raw, dict) and raw.get("driver", "none") == "none"):
        return []
    single = isinstance(raw, dict)
    entries = [raw] if single else raw
    if not isinstance(entries, list):
        raise SaltInvocationError(f"{where}: lb must be a dict (one load balancer) or a list of them")
    out = [_entry(entry, f"{where}: lb" if single else f"{where}: lb[{index}]", where, single)
           for index, entry in enumerate(entries)]
    taken = [lb["name"] for lb in out]
    for index, lb in enumerate(out):
        if taken.count(lb["name"]) > 1:
            if entries[index].get("name") and taken.index(lb["name"]) < index:
                raise SaltInvocationError(f"{where}: lb[{index}]: name {lb['name']!r} is given to two load "
                                          "balancers")
            lb["name"] = f"{lb['name']}#{index + 1}"
    return out


def seconds(value, where):
    """``value`` as a number of seconds (0 or more); SaltInvocationError naming ``where`` if not."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"{where}: {value!r} must be a number of seconds") from None
    if out < 0:
        raise SaltInvocationError(f"{where}: {value!r} must be 0 or more seconds")
    return out


def wait_up(conf, envc, where="project"):
    """Longest wait, in seconds, for restored servers to be UP: the env's ``lb_wait_up``, else the
    project's, else 30."""
    for scope in (envc or {}, conf or {}):
        if scope.get("lb_wait_up") is not None:
            return seconds(scope["lb_wait_up"], f"{where}: lb_wait_up")
    return float(DEFAULT_WAIT_UP)


def merge_states(per_lb):
    """{node: state}: the state every LB gives it, or ``"<lb>: <state>, ..."`` where they differ."""
    nodes = sorted({n for states in per_lb.values() for n in states})
    out = {}
    for node in nodes:
        seen = {name: states[node] for name, states in per_lb.items() if node in states}
        values = set(seen.values())
        out[node] = values.pop() if len(values) == 1 else ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
    return out


def not_up_nodes(not_up):
    """{lb: {server: status}} -> {server: "<lb>: <status>, ..."}."""
    out = {}
    for name, servers in sorted(not_up.items()):
        for server, status in sorted(servers.items()):
            out[server] = f"{out[server]}, {name}: {status}" if server in out else f"{name}: {status}"
    return out
