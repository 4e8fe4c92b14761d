"""A run's hooks (pillar ``hooks``, docs/hooks.md): the ``before_switch`` steps sent with each switch, and
the phases run once on the once_node: ``once`` before the first switch, ``after_release`` after the last
batch, ``on_rollback`` before a normal rollback switches.  Each phase is one batched call
(``deploy.hooks``) and its ``hook`` events: the phase, the node, the steps' names and the result."""

from deploy_master import DeployError
from deploy_master import hooks as pillar_hooks


class AfterReleaseFailed(DeployError):
    """``after_release`` failed: the release is out on every node; the run fails, nothing is reverted."""


def of(run):
    """The run's hooks (project and env), validated."""
    return pillar_hooks.parse(run.conf, run.envc, f"project {run.project!r} env {run.env!r}")


def switch_kwarg(run, mark_left=None):
    """What a release's own switch sends (``deploy.switch before_switch=``); a revert or rollback sends nothing."""
    if run.kind != "release" or mark_left:
        return {}
    steps = of(run)["before_switch"]
    return {"before_switch": steps} if steps else {}


def plan_lines(run, plan):
    """The hooks' lines of the run's plan (empty when none is declared)."""
    declared = of(run)
    if not pillar_hooks.declared(declared):
        return []
    skipped = None
    if run.kind == "release" and declared["once"] and run.release:
        skipped = pillar_hooks.released_before(run.store.history_read(run.project, run.env), run.release)
    return pillar_hooks.describe(declared, pillar_hooks.once_node(declared, plan), run.kind, skipped)


def _phase(run, plan, phase, release, error=DeployError):
    declared = of(run)
    steps = declared[phase]
    if not steps:
        return
    node = pillar_hooks.once_node(declared, plan)
    names = [s["name"] for s in steps]
    if node in run.failed:
        raise error(f"hooks {phase}: {node} (once_node) failed before: {phase} not run")
    run.emit("hook", f"hooks {phase} on {node}: {', '.join(names)}", phase=phase, node=node, steps=names,
             result=None)
    kwarg = {"project": run.project, "phase": phase, "steps": steps}
    if release:
        kwarg["release"] = release
    ret = run.node_call([node], "deploy.hooks", kwarg)[node]
    summary = pillar_hooks.summary(ret)
    run.extra.setdefault("hooks", {})[phase] = {"node": node, **summary}
    if not ret.get("ok"):
        line = pillar_hooks.error_line(phase, node, ret)
        run.emit("hook", line, line=False, phase=phase, node=node, steps=names, result="failed", error=line)
        raise error(line)
    run.emit("hook", f"hooks {phase} on {node}: done", phase=phase, node=node, steps=names, result="ok",
             error=None)


def before_first_switch(run, plan):
    """A release's ``once`` steps, on the once_node in the new release, unless the env had the release
    already; DeployError (nothing switched yet) if one fails."""
    declared = of(run)
    if not declared["once"]:
        return
    if pillar_hooks.released_before(run.store.history_read(run.project, run.env), run.release):
        run.emit("hook", f"hooks once: skipped, {run.release} was released to {run.env} before", phase="once",
                 node=None, steps=[s["name"] for s in declared["once"]], result="skipped", error=None)
        run.extra.setdefault("hooks", {})["once"] = {"skipped": "released before"}
        return
    try:
        _phase(run, plan, "once", run.release)
    except DeployError as exc:
        raise DeployError(f"{exc}; nothing was switched") from None


def after_last_batch(run, plan):
    """A release's ``after_release`` steps, once, on the once_node (AfterReleaseFailed if one fails)."""
    _phase(run, plan, "after_release", run.release, AfterReleaseFailed)


def before_rollback(run, plan):
    """A normal rollback's ``on_rollback`` steps, on the once_node, in the release it serves (the one left)."""
    try:
        _phase(run, plan, "on_rollback", None)
    except DeployError as exc:
        raise DeployError(f"{exc}; nothing was switched") from None
