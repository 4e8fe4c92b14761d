"""The first steps of a release: build (steps 1-4 of the article) and plan; the plan without a change
(``test=True``) and the nodes' read-only check (``deploy.validate nodes=True``)."""

import time

import salt.utils.minions

from deploy_master import build as builds
from deploy_master import plan as planning
from deploy_master import views
from deploy_master.rollout import hooks, syndics


def build(run, ref, test=False, branch=False):
    """Step 1-4 of the article: latest code, build, package, place it on the fileserver."""
    started = time.monotonic()
    info = builds.build(run.opts, run.project, run.env, run.conf, ref, run.progress, test=test, branch=branch,
                       resolved=getattr(run, "resolved", None))
    run.release = info["release"]
    if test:
        return info
    run.timings["build"] = round(time.monotonic() - started, 3)
    run.emit("build", f"build: {run.release} ({info['commit'][:10]}, {'reused' if info['reused'] else 'built'} "
                      f"{info['bytes']} bytes) in {run.timings['build']}s",
             **{k: info.get(k) for k in ("version", "commit", "branch", "source")}, seconds=run.timings["build"])
    return info



def test_plan(run, ref, branch=False):
    """``test=True``: the release name and the plan; nothing changes."""
    info = build(run, ref, test=True, branch=branch)
    steps = plan(run)
    return {"result": None, "comment": "test=True: nothing was changed", "release": run.release,
            "commit": info["commit"], "plan": describe(run, steps), "down": steps["down"]}


def plan(run, emergency=False):
    """The env's nodes: preprod first, then stages of batches.  On a master of masters the syndic masters
    match the targets, and the emergency rollback acts on the nodes the last run's plan matched
    (:mod:`deploy_master.rollout.syndics`)."""
    if not run.opts.get("order_masters"):
        ckminions = salt.utils.minions.CkMinions(run.opts)

        def match(target):
            return set(ckminions.check_minions(target, "compound")["minions"])

        return planning.make(run.env, run.envc, match, ckminions.connected_ids)
    steps = syndics.planned(run) if emergency else None
    if steps is None:
        steps = planning.make(run.env, run.envc, *syndics.matcher(run))
        if run.lock is not None:  # a release or rollback, not a look at the plan
            syndics.remember_plan(run, steps)
    return steps


def validate_nodes(run):
    """deploy.validate nodes=True: one batched, read-only ``deploy.validate`` call to the env's nodes and its
    LB minion: node -> its problems (the keys and types of its project pillar checked against the one
    definition)."""
    steps = plan(run)
    asked, lb = views.validation_targets(steps, run.balancer.definitions)
    answers = run.call(asked, "deploy.validate", {"project": run.project, "lb": lb})
    return views.node_problems(steps, lb, answers, run.project)


def describe(run, plan):  # pylint: disable=redefined-outer-name
    """The plan in lines, for people."""
    return planning.describe(plan, run.balancer.describe()) + hooks.plan_lines(run, plan)
