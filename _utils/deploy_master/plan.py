"""The plan of a run: the env's nodes, its pre-production node, its stages of batches (pure)."""

import math
import re

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError

DEFAULT_BATCH = "25%"


def batch_size(batch, count, where):
    """A stage's batch size: a whole number >= 1, or 1%-100% of ``count`` nodes rounded up."""
    text = str(batch).strip()
    if re.fullmatch(r"[0-9]+", text) and int(text) >= 1:
        return min(int(text), max(count, 1))
    match = re.fullmatch(r"([0-9]+)%", text)
    if match and 1 <= int(match.group(1)) <= 100:
        return max(1, math.ceil(count * int(match.group(1)) / 100))
    raise SaltInvocationError(f"{where}: batch {batch!r} must be a whole number >= 1 or a percentage 1%-100%")


def pause(value, where):
    """A stage's ``pause``: None (none), True (until deploy.promote / deploy.abort) or whole seconds >= 1."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise SaltInvocationError(f"{where}: pause {value!r} must be true (wait for deploy.promote), false, "
                              "or a whole number of seconds >= 1")


def _batches(members, size):
    return [members[i:i + size] for i in range(0, len(members), size)]


def make(env, envc, match, connected):
    """The plan: ``{nodes, preprod, stages: [{name, batches}], down}``.

    ``match(target)`` gives the minion ids a compound target matches; ``connected()`` the ids
    connected now.  Nodes matched by no stage form a last stage ``rest``.
    """
    nodes = match(envc["target"]) if envc.get("target") else set()
    preprod = envc.get("preprod")
    if preprod:
        nodes.add(preprod)
    if not nodes:
        raise DeployError(f"env {env!r}: target {envc.get('target')!r} matches no minion")
    remaining = sorted(n for n in nodes if n != preprod)
    stages = []
    for index, stage in enumerate(envc.get("stages") or [{"name": "all", "batch": DEFAULT_BATCH}]):
        name = str(stage.get("name") or f"stage{index + 1}")
        matched = match(stage["target"]) if stage.get("target") else None  # once per stage, not per node
        members = [n for n in remaining if n in matched] if matched is not None else remaining
        remaining = [n for n in remaining if n not in members]
        size = batch_size(stage.get("batch", DEFAULT_BATCH), len(members), f"stage {name!r}")
        if members:
            stages.append({"name": name, "batches": _batches(members, size)})
            gate = pause(stage.get("pause"), f"stage {name!r}")
            if gate is not None:
                stages[-1]["pause"] = gate
    if remaining:
        size = batch_size(DEFAULT_BATCH, len(remaining), "stage 'rest'")
        stages.append({"name": "rest", "batches": _batches(remaining, size)})
    up = connected()
    return {
        "nodes": sorted(nodes),
        "preprod": preprod,
        "stages": stages,
        "down": sorted(n for n in nodes if n not in up),
    }


def behind_lb(plan):
    """The nodes of the stages (the preprod node is not behind the load balancer)."""
    return [n for stage in plan["stages"] for batch in stage["batches"] for n in batch]


def describe(plan, lb):
    """The plan as lines for people (``test=True`` and the progress of a release).  ``lb``: what the
    load balancers are, in words (``rollout.lb.LoadBalancers.describe``; "" for none)."""
    lines = []
    if plan["preprod"]:
        lines.append(f"preprod: {plan['preprod']} (not behind the LB): switch, restart, checks")
    for stage in plan["stages"]:
        for i, batch in enumerate(stage["batches"], 1):
            how = f"{lb}: drain+maint, then restore" if lb else "no LB actions"
            lines.append(f"stage {stage['name']} batch {i}/{len(stage['batches'])}: {', '.join(batch)} ({how})")
    return lines
