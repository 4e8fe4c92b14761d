"""The pre-production node, the stages and their batches behind the load balancer.

A batch: take it out of the LB (drain, maint), switch it (one batched ``deploy.switch``), put it
back in its recorded state.  Within a stage the call that takes batch N+1 out puts batch N back
(``deploy_lb.swap``).  A release's stage (or batch) ends with its gates (:mod:`.gating`).
"""

import time

from deploy_master import DeployError
from deploy_master import plan as planning
from deploy_master.rollout import gating, hooks


def fail(run, nodes, errors):
    for node in nodes:
        run.nodes.setdefault(node, {})
        run.nodes[node].update({"result": "failed", "error": errors[node]})
        if node not in run.failed:
            run.failed.append(node)
        run.node_event(node, f"{node}: FAILED: {errors[node]}")


def check_lb(run, plan):
    if not run.has_lb:
        return {}
    nodes = planning.behind_lb(plan)
    states = run.balancer.status(nodes)
    several = len(run.balancer.definitions) > 1  # "2 load balancers: ... answer", "load balancer: ... answers"
    run.emit("plan", f"{'' if several else 'load balancer: '}{run.balancer.describe()} answer{'' if several else 's'} "
             f"for {len(nodes)} nodes", **plan_fields(run, plan))
    return states


def plan_fields(run, plan):
    """The ``plan`` event's fields: nodes, preprod, stages (name, batches, pause, analysis)."""
    return {"nodes": list(plan.get("nodes") or []), "preprod": plan.get("preprod"),
            "stages": [{"name": s["name"], "batches": s["batches"], "pause": s.get("pause"),
                        "analysis": bool(gating.analysis_settings(run, s))} for s in plan.get("stages") or []]}


def switch(run, nodes, release, mark_left=None, checks="gate", expect=None, force=False):
    """One batched deploy.switch; returns the nodes that passed.

    With ``expect`` (node -> fingerprint, or what :func:`fingerprints` gives), a node in another
    state refuses: it lands in ``run.refused`` with its inventory, unchanged, and is not counted
    as failed.  A node in the recorded state that refuses the target itself (marked bad, missing,
    incomplete, or not what the record says) lands in ``run.refused_target`` and fails.
    ``force``: the nodes switch even to a release they marked bad (the node records it).
    """
    kwarg = {"project": run.project, "release": release, "checks": checks, "inventory": True}
    if mark_left:
        kwarg["mark_left"] = mark_left
    if force:
        kwarg["force"] = True
    if expect:
        kwarg["expect"] = {n: expect[n] for n in nodes}
    kwarg.update(hooks.switch_kwarg(run, mark_left))
    ret = run.node_call(nodes, "deploy.switch", kwarg)
    passed = []
    for node, res in ret.items():
        out = res.get("ret") or {}
        if res.get("silent"):
            run.silent.add(node)
        if out.get("refused") and out.get("why") == "target":
            run.refused_target[node] = res["error"]
            fail(run, [node], {node: res["error"]})
            run.nodes[node].update({"result": "refused", "old": out.get("current")})  # failed, changing nothing
            continue
        if out.get("refused") and isinstance(out.get("inventory"), dict):
            run.refused[node] = out["inventory"]
            run.nodes.setdefault(node, {}).update({"result": "refused", "old": out.get("current")})
            run.node_event(node, f"{node}: {res['error']}")
            continue
        entry = run.nodes.setdefault(node, {})
        entry.setdefault("old", out.get("previous"))
        entry["new"] = out.get("current") if out else "unknown (no return)"
        entry["seconds"] = out.get("seconds")
        if out.get("forced"):
            entry["forced"] = True  # switched to a release it had marked bad (force)
        if res["ok"]:
            entry["result"] = "ok"
            passed.append(node)
            steps = ", ".join(f"{s['step']} {s['seconds']}s" for s in out.get("steps", []))
            run.node_event(node, f"{node}: {out.get('previous')} -> {release}: {steps}")
        else:
            fail(run, [node], {node: res["error"] + (" (switched back)" if out.get("reverted") else "")})
    return passed


def preprod(run, plan, release, **switch_args):
    node = plan["preprod"]
    run.check_abort("before the pre-production node")
    if not node:
        return
    if node in run.failed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; nothing was switched")
    if run.lock:
        run.lock.check()
    started = time.monotonic()
    run.stage = "preprod"
    run.emit("stage", f"preprod {node}: switching to {release}", stage="preprod", phase="start", result=None)
    passed = switch(run, [node], release, **switch_args)
    run.timings["preprod"] = round(time.monotonic() - started, 3)
    run.emit("stage", f"preprod {node}: {'ok' if passed else 'failed'} in {run.timings['preprod']}s", line=False,
             stage="preprod", phase="end", result="ok" if passed else "failed", nodes=[node],
             seconds=run.timings["preprod"])
    if not passed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; stopped before any web node")


def batch(run, stage, index, nodes, release, held=None, keep=False, **switch_args):
    """One batch behind the LB: detach (drain, maint), switch, restore each server's recorded state.

    ``held`` (a list) carries the previous batch of the stage, still out of the LB: the call that
    takes this batch out puts that one back (``deploy_lb.swap``), so a batch costs two sequential
    Salt calls, not three.  With ``keep``, this batch is left out and appended to ``held`` for the
    next batch (or :func:`put_back`); without, it is put back here (the stage's last batch, or a
    step between batches that needs it in service).  Before any LB call changes
    anything, the run's record of detached nodes (``run.lock.set_detached``) holds every server it
    takes out, so an interrupted run is repaired by ``deploy.unlock``."""
    started = time.monotonic()
    run.stage = stage["name"]
    where = {"stage": stage["name"], "batch": index, "of": len(stage["batches"])}
    label = f"stage {stage['name']} batch {index}/{len(stage['batches'])}"
    back = [held.pop() for _ in range(len(held))] if held and run.has_lb else []
    detached_at = None
    done = False
    passed = []
    try:
        if run.has_lb:
            run.lock.set_detached(set(run.lock.detached()) | set(nodes))
            detached_at = time.monotonic()
            out = take_out(run, nodes, back)  # empties back once it is in again
            run.timings.setdefault("drain", []).append(out.get("drain_seconds"))
            run.emit("batch", f"{label}: {', '.join(nodes)} out of the LB (drained in {out.get('drain_seconds')}s)",
                     **where, nodes=nodes, phase="out", drain_seconds=out.get("drain_seconds"))
        passed = switch(run, nodes, release, **switch_args)
        done = True
    finally:
        if detached_at is not None:
            # a node that never answered may be half-restarted: it stays out, and the summary says so
            back.append({"label": label, "since": detached_at, "nodes": [n for n in nodes if n not in run.silent],
                         "left": sorted(n for n in nodes if n in run.silent), "where": where, "passed": passed,
                         "started": started})
        if back and (not done or not keep or held is None):
            put_back(run, back, wait=done)  # after a failure: no wait until UP
        elif back:
            held.extend(back)
    seconds = round(time.monotonic() - started, 3)
    run.timings.setdefault("batches", []).append({"stage": stage["name"], "batch": index, "nodes": nodes,
                                                  "seconds": seconds})
    if not run.has_lb:
        run.emit("batch", f"{label}: {', '.join(nodes)} switched in {seconds}s", line=False, **where, nodes=nodes,
                 phase="in", out_seconds=None, lb_wait_seconds=None, passed=passed, seconds=seconds)
    return passed


def take_out(run, nodes, back):
    """Take ``nodes`` out of every LB; with ``back`` (the stage's previous batches, still out), put
    those back first, in the same call when it can (:meth:`.lb.LoadBalancers.swap`).  A server of
    ``back`` not UP again fails; then ``nodes`` go out only if failures stay within ``max_failures``."""
    if not back:
        return run.balancer.detach(nodes)
    out = run.balancer.swap(nodes, [n for b in back for n in b["nodes"]])
    back_in(run, back, out)
    if out.get("detached", True):
        return out
    over_max_failures(run)
    return run.balancer.detach(nodes)


def put_back(run, held, wait=True):
    """Restore the recorded LB state of the batches in ``held`` (one call), and say so; with ``wait``,
    until every LB reports them UP (a server that does not come back fails)."""
    nodes = sorted(n for b in held for n in b["nodes"])
    out = run.balancer.attach(nodes, wait=wait) if nodes else {}
    back_in(run, held, out)


def over_max_failures(run):
    """DeployError once the failed nodes are more than ``max_failures``."""
    if len(run.failed) > run.max_failures:
        raise DeployError(
            f"{len(run.failed)} node(s) failed ({', '.join(run.failed)}), more than max_failures="
            f"{run.max_failures}: stopped; nodes not reached stay on their release"
        )


def _waited(run, held, out):
    """The wait until UP of the batches in ``held`` (``out``: what the LB call said): its timing; a
    server not UP fails."""
    lb_wait = out.get("lb_wait_seconds")
    labels = ", ".join(b["label"] for b in held if b["nodes"])
    if lb_wait is not None and labels:
        run.timings.setdefault("lb_wait_seconds", []).append({"batch": labels, "seconds": lb_wait})
    for node, status in sorted((out.get("not_up") or {}).items()):
        fail(run, [node], {node: f"not UP on the load balancer {lb_wait}s after it was put back ({status})"})


def back_in(run, held, out=None):
    """Bookkeeping once the batches in ``held`` are back in the LB: the run's record, time out, the wait
    until UP (``out``: what the LB call said; its ``lb_wait_seconds`` None: it did not wait), progress."""
    out = out or {}
    lb_wait = out.get("lb_wait_seconds")
    _waited(run, held, out)
    nodes = {n for b in held for n in b["nodes"]}
    run.lock.set_detached(set(run.lock.detached()) - nodes)
    now = time.monotonic()
    for batch in held:
        out_for = round(now - batch["since"], 3)
        for node in batch["nodes"]:
            run.nodes.setdefault(node, {})["out_of_lb"] = out_for
        up = [n for n in batch["nodes"] if n not in (out.get("not_up") or {})]
        if batch["nodes"]:
            waited = f"; {', '.join(up)} UP on every LB after {lb_wait}s" if lb_wait is not None and up else ""
            run.emit("batch", f"{batch['label']}: {', '.join(batch['nodes'])} back in the LB after {out_for}s{waited}",
                     **batch["where"], nodes=batch["nodes"], phase="in", out_seconds=out_for, lb_wait_seconds=lb_wait,
                     passed=list(batch["passed"]), seconds=round(now - batch["started"], 3))
        for node in batch["left"]:
            run.node_event(node, f"{batch['label']}: {node} left out of the LB: it did not answer; check it, then "
                                 f"salt-run deploy.unlock project={run.project} env={run.env}", batch["where"]["stage"])
    held.clear()


def stages(run, plan, release, start=0, **switch_args):
    """The stages from ``start`` on, batch by batch; a release's stage ends with its gates."""
    for number, stage in enumerate(plan["stages"]):
        if number < start:
            continue
        held = []  # the stage's previous batch, still out of the LB: put back by the next batch's LB call
        per_batch = gating.per_batch(run, stage)
        run.stage = stage["name"]
        run.emit("stage", f"stage {stage['name']}: start", line=False, stage=stage["name"], phase="start", result=None)
        ok = False
        try:
            for index, members in enumerate(stage["batches"], 1):
                nodes = [n for n in members if n not in run.failed]
                run.check_abort(f"before stage {stage['name']} batch {index}")
                if nodes:
                    if run.lock:
                        run.lock.check()  # a shared store's lease lost: stop before the next batch
                    last = index == len(stage["batches"])
                    batch(run, stage, index, nodes, release, held=held, keep=not (last or per_batch), **switch_args)
                over_max_failures(run)
                gating.after_batch(run, plan, stage, index)
            ok = True
        finally:
            if held:
                put_back(run, held, wait=False)  # a failure stopped the stage
            if not ok:
                run.emit("stage", f"stage {stage['name']} failed", line=False, stage=stage["name"], phase="end",
                         result="failed")
        run.emit("stage", f"stage {stage['name']} done", stage=stage["name"], phase="end", result="ok")
        if getattr(run, "kind", None) == "release":  # a rollback has no gates
            gating.after_stage(run, plan, number)
