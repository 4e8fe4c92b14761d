"""Sending a run's nodes back: the revert of a release (its ``on_failure: rollback`` and
``deploy.abort``), and the emergency rollback acting on the master's record.  Both reuse the
switch and batch steps of :mod:`.batches`."""

from deploy_master import DeployError, names, policy
from deploy_master.rollout import batches
from deploy_master.rollout import run as runs


def step(run, message, nodes):
    """A rollback's progress line and its ``rollback`` event."""
    run.emit("rollback", message, target=run.release, emergency=run.mode == "emergency", nodes=list(nodes))


def revert(run, plan, why):
    """Every node switched in this run back to the release it had, through the LB, batch by batch in
    the plan's order (the pre-production node first), like a normal rollback of those nodes: the
    release left is marked bad there, checks are reported.  Returns what it did, for the summary."""
    switched = {n: prev for n, prev in runs.switched(run).items() if n not in run.silent}
    if not switched:
        return None
    forward = (run.nodes, run.failed)
    run.nodes, run.failed = {}, []
    targets = sorted(set(switched.values()))
    target = targets[0] if len(targets) == 1 else targets
    run.emit("rollback", f"rollback of this run ({why}): {', '.join(sorted(switched))} back to {', '.join(targets)}",
             notify_as="rollback", target=target, emergency=False, nodes=switched, to=target, reason=why)
    error = None
    try:
        if plan.get("preprod") in switched:
            batches.switch(run, [plan["preprod"]], switched[plan["preprod"]], mark_left="bad", checks="report",
                           force=True)
        for stage in plan["stages"]:
            for index, members in enumerate(stage["batches"], 1):
                nodes = [n for n in members if n in switched]
                for prev in sorted({switched[n] for n in nodes}):  # one release before, normally: one call
                    if run.lock:
                        run.lock.check()
                    batches.batch(run, stage, index, [n for n in nodes if switched[n] == prev], prev, mark_left="bad",
                           checks="report", force=True)  # back to what each node reported it served
    except DeployError as exc:
        error = str(exc)
    finally:
        back, failed = run.nodes, run.failed
        run.nodes, run.failed = forward
    for node, entry in back.items():
        run.nodes.setdefault(node, {})["rolled_back"] = {k: entry.get(k) for k in ("new", "result", "error")
                                                         if entry.get(k)}
    done = {"result": "failure" if error or failed else "success", "to": switched, "failed": failed,
            "nodes": back, "reason": why}
    if error:
        done["error"] = error
    user, host = names.caller()
    try:
        run.store.history_append(run.project, {
            "kind": "rollback", "mode": "abort" if run.outcome == "aborted" else "auto", "env": run.env,
            "result": done["result"], "user": user, "host": host, "by": names.by(),
            "release": targets[0] if len(targets) == 1 else targets,
            "from": run.release, "run": run.run_id, "started": run.started_at, "finished": names.now(),
            "nodes": back, "error": error or (f"failed on {', '.join(failed)}" if failed else None), "reason": why,
        }, lock=run.lock)
    except DeployError as exc:
        done["error"] = f"{done.get('error') or ''}; {exc}".lstrip("; ")
    run.emit("rollback", f"rollback of this run: {done['result']}"
             + (f" ({', '.join(failed)} failed)" if failed else ""),
             target=target, emergency=False, nodes=switched, result=done["result"])
    return done


def inventories(run, nodes):
    ret = run.node_call(nodes, "deploy.releases", {"project": run.project})
    errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
    if errors:
        raise DeployError("cannot list releases on " + "; ".join(f"{n}: {e}" for n, e in sorted(errors.items())))
    return {n: r["ret"] for n, r in ret.items()}


def known_inventories(run, nodes):
    """The master's record of every node (see ``run.node_call``), or None if one is missing."""
    record = run.store.record_read(run.project, run.env)
    known = {n: record.get(n) for n in nodes}
    if all(isinstance(inv, dict) and inv.get("fingerprint") for inv in known.values()):
        return known
    return None


def fingerprints(inventories, target):
    """What each node must find before it switches (deploy.switch ``expect``): its state as recorded
    (fingerprint), and the record's claims that steer the rollback, which the node checks itself: the
    target and its status there, the release it serves and that one's status (what an undo restores)."""
    def status(inv, name):
        return next((r["status"] for r in inv["releases"] if r["name"] == name), None)
    return {n: {"fingerprint": inv["fingerprint"], "release": target, "status": status(inv, target),
                "current": inv["current"], "current_status": status(inv, inv["current"])}
            for n, inv in inventories.items()}


def emergency_target(run, nodes, to, allow_bad=False):
    """The target from the master's record; the nodes are listed first only if the record cannot tell."""
    known = known_inventories(run, nodes)
    target = policy.target_or_none(known, to, allow_bad) if known else None
    if target:
        return known, target, "record"
    step(run, "the master's record does not cover every node or gives no target: listing releases first", nodes)
    known = inventories(run, nodes)
    return known, policy.rollback_target(known, to, allow_bad), "listing"


def undo(run, nodes, known):
    """Switch nodes back to the release the record says they served (each node confirmed it before it
    switched: ``expect``), and give it back its status."""
    groups = {}  # (release served before, its status then) -> nodes: one call per group
    for node in nodes:
        prev = known[node]["current"]
        status = next((r["status"] for r in known[node]["releases"] if r["name"] == prev), None)
        groups.setdefault((prev, status), []).append(node)
    for (prev, status), members in groups.items():
        if not prev:
            step(run, f"{', '.join(members)}: served no release before; left on {run.release}", members)
            continue
        step(run, f"{', '.join(members)}: back to {prev}", members)
        batches.switch(run, members, prev, checks="report", force=True)  # the rollback marked it bad
        if status:
            run.node_call(members, "deploy.mark", {"project": run.project, "release": prev, "status": status,
                                                   "inventory": True})


def refused_target(run, nodes, known, target):
    """Nodes in the recorded state refused the record's target: the record does not tell the truth
    (altered by a writer of the store, or the target broken there).  Every node this call switched
    goes back, and the run stops: a rollback never goes where a node says it must not."""
    why = dict(run.refused_target)
    switched = [n for n in nodes if run.nodes.get(n, {}).get("result") == "ok" and n not in run.silent]
    if switched:
        undo(run, switched, known)
    raise DeployError(
        f"{', '.join(sorted(why))} refused the target {target} of the master's record, which disagrees with "
        f"the node: " + "; ".join(f"{n}: {e}" for n, e in sorted(why.items()))
        + (f"; {', '.join(switched)} switched back" if switched else "; nothing was changed")
    )


def emergency(run, plan, to, allow_bad=False):
    """Emergency rollback: every node at once, in one batched call, acting on the master's record.

    The target comes from the record the runs keep of every node, so no listing round trip
    is needed; each node checks that its state is the recorded one (``expect``) and refuses
    before changing anything if not.  A refusal never leaves the env split: if the nodes'
    true state gives the same target, the refused nodes follow; if not, the switched nodes
    go back and the target is chosen again from the true state, once.  The record's target is bound
    into ``expect``: a node that sees it otherwise (bad, missing, incomplete) refuses, and the run
    stops (:func:`refused_target`).
    """
    nodes = list(plan["nodes"])
    known, target, source = emergency_target(run, nodes, to, allow_bad)
    run.release = target
    run.emit("start", f"emergency rollback to {target}", line=False, notify_as="start", ref=None, test=False, to=target)
    step(run, f"emergency rollback to {target}: one call to {len(nodes)} nodes (target from the {source}), "
         "no LB actions, checks reported", nodes)
    changed = set()
    for attempt in (1, 2):
        run.refused = {}
        batches.switch(run, nodes, target, mark_left="bad", checks="report", expect=fingerprints(known, target),
                force=allow_bad)
        if run.refused_target:
            refused_target(run, nodes, known, target)
        if not run.refused:
            break
        refused = dict(run.refused)
        changed.update(refused)
        truth = {**known, **refused}
        if policy.target_or_none(truth, to, allow_bad) == target:
            step(run, f"{', '.join(sorted(refused))}: changed since the master's record; "
                      f"{target} is still the target there: switching them too", sorted(refused))
            run.refused = {}
            batches.switch(run, sorted(refused), target, mark_left="bad", checks="report",
                    expect=fingerprints(refused, target), force=allow_bad)
            if run.refused_target:
                refused_target(run, nodes, truth, target)
            batches.fail(run, sorted(run.refused), {n: "its releases changed again during the rollback: not switched"
                                             for n in run.refused})
            break
        switched = [n for n in nodes if n not in refused and n not in run.silent]
        undo(run, switched, known)
        if attempt == 2:
            raise DeployError(
                f"the releases on {', '.join(sorted(refused))} changed during the rollback: every switched node "
                "was switched back; run the rollback again"
            )
        nodes = [n for n in nodes if n not in run.silent]
        known = {n: run.inventories.get(n) or truth[n] for n in nodes}
        target = run.release = policy.rollback_target(known, to, allow_bad)
        step(run, f"{', '.join(sorted(refused))}: changed since the master's record, which made "
                  f"{target} the target: every node goes there instead", nodes)
    return {"to": target, "target_from": source, "changed_since_record": sorted(changed)}
