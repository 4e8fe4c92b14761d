"""What a release's stage (or batch) must pass before the next one: the analysis of live traffic
on the load balancer, then the pause."""

import logging
import time

from deploy_master import DeployError, analysis, names
from deploy_master import plan as planning
from deploy_master.rollout import run as runs

log = logging.getLogger(__name__)


class Paused(Exception):  # pylint: disable=too-few-public-methods
    """A stage's ``pause: true``: the run stops here, keeping the lock, until deploy.promote / deploy.abort."""

    def __init__(self, state):
        super().__init__(f"paused after stage {state['stage']}")
        self.state = state


class AbortRequested(DeployError):
    """deploy.abort asked a run that waits in-process (``pause: N``) to stop and revert."""


def analysis_settings(run, stage):
    """The analysis settings after ``stage`` (None: no analysis): releases behind an LB only (a
    rollback goes back to known code as fast as it can)."""
    if run.kind != "release" or not run.has_lb:
        return None
    return analysis.stage_settings(run.envc, stage["name"], f"env {run.env!r}")


def per_batch(run, stage):
    """True if the stage's analysis runs after each batch: the batch must then be back in the LB at once."""
    settings = analysis_settings(run, stage)
    return bool(settings) and settings["after"] == "batch"


def watch(run, plan, stage, switched_nodes=None, batch=None):
    """Analysis of live traffic (pillar ``analysis``, see ``deploy_master.analysis``): after a stage
    (or each batch with ``after: batch``), watch the LB's per-server counters for ``bake`` seconds,
    the servers now on the release against those still on the old one; DeployError if worse than
    the limits.  Releases only (a rollback goes back to known code as fast as it can).
    ``switched_nodes``: the nodes on the release (default: those this run switched)."""
    settings = analysis_settings(run, stage)
    if not settings or (settings["after"] == "batch") != (batch is not None):
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
    started = time.monotonic()
    deadline = started + settings["bake"]
    taken = [run.balancer.stats(new + old)]
    next_sample = started + settings["interval"]
    while time.monotonic() < deadline:
        run.check_abort(f"during the analysis of {label}")
        if time.monotonic() >= next_sample:
            if run.lock:
                run.lock.check()
            taken.append(run.balancer.stats(new + old))
            run.emit("analysis", f"{label}: analysis: sample {len(taken)}", line=False, **where, phase="sample",
                     verdict=None, figures=None, reasons=[])
            next_sample += settings["interval"]
        time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
    taken.append(run.balancer.stats(new + old))
    result = analysis.decide(settings, [t["servers"] for t in taken], new, old)
    entry = {"stage": stage["name"], "batch": batch, "seconds": round(time.monotonic() - started, 3),
             "samples": len(taken), "window": [taken[0].get("time"), taken[-1].get("time")], "settings": settings,
             **result}
    run.timings.setdefault("analysis", []).append(entry)
    end = {**entry, "phase": "end", "figures": {"new": result["new"], "old": result["old"]}}
    for message in [analysis.describe(result), *result["notes"]]:
        run.emit("analysis", f"{label}: analysis: {message}", **end)
    if not result["passed"]:
        raise DeployError(f"analysis of {label} failed: {'; '.join(result['reasons'])}")
    if result["verdict"] == "inconclusive" and run.lock:
        run.lock.warnings.append(f"analysis of {label} passed without evidence (inconclusive: pass): "
                                 f"{'; '.join(result['reasons'])}")


def after_batch(run, plan, stage, index):
    """The analysis after batch ``index`` of ``stage`` (``after: batch``)."""
    watch(run, plan, stage, batch=index)


def after_stage(run, plan, number):
    """What a release's stage must pass before the next one starts, in order:

    1. the analysis of live traffic on the load balancer (raises DeployError);
    2. the pause: ``pause: true`` stops the run here (exit 5) until ``deploy.promote`` /
       ``deploy.abort``; ``pause: N`` waits N seconds holding the lock.

    A DeployError raised here fails the stage like a failed batch: the env's ``on_failure`` applies.
    """
    watch(run, plan, plan["stages"][number])
    pause(run, plan, number)


def paused_state(run, plan, number):
    return {
        "run": run.run_id, "release": run.release, "stage": plan["stages"][number]["name"], "next": number + 1,
        "plan": {k: plan[k] for k in ("nodes", "preprod", "stages")}, "nodes": run.nodes, "failed": run.failed,
        "switched": runs.switched(run), "timings": run.timings, "started": run.started_at, "extra": run.extra,
        "build": {k: run.build.get(k) for k in ("source", "checksum", "commit", "version", "branch")},
    }


def pause(run, plan, number):
    stage = plan["stages"][number]
    gate = stage.get("pause")
    if gate is None:
        return
    if number + 1 >= len(plan["stages"]):
        run.emit("pause", f"stage {stage['name']}: pause ignored: it is the last stage", stage=stage["name"],
                 next_stage=None, seconds=gate if gate is not True else None, switched=runs.switched(run), by=None)
        return
    run.check_abort(f"before the pause after stage {stage['name']}")
    following = plan["stages"][number + 1]["name"]
    if gate is True:
        raise Paused(paused_state(run, plan, number))
    run.emit("pause", f"stage {stage['name']}: pause {gate}s before stage {following} (deploy.promote goes on now, "
             "deploy.abort reverts)", notify_as="pause", stage=stage["name"], next_stage=following, next=following,
             seconds=gate, switched=runs.switched(run), by=None)
    run.lock.update(waiting={"run": run.run_id, "stage": stage["name"], "seconds": gate, "since": names.now()})
    deadline = time.monotonic() + gate
    try:
        while time.monotonic() < deadline:
            run.check_abort(f"during the pause after stage {stage['name']}")
            run.lock.check()
            req = run.lock.requested()
            if req and req.get("action") == "promote":
                run.emit("promote", f"promoted by {req.get('by')}: stage {following} starts now", stage=stage["name"],
                         by=req.get("by"))
                break
            if req and req.get("action") == "abort":
                run.outcome = "aborted"
                raise AbortRequested(f"aborted by deploy.abort ({req.get('by')}) during the pause after stage "
                                      f"{stage['name']}")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        try:
            run.lock.update(waiting=None)
        except DeployError as exc:  # a lost lock: the error that stopped the wait says more
            log.warning("deploy: could not clear the wait from the lock: %s", exc)
