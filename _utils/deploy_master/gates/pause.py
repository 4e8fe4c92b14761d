"""The pause gate (a stage's ``pause``): after the stage, the release waits.

``pause: true`` stops the run (exit 5), keeping the lock, until ``deploy.promote`` goes on or
``deploy.abort`` reverts; ``pause: N`` waits N seconds holding the lock (``deploy.promote`` ends
the wait, ``deploy.abort`` reverts).  A pause after the last stage is ignored.
"""

import logging
import time

from deploy_master import DeployError, gates, names
from deploy_master import plan as planning

log = logging.getLogger(__name__)

NAME = "pause"


class Paused(Exception):  # pylint: disable=too-few-public-methods
    """``pause: true``: the run stops here, keeping the lock, until deploy.promote / deploy.abort."""

    def __init__(self, state):
        super().__init__(f"paused after stage {state['stage']}")
        self.state = state


class AbortRequested(DeployError):
    """deploy.abort asked a run that waits in-process (``pause: N``) to stop and revert."""


def settings(envc, stage, where):  # pylint: disable=unused-argument
    """None (go on), True (wait for a person) or N seconds; SaltInvocationError naming ``where``."""
    return planning.pause(stage.get("pause"), where)


def when(settings):  # pylint: disable=redefined-outer-name,unused-argument
    return "stage"


def run(settings, ctx):  # pylint: disable=redefined-outer-name
    """Wait as ``settings`` says.  ``ctx.run``: the rollout's run (its lock, its state);
    ``ctx.following``: the next stage's name; ``ctx.state()``: the run's state to keep when paused."""
    run_, stage = ctx.run, ctx.label
    if settings is True:
        raise Paused(ctx.state())
    run_.emit("pause", f"stage {stage}: pause {settings}s before stage {ctx.following} (deploy.promote goes on now, "
              "deploy.abort reverts)", notify_as="pause", stage=stage, next_stage=ctx.following, next=ctx.following,
              seconds=settings, switched=ctx.switched, by=None)
    run_.lock.update(waiting={"run": run_.run_id, "stage": stage, "seconds": settings, "since": names.now()})
    deadline = time.monotonic() + settings
    try:
        while time.monotonic() < deadline:
            ctx.check(f"during the pause after stage {stage}")
            run_.lock.check()
            req = run_.lock.requested()
            if req and req.get("action") == "promote":
                run_.emit("promote", f"promoted by {req.get('by')}: stage {ctx.following} starts now", stage=stage,
                          by=req.get("by"))
                break
            if req and req.get("action") == "abort":
                run_.outcome = "aborted"
                raise AbortRequested(f"aborted by deploy.abort ({req.get('by')}) during the pause after stage {stage}")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        try:
            run_.lock.update(waiting=None)
        except DeployError as exc:  # a lost lock: the error that stopped the wait says more
            log.warning("deploy: could not clear the wait from the lock: %s", exc)
    return gates.Outcome("pass", True, {"seconds": settings}, [])
