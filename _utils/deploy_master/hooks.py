"""Release hooks (pillar ``hooks``): steps a release runs on the nodes beside its switch.

Four phases, each a list of steps (``docs/hooks.md``)::

    hooks:
      before_switch: [...]   # each node, in the new release folder, before its switch
      once: [...]            # one node (once_node), before the first switch of the run; once per release and env
      after_release: [...]   # once_node, after the last batch
      on_rollback: [...]     # once_node, before a normal rollback switches
      once_node: pre-1       # default: the env's preprod node, else the first node of the plan

A step is ``{name, cmd, timeout}`` (run by the node as the project's user, in the release folder, without
a shell: ``cmd`` is a list of arguments, or a string split like a shell would split it, never run by
one) or ``{name, fun, args, kwargs}`` (a Salt function, run by root on the node, never in the release).
An env's ``hooks`` replace the project's phase by phase (``once: []`` in an env turns ``once`` off there).

This module is the pure part: validation, the plan's lines, which node, and whether a release was
already out in the env (its ``once`` steps then do not run again); ``rollout.hooks`` makes the calls.
"""

import re
import shlex

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError

PHASES = ("before_switch", "once", "after_release", "on_rollback")
STEP_KEYS = ("name", "cmd", "timeout", "fun", "args", "kwargs")
DEFAULT_TIMEOUT = 300  # seconds a cmd step may take
FUN_RE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
# Salt modules a fun step may not name: they run commands or files as root, and a release's files are
# not root's to run (a cmd step runs as the project's user)
ROOT_RUNNERS = ("cmd", "state", "saltutil", "event", "cp")


def _step(step, where):
    if not isinstance(step, dict):
        raise SaltInvocationError(f"{where} must be a dict with name and cmd (or fun)")
    unknown = sorted(set(step) - set(STEP_KEYS))
    if unknown:
        raise SaltInvocationError(f"{where}: unknown key {unknown[0]!r}: accepted: {', '.join(STEP_KEYS)}")
    if ("cmd" in step) == ("fun" in step):
        raise SaltInvocationError(f"{where}: give either cmd (a command) or fun (a Salt function), not both")
    name = step.get("name")
    if name is not None and (not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip()):
        raise SaltInvocationError(f"{where}: name must be a non-empty string")
    if "cmd" in step:
        return _cmd_step(step, where)
    return _fun_step(step, where)


def _cmd_step(step, where):
    cmd = step["cmd"]
    if isinstance(cmd, str):
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:
            raise SaltInvocationError(f"{where}: cmd {cmd!r} cannot be split into arguments: {exc}") from None
    elif isinstance(cmd, (list, tuple)) and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise SaltInvocationError(f"{where}: cmd must be a string or a list of strings")
    if not argv or not argv[0]:
        raise SaltInvocationError(f"{where}: cmd is empty")
    if "\0" in "".join(argv):
        raise SaltInvocationError(f"{where}: cmd holds a NUL character")
    timeout = step.get("timeout", DEFAULT_TIMEOUT)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = 0
    if isinstance(step.get("timeout"), bool) or not timeout > 0:
        raise SaltInvocationError(f"{where}: timeout {step.get('timeout')!r} must be a number of seconds > 0")
    for key in ("args", "kwargs"):
        if key in step:
            raise SaltInvocationError(f"{where}: {key} goes with fun; a cmd step's arguments are in cmd")
    return {"name": str(step.get("name") or argv[0]), "cmd": argv, "timeout": timeout}


def _fun_step(step, where):
    fun = step["fun"]
    if not isinstance(fun, str) or not FUN_RE.match(fun):
        raise SaltInvocationError(f"{where}: fun {fun!r} must name a Salt function as module.function")
    if fun.split(".")[0] in ROOT_RUNNERS:
        raise SaltInvocationError(f"{where}: fun {fun!r} would run commands as root: use a cmd step "
                                  "(run as the project's user)")
    args = step.get("args", [])
    kwargs = step.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise SaltInvocationError(f"{where}: args must be a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise SaltInvocationError(f"{where}: kwargs must be a dict")
    if "timeout" in step:
        raise SaltInvocationError(f"{where}: timeout goes with cmd (a Salt function has its own)")
    return {"name": str(step.get("name") or fun), "fun": fun, "args": list(args), "kwargs": dict(kwargs)}


def parse(conf, envc=None, where="pillar"):
    """The hooks of the project ``conf`` (and env ``envc``: its phases win), validated:
    ``{phase: [step, ...], "once_node": id or None}``, every phase present (empty if none)."""
    merged = {}
    for label, source in (("project", conf), ("env", envc)):
        value = (source or {}).get("hooks")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise SaltInvocationError(f"{where} ({label}): hooks must be a dict of {', '.join(PHASES)}, once_node")
        merged.update(value)
    out = {"once_node": merged.get("once_node")}
    if out["once_node"] is not None and (not isinstance(out["once_node"], str) or not out["once_node"]):
        raise SaltInvocationError(f"{where}: hooks.once_node must be a minion id")
    for phase in PHASES:
        steps = merged.get(phase) or []
        if not isinstance(steps, list):
            raise SaltInvocationError(f"{where}: hooks.{phase} must be a list of steps")
        out[phase] = [_step(s, f"{where}: hooks.{phase} step {i}") for i, s in enumerate(steps, 1)]
    if _runs_cmd(out) and str((conf or {}).get("user") or "root") in ("root", "0"):
        raise SaltInvocationError(f"{where}: hooks: cmd steps run as the project's user, and it is root: set user "
                                  "(the release's files are not run as root)")
    return out


def _runs_cmd(hooks):
    return any("cmd" in s for phase in PHASES for s in hooks[phase])


def declared(hooks):
    """Whether any phase has a step."""
    return any(hooks[phase] for phase in PHASES)


def once_node(hooks, plan):
    """The node that runs ``once``, ``after_release`` and ``on_rollback``: ``once_node``, else the plan's
    preprod node, else its first node switched.  DeployError if ``once_node`` is not one of the env's."""
    node = hooks.get("once_node")
    if node:
        if node not in plan["nodes"]:
            raise DeployError(f"hooks: once_node {node!r} is not a node of the env ({', '.join(plan['nodes'])})")
        return node
    if plan.get("preprod"):
        return plan["preprod"]
    for stage in plan["stages"]:
        for batch in stage["batches"]:
            if batch:
                return batch[0]
    return plan["nodes"][0] if plan["nodes"] else None


def released_before(history, release):
    """Whether the env's ``history`` (records, oldest first) shows ``release`` released there already:
    a release run whose ``once`` steps passed, or that succeeded (its ``once`` steps, if any, passed)."""
    for rec in history:
        if rec.get("kind") != "release" or rec.get("release") != release:
            continue
        once = (rec.get("hooks") or {}).get("once") or {}
        if once.get("result") is True or rec.get("result") == "success":
            return True
    return False


def _names(steps):
    return ", ".join(s["name"] for s in steps)


def describe(hooks, node, kind="release", once_skipped=None):
    """The hooks' lines of the plan (``test=True``, the console's preview, the run's progress)."""
    lines = []
    if kind == "release":
        if hooks["once"]:
            note = " (skipped: already released to this env)" if once_skipped else ""
            lines.append(f"hooks once on {node}, before the first switch: {_names(hooks['once'])}{note}")
        if hooks["before_switch"]:
            lines.append(f"hooks before_switch on each node, in the new release: {_names(hooks['before_switch'])}")
        if hooks["after_release"]:
            lines.append(f"hooks after_release on {node}, after the last batch: {_names(hooks['after_release'])}")
    elif hooks["on_rollback"]:
        lines.append(f"hooks on_rollback on {node}, before the first switch: {_names(hooks['on_rollback'])}")
    return lines


def summary(ret):
    """What the record keeps of a phase's run on its node: ``{result, steps: [{step, result, retcode, seconds}]}``."""
    out = {"result": bool(ret.get("ok"))}
    steps = ((ret.get("ret") or {}).get("steps")) or []
    out["steps"] = [{k: s.get(k) for k in ("step", "result", "retcode", "seconds") if k in s} for s in steps]
    if not ret.get("ok"):
        out["error"] = ret.get("error")
    return out


def error_line(phase, node, ret):
    """The one line a failed phase gives: its failing step, exit code and output's redacted tail."""
    for step in ((ret.get("ret") or {}).get("steps")) or []:
        if not step.get("result"):
            code = f" (exit {step['retcode']})" if step.get("retcode") is not None else ""
            said = step.get("output")
            tail = f": {said}" if said and said != f"exit code {step.get('retcode')}" else ""
            return f"hooks {phase} on {node}: step {step.get('step')!r} failed{code}{tail}"
    return f"hooks {phase} on {node}: {ret.get('error') or 'failed'}"
