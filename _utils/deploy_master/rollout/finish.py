"""The end of a run: the lock, signals, history, summary and exit code.

:func:`guard` runs a run's body and, whatever happens, records it and releases the lock; the
summary carries ``retcode`` (``deploy_master.contract``), which the runner hands to Salt.
"""

import contextlib
import logging
import signal
import time

from deploy_master import DeployError, Locked, contract, names
from deploy_master import plan as planning
from deploy_master.rollout import gating, hooks, revert

log = logging.getLogger(__name__)

DONE = {"success": "ok", "paused": "paused", "aborted": "aborted"}  # the history's result -> the done event's


def failed(ret, code=contract.FAILED):
    """Mark a runner return as failed: salt-run exits with ``retcode`` (as state.orchestrate does);
    the codes are in ``deploy_master.contract``."""
    ret["retcode"] = code
    return ret


def finish(run, plan, error=None, extra=None, aborted=False, paused=None):
    """Record and report: cleanup, LB state of every node, history, events, summary.

    ``paused``: the state of a run stopped by ``pause: true``: kept in the store with the lock
    (before anything else), recorded as ``paused``, exit 5."""
    if paused:
        try:
            run.lock.pause(paused)
        except DeployError as exc:
            error, paused = f"could not keep the paused run: {exc}", None
    reached = [n for n in plan["nodes"] if n not in run.failed] if plan else []
    if run.kind == "release" and reached and run.release and not error and not paused and not run.outcome:
        try:
            run.node_call(reached, "deploy.cleanup", {"project": run.project, "inventory": True})
        except DeployError as exc:  # the store failed (a lost lock): the releases are out, cleanup waits
            error = str(exc)
    lb_states = {}
    if plan and run.has_lb and run.mode != "emergency":
        nodes = planning.behind_lb(plan)
        try:
            lb_states = run.balancer.status(nodes)
        except Exception as exc:  # pylint: disable=broad-except  # e.g. the master not answering: still record the run
            lb_states = {n: f"unknown ({exc})" for n in nodes}
    for node, state in lb_states.items():
        run.nodes.setdefault(node, {})["lb"] = state
    result = ("paused" if paused else "aborted" if aborted or run.outcome == "aborted"
              else "failure" if error or run.failed else "success")
    run.timings["salt_calls"] = run.salt_calls
    seconds = round(time.monotonic() - run.started, 3)
    user, host = names.caller()
    record = {
        "kind": run.kind, "mode": run.mode, "env": run.env, "result": result, "user": user, "host": host,
        "by": names.by(), "release": run.release, "started": run.started_at, "finished": names.now(),
        "seconds": seconds,
        "nodes": run.nodes, "timings": run.timings, "error": error, "run": run.run_id, **(extra or {}),
    }
    if paused:
        record.update(stage=paused["stage"], switched=paused["switched"])
    try:
        run.store.history_append(run.project, record, lock=run.lock)
    except DeployError as exc:  # a lost lock: the next run records this one as interrupted
        error = record["error"] = f"{error}; {exc}" if error else str(exc)
        result = record["result"] = "failure"
    code = exit_code(run, result, error, extra, paused)
    run.fire_later()
    if paused:
        following = plan["stages"][paused["next"]]["name"]
        run.emit("pause", f"paused after stage {paused['stage']}", line=False, notify_as="pause",
                 stage=paused["stage"], next_stage=following, next=following, seconds=None,
                 switched=paused["switched"], by=None)
    run.emit("done", f"{run.kind} {result} in {seconds}s" + (f": {error}" if error else ""),
             notify_as=None if paused else "success" if result == "success" else "failure",
             notify_fields={"result": result}, result=DONE.get(result, "failed"), exit_code=code, seconds=seconds,
             error=error)
    summary = {"result": result, "retcode": 0, "release": run.release, "run": run.run_id, "seconds": seconds,
               "nodes": run.nodes, "timings": run.timings, **(extra or {})}
    if error:
        summary["error"] = error
    if run.lock and run.lock.warnings:
        summary["warnings"] = run.lock.warnings
    if paused:
        summary["paused"] = {"stage": paused["stage"], "next": plan["stages"][paused["next"]]["name"],
                             "switched": paused["switched"]}
        summary["comment"] = (f"paused after stage {paused['stage']}, holding the lock: salt-run deploy.promote "
                              f"project={run.project} env={run.env} goes on, salt-run deploy.abort "
                              f"project={run.project} env={run.env} reverts")
    return failed(summary, code) if code else summary


def exit_code(run, result, error, extra, paused=None):
    """The run's exit code (``deploy_master.contract``) for its ``result``."""
    if paused:
        return contract.PAUSED
    if result == "success" or (run.mode == "abort" and not error
                               and not ((extra or {}).get("rolled_back") or {}).get("failed")):
        return contract.OK  # deploy.abort did what it was asked
    return contract.ABORTED if result == "aborted" and run.mode != "abort" else contract.FAILED


def take_lock(run, force=False):
    """The project+env's lock for ``run`` (then what an interrupted run left is put back); ``force`` (an
    emergency rollback's): the lock is passed, with a warning when a paused run holds it."""
    if force:
        held = run.store.lock(run.project, run.env, "view").holder() or {}
        if held.get("paused"):
            run.extra["warnings"] = [
                f"the paused run {held['paused'].get('run')} still holds the lock: abort it (salt-run deploy.abort "
                f"project={run.project} env={run.env}) or clear it (deploy.unlock force=True)"]
        return
    run.lock = run.store.lock(run.project, run.env, f"{run.kind} ({run.mode})" if run.kind == "rollback" else run.kind)
    run.lock.acquire(run.jid)
    recover(run)


def clear(run, lock, held):
    """deploy.unlock: take ``lock`` over from ``held`` (Locked if another run took it meanwhile), then put
    back what that run left out of the LB."""
    run.lock = lock
    if not lock.take_over(held):
        raise Locked("the lock changed while it was being cleared: another run took it; see deploy.lock_status")
    recover(run)


def recover(run):
    """After a stale lock: nodes the dead run had taken out of the LB go back in their prior state."""
    left = run.lock.detached()
    if left and run.has_lb:
        out = run.balancer.attach(left, wait=False)  # as they were: no wait until UP
        run.lock.set_detached([])
        message = f"restored LB state of {', '.join(left)} left detached by an interrupted run: {out['restored']}"
        run.lock.warnings.append(message)
        run.emit("batch", message, stage=None, batch=None, of=None, nodes=sorted(left), phase="in", out_seconds=None,
                 lb_wait_seconds=out.get("lb_wait_seconds"))


def on_signals(run):
    """SIGTERM/SIGINT while a run holds the lock: finish the step or batch in flight (its LB restore
    included), start nothing new, record the run as aborted.  Returns the handlers to put back."""

    def handler(signum, frame):  # pylint: disable=unused-argument
        name = signal.Signals(signum).name
        if not run.aborted:
            run.aborted = name
            # a handler interrupts the flow anywhere, a bus write included: the line now, its event at the
            # flow's next check (Run.check_abort)
            run.emit_later("abort", f"{name} received: finishing the step in flight, then stopping (no new batch)",
                           stage=run.stage, by=name)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread (an embedding caller): its own handling stays
            previous[sig] = signal.signal(sig, handler)
    return previous


def guard(run, plan, body):
    """Run body(); whatever happens, release the lock and write the summary."""
    error = None
    extra = {}
    paused = None
    previous = on_signals(run)
    try:
        try:
            extra = body() or {}
        except gating.Paused as exc:
            paused = exc.state
        except DeployError as exc:
            error = str(exc)
            if run.aborted and not error.startswith("aborted"):
                error = f"aborted by {run.aborted}: {error}"
            # a failed batch, stage gate or abort: the env's on_failure (deploy.abort always reverts)
            # (an after_release step that fails leaves the release out: it is not a reason to undo it)
            if run.kind == "release" and (run.on_failure == "rollback" or isinstance(exc, gating.AbortRequested)) \
                    and not isinstance(exc, hooks.AfterReleaseFailed):
                extra["rolled_back"] = revert.revert(run, plan, error)
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("deploy: unexpected error")
            error = f"unexpected error: {exc}"
        if run.aborted and error and not error.startswith("aborted"):
            error = f"aborted by {run.aborted}: {error}"
        extra = {**run.extra, **extra}
        try:
            return finish(run, plan, error, extra, aborted=bool(run.aborted) and error is not None, paused=paused)
        finally:
            if run.lock:
                run.lock.release()
            run.close()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def held_by(lock, held):
    """Why ``deploy.unlock`` without ``force`` refuses the live ``held`` lock."""
    if held.get("paused"):
        return (f"{lock._locked(held)}; or force=True, which clears it and leaves the nodes it "  # pylint: disable=protected-access
                f"switched on {held['paused'].get('release')}")
    return f"the lock is held by a running {lock.describe(held)}; use force=True"


def request(run, action):
    """deploy.promote / deploy.abort of a run waiting in-process (``pause: N``): ask it (its return),
    or None when no live run waits."""
    view = run.store.lock(run.project, run.env, "view")
    held = view.holder()
    waiting = (held or {}).get("waiting")
    if not (waiting and view.alive(held)):
        return None
    user, host = names.caller()
    view.request(action, waiting["run"], f"{user} from {host}")
    return {"result": "requested", "run": waiting["run"], "action": action,
            "comment": f"run {waiting['run']} waits after stage {waiting['stage']}: asked it to {action}"}


def resume(run, action):
    """Take the paused run over for ``action`` (promote / abort) and put its state back into ``run``."""
    run.lock = run.store.lock(run.project, run.env, action)
    state = run.lock.resume(run.jid)
    run.run_id, run.release = state["run"], state["release"]
    run.nodes, run.failed = state.get("nodes") or {}, list(state.get("failed") or [])
    run.timings, run.extra, run.build = state.get("timings") or {}, state.get("extra") or {}, state.get("build") or {}
    return state
