"""
The end of a ``salt-run deploy.release`` (``rollback``, ``promote``, ``abort``) run, for people.

Without ``--out``, these runner functions end with a short summary instead of Salt's nested dump
of the return: the result and wall time, the release (name, version, commit), per stage the nodes
and their result (identical results folded into counts, failures always listed with their error),
the longest time a node spent out of the load balancer, the warnings, and the next command.  An
explicit ``--out`` wins, as for every outputter: ``--out=json`` prints the return itself.

:func:`summarize` is a pure function of the return; :func:`output` adds the project and env the
command line named, for the next command.

CLI Example:

.. code-block:: bash

    salt-run deploy.release project=rainbow env=pro
    salt-run deploy.release project=rainbow env=pro --out=json
"""

import json

__virtualname__ = "deploy_summary"

FOLD = 3  # a group of more nodes than this with one result is shown as a count
PLAN_LINES = 8  # test=True: plan lines shown before the rest is counted
ARGS = ("project", "env")  # the first two positional arguments of every deploy.* function


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """The summary of a deploy.* return (anything else: indented JSON)."""
    opts = globals().get("__opts__") or {}
    fun = str(opts.get("fun") or "")
    project, env = _command_line(opts.get("arg") or [])
    return summarize(data, fun=fun.split(".", 1)[-1] if fun.startswith("deploy.") else None,
                     project=project, env=env)


def _command_line(args):
    """``project`` and ``env`` as the command line gave them (``key=value`` or positional)."""
    given, positional = {}, []
    for arg in args:
        if isinstance(arg, dict):
            given.update({k: v for k, v in arg.items() if k in ARGS})
        elif isinstance(arg, str) and "=" in arg:
            key, _, value = arg.partition("=")
            if key in ARGS:
                given[key] = value
        else:
            positional.append(arg)
    for key, value in zip(ARGS, positional[:len(ARGS)], strict=False):
        given.setdefault(key, value)
    return given.get("project"), given.get("env")


def _kind(data, fun):
    if fun in ("release", "rollback", "promote", "abort"):
        return fun
    if "to" in data or "target" in data:
        return "rollback"
    if "rolled_back" in data and "ref" not in data:
        return "abort"
    return "release"


def summarize(data, fun=None, project=None, env=None):
    """The lines that end a deploy.* run (a string); ``fun``: release, rollback, promote or abort
    (None: guessed from the return); ``project``/``env``: for the next command."""
    if not isinstance(data, dict) or "result" not in data:
        return json.dumps(data, indent=2, sort_keys=True, default=str)
    kind = _kind(data, fun)
    where = f"project={project or '<project>'} env={env or '<env>'}"
    result = data["result"]
    if result == "refused":
        return f"{kind} refused (exit {data.get('retcode', 2)}): {data.get('error')}\nnothing was changed"
    if result == "requested":
        return f"{kind} requested: {data.get('comment')}"
    if result is None:
        return "\n".join(_plan(data, kind, where))
    lines = [_headline(data, kind)]
    lines += _release_lines(data)
    lines += _stage_lines(data.get("nodes") or {}, data.get("timings") or {})
    lines += _lb_lines(data.get("nodes") or {})
    lines += _rolled_back_lines(data.get("rolled_back"))
    if data.get("error"):
        lines.append(f"error: {data['error']}")
    for warning in data.get("warnings") or []:
        lines.append(f"warning: {warning}")
    lines += _next(data, kind, where)
    return "\n".join(lines)


def _headline(data, kind):
    retcode = data.get("retcode", 0)
    code = f" (exit {retcode})" if retcode else ""
    seconds = data.get("seconds")
    took = f" in {seconds}s" if seconds is not None else ""
    run = f", run {data['run']}" if data.get("run") else ""
    return f"{kind} {data['result']}{code}{took}{run}"


def _release_lines(data):
    lines = []
    if data.get("release"):
        lines.append(f"release: {data['release']}")
    facts = [f"version {data['version']}" if data.get("version") else None,
             f"commit {str(data['commit'])[:12]}" if data.get("commit") else None,
             f"ref {data['ref']}" if data.get("ref") else None]
    if any(facts):
        lines.append("  " + ", ".join(f for f in facts if f))
    to = data.get("to")
    if to and to != data.get("release"):
        lines.append(f"  to {to}")
    if data.get("changed_since_record"):
        lines.append(f"  changed since the master's record: {', '.join(data['changed_since_record'])}")
    return lines


def _groups(nodes, timings):
    """(label, [node, ...]) in run order: the pre-production node, then each stage (its batches)."""
    staged, order = {}, []
    for batch in timings.get("batches") or []:
        stage = batch.get("stage") or "?"
        if stage not in staged:
            staged[stage] = []
            order.append(stage)
        staged[stage] += [n for n in batch.get("nodes") or [] if n not in staged[stage]]
    seen = {n for members in staged.values() for n in members}
    rest = [n for n in nodes if n not in seen]
    groups = []
    if rest:
        groups.append(("preprod" if "preprod" in timings and len(rest) == 1 else
                       "nodes" if not order else "other", rest))
    groups += [(f"stage {stage}", staged[stage]) for stage in order]
    return groups


def _result_of(entry):
    result = entry.get("result") or "not reached"
    if entry.get("forced"):
        result += " (forced)"
    return result


def _node_lines(nodes, members):
    """One line per node that did not succeed (with its error); successes folded into a count."""
    fine = [n for n in members if (nodes.get(n) or {}).get("result") == "ok"]
    lines = []
    if len(fine) > FOLD:
        lines.append(f"{len(fine)} ok")
    elif fine:
        lines.append(", ".join(fine) + " ok")
    others = {}
    for node in members:
        entry = nodes.get(node) or {}
        if entry.get("result") == "ok":
            continue
        if entry.get("error"):
            lines.append(f"{node} {_result_of(entry)}: {entry['error']}")
        else:
            others.setdefault(_result_of(entry), []).append(node)
    for result, names in others.items():
        shown = ", ".join(names) if len(names) <= FOLD else f"{len(names)} nodes ({names[0]} … {names[-1]})"
        lines.append(f"{shown} {result}")
    return lines


def _stage_lines(nodes, timings):
    lines = []
    for label, members in _groups(nodes, timings):
        found = _node_lines(nodes, members)
        lines.append(f"  {label}: {found[0]}")
        lines += [f"    {line}" for line in found[1:]]
    return lines


def _lb_lines(nodes):
    out = [(entry["out_of_lb"], node) for node, entry in nodes.items()
           if isinstance(entry, dict) and isinstance(entry.get("out_of_lb"), (int, float))]
    lines = []
    if out:
        longest, node = max(out)
        lines.append(f"longest out of the LB: {longest}s ({node})")
    states = {}
    for node, entry in nodes.items():
        if isinstance(entry, dict) and entry.get("lb"):
            states.setdefault(str(entry["lb"]), []).append(node)
    if states and set(states) != {"ready"}:
        parts = [f"{len(members)} {state}" if len(members) > FOLD else f"{state}: {', '.join(members)}"
                 for state, members in sorted(states.items())]
        lines.append("LB states: " + "; ".join(parts))
    return lines


def _rolled_back_lines(done):
    if not isinstance(done, dict):
        return []
    to = done.get("to") or {}
    targets = sorted({str(t) for t in to.values()}) if isinstance(to, dict) else [str(to)]
    lines = [f"rolled back: {done.get('result')}, {len(to)} node(s) back to {', '.join(targets)}"]
    if done.get("reason"):
        lines.append(f"  why: {done['reason']}")
    nodes = done.get("nodes") or {}
    lines += [f"  {line}" for line in _node_lines(nodes, list(nodes))[1 if done.get("result") == "success" else 0:]]
    if done.get("error"):
        lines.append(f"  error: {done['error']}")
    return lines


def _next(data, kind, where):
    result = data["result"]
    if result == "paused":
        paused = data.get("paused") or {}
        return [f"paused after stage {paused.get('stage')}, holding the lock; next stage: {paused.get('next')}",
                f"next: salt-run deploy.promote {where}   (go on)",
                f"   or salt-run deploy.abort {where}   (revert the nodes it switched)"]
    if kind == "rollback":
        if result == "success":
            return [f"next: salt-run deploy.release {where} ref=<fixed ref>   (release a fix)"]
        return [f"next: salt-run deploy.rollback {where} emergency=True   (every node at once)"]
    if kind == "abort":
        if result == "success" or not (data.get("rolled_back") or {}).get("failed"):
            return [f"next: salt-run deploy.release {where} ref=<fixed ref>   (release a fix)"]
        return [f"next: salt-run deploy.rollback {where}   (the nodes that did not go back)"]
    if (data.get("rolled_back") or {}).get("result") == "success":
        return [f"next: salt-run deploy.history {where}   (this run and its rollback)"]
    return [f"next: salt-run deploy.rollback {where}   (back to the last good release)"]


def _plan(data, kind, where):
    lines = [f"{kind} plan (test=True, nothing was changed)"]
    if data.get("release"):
        lines.append(f"release: {data['release']}")
    if data.get("commit"):
        lines.append(f"  commit {str(data['commit'])[:12]}")
    if data.get("target"):
        lines.append(f"target: {data['target']}")
    plan = data.get("plan") or []
    for line in plan[:PLAN_LINES]:
        lines.append(f"  {line}")
    if len(plan) > PLAN_LINES:
        lines.append(f"  … {len(plan) - PLAN_LINES} more")
    if data.get("down"):
        lines.append(f"down: {', '.join(map(str, data['down']))}")
    lines.append(f"next: salt-run deploy.{'rollback' if kind == 'rollback' else 'release'} {where}   (for real)")
    return lines
