"""The gates of a release's stage (or batch), run through ``deploy_master.gates``: the analysis of
live traffic, then the pause.  What the run lends a gate is built here (:class:`gates.Context`)."""

from deploy_master import DeployError, gates
from deploy_master import plan as planning
from deploy_master.gates import analysis, pause
from deploy_master.rollout import run as runs

Paused, AbortRequested = pause.Paused, pause.AbortRequested


def analysis_settings(run, stage):
    """The analysis settings after ``stage`` (None: no analysis): releases behind an LB only (a
    rollback goes back to known code as fast as it can)."""
    if run.kind != "release" or not run.has_lb:
        return None
    return analysis.settings(run.envc, stage, f"env {run.env!r}")


def per_batch(run, stage):
    """True if the stage's analysis runs after each batch: the batch must then be back in the LB at once."""
    settings = analysis_settings(run, stage)
    return bool(settings) and analysis.when(settings) == "batch"


def _context(run, new, old, label, where):
    """What the run lends the analysis gate."""

    def check(what):
        run.check_abort(what)
        if run.lock:
            run.lock.check()

    def event(phase, message, **fields):
        run.emit("analysis", message, line=False, **where, phase=phase, verdict=None, figures=None, reasons=[],
                 **fields)

    servers = run.balancer.servers()
    return gates.Context(new=new, old=old, servers={n: servers.get(n, n) for n in new + old},
                         lb_call=lambda fun, nodes: getattr(run.balancer, fun)(nodes), log=run.emit, check=check,
                         event=event, label=label, run=run)


def watch(run, plan, stage, switched_nodes=None, batch=None):
    """The analysis gate after a stage (or each batch with ``after: batch``): the servers now on the
    release against those still on the old one; DeployError if worse than the limits.
    ``switched_nodes``: the nodes on the release (default: those this run switched)."""
    settings = analysis_settings(run, stage)
    if not settings or (analysis.when(settings) == "batch") != (batch is not None):
        return
    behind = planning.behind_lb(plan)
    switched = runs.switched(run) if switched_nodes is None else switched_nodes
    new = sorted(set(switched) & set(behind))  # the preprod node is not behind the LB
    if not new:
        return
    old = sorted(set(behind) - set(new))
    label = f"stage {stage['name']}" + (f" batch {batch}/{len(stage['batches'])}" if batch else "")
    where = {"stage": stage["name"], "batch": batch}
    run.emit("analysis", f"{label}: analysis: watching live traffic on the LB for {settings['bake']:g}s "
             f"({', '.join(new)} on the release" + (f" against {', '.join(old)})" if old else ")"),
             **where, phase="start", verdict=None, figures=None, reasons=[])
    outcome = analysis.run(settings, _context(run, new, old, label, where))
    entry = {"stage": stage["name"], "batch": batch, **outcome.record}
    run.timings.setdefault("analysis", []).append(entry)
    end = {**entry, "phase": "end", "figures": outcome.figures}
    for message in [analysis.describe(outcome.record, settings), *outcome.record["notes"]]:
        run.emit("analysis", f"{label}: analysis: {message}", **end)
    if not outcome.passed:
        raise DeployError(f"analysis of {label} failed: {'; '.join(outcome.reasons)}")
    if outcome.verdict == "inconclusive" and run.lock:
        run.lock.warnings.append(f"analysis of {label} passed without evidence (inconclusive: pass): "
                                 f"{'; '.join(outcome.reasons)}")


def after_batch(run, plan, stage, index):
    """The gates after batch ``index`` of ``stage``: the analysis with ``after: batch``."""
    watch(run, plan, stage, batch=index)


def after_stage(run, plan, number):
    """What a release's stage must pass before the next one starts, in ``gates.GATES`` order:

    1. the analysis of live traffic (raises DeployError);
    2. the pause: ``pause: true`` stops the run here (exit 5) until ``deploy.promote`` /
       ``deploy.abort``; ``pause: N`` waits N seconds holding the lock.

    A DeployError raised here fails the stage like a failed batch: the env's ``on_failure`` applies.
    """
    watch(run, plan, plan["stages"][number])
    hold(run, plan, number)


def paused_state(run, plan, number):
    return {
        "run": run.run_id, "release": run.release, "stage": plan["stages"][number]["name"], "next": number + 1,
        "plan": {k: plan[k] for k in ("nodes", "preprod", "stages")}, "nodes": run.nodes, "failed": run.failed,
        "switched": runs.switched(run), "timings": run.timings, "started": run.started_at, "extra": run.extra,
        "build": {k: run.build.get(k) for k in ("source", "checksum", "commit", "version", "branch")},
    }


def hold(run, plan, number):
    """The pause gate after stage ``number`` (its ``pause``)."""
    stage = plan["stages"][number]
    settings = stage.get("pause")
    if settings is None:
        return
    if number + 1 >= len(plan["stages"]):
        run.emit("pause", f"stage {stage['name']}: pause ignored: it is the last stage", stage=stage["name"],
                 next_stage=None, seconds=settings if settings is not True else None, switched=runs.switched(run),
                 by=None)
        return
    run.check_abort(f"before the pause after stage {stage['name']}")
    ctx = gates.Context(label=stage["name"], run=run, following=plan["stages"][number + 1]["name"],
                        switched=runs.switched(run), state=lambda: paused_state(run, plan, number),
                        check=run.check_abort)
    pause.run(settings, ctx)
