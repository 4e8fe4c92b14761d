"""The state of one release or rollback: config, transport, progress and events, the record.

Every progress line goes through :meth:`Run.progress` and every event through :meth:`Run.fire`;
what the nodes report of themselves goes into the master's record as it comes
(:meth:`Run.node_call`).
"""

import logging
import sys
import time

import salt.client
import salt.utils.event
import salt.utils.jid
from salt.exceptions import SaltInvocationError

from deploy_master import Aborted, config, jobs, names, notify, store
from deploy_master.rollout import lb as balancer
import contextlib

log = logging.getLogger(__name__)

EVENTS_VERSION = 1  # the event contract (docs/events.md)


class Run:
    """One run of ``kind`` (release, rollback, ...) of ``project``/``env``.

    ``opts``: the master's options; ``jid``: the runner job's jid (names the run); ``jid_event``:
    the runner's progress channel (``__jid_event__``, None outside a runner job); ``client``: a
    ``LocalClient`` (made from ``opts`` when None) and ``event``: the master's event bus the run's
    events go to (made from ``opts`` when None); ``definition``: (the project's pillar, the env's),
    read from the master's pillar when None."""

    def __init__(self, opts, project, env, kind, mode="normal", jid=None, jid_event=None, client=None, event=None,
                 definition=None):
        self.opts, self.jid, self.jid_event = opts, jid, jid_event
        self.project, self.env, self.kind, self.mode = project, env, kind, mode
        self.conf, self.envc = definition or config.load(opts, project, env)
        if jobs.cache_check(opts):
            raise SaltInvocationError(jobs.cache_check(opts))
        self.hooks = notify.hooks(self.conf, project)  # the run posts its own notifications
        self.max_failures = int(self.envc.get("max_failures", 0))
        self.started = time.monotonic()
        self.started_at = names.now()
        self.store = store.get(opts, log)
        self.client = client or salt.client.LocalClient(mopts=opts)
        self.event = event or salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
        self.transport = jobs.Transport(opts, self.client)
        # every load balancer of the env (an env may have its own): the run's LB actions
        self.balancer = balancer.LoadBalancers(config.load_balancers(self.conf, self.envc), self.call,
                                               config.lb_wait_up(self.conf, self.envc))
        self.has_lb = bool(self.balancer)
        self.nodes = {}  # node -> {old, new, result, out_of_lb, error}
        self.timings = {}
        self.failed = []
        self.silent = set()  # nodes that never answered a switch
        self.refused = {}  # node -> its inventory: refused a switch, its state differs from the record
        self.refused_target = {}  # node -> why: same state as the record, but refused the record's target
        self.inventories = {}  # node -> latest inventory it reported in this run (None: unknown)
        self.lock = None
        self.release = None
        self.build = {}
        self.aborted = None  # the signal's name once SIGTERM/SIGINT arrived
        self.on_failure = config.on_failure(self.envc, env) if self.envc is not None else "stop"
        self.run_id = jid or salt.utils.jid.gen_jid(opts)  # names a paused run
        self.extra = {}  # what the summary and a paused run's state carry (ref, commit, version)
        self.outcome = None  # "aborted" for deploy.abort
        self.stage = None  # the stage (or "preprod") the run is in: the node events say it
        self.later = []  # events of lines printed in a signal handler, fired at the next check_abort

    @property
    def salt_calls(self):
        """Salt jobs this run published (the record's timings: salt_calls)."""
        return self.transport.calls

    def check_abort(self, where):
        """Stop here (no new step or batch) if a signal asked the run to stop."""
        self.fire_later()
        if self.aborted:
            raise Aborted(f"aborted by {self.aborted} {where}: no new batch was started; nodes not reached stay "
                          "on their release, every detached node is back in its prior LB state")

    def close(self):
        self.event.destroy()
        self.client.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- output
    def progress_to_stderr(self):
        """With an outputter chosen (``--out=json``, ``yaml``...), stdout is the return alone: progress
        lines go to stderr.  Otherwise they are progress events, which salt-run prints as they come."""
        return (self.opts.get("output") or "deploy_progress") != "deploy_progress"

    def emit(self, type_, message, line=True, notify_as=None, notify_fields=None, **fields):
        """The one emit function: the progress line ``message`` (unless ``line`` is false) and its
        event ``deploy/<project>/<env>/<type_>``, contract version 1 (docs/events.md): the common
        fields, then ``fields``.  ``notify_as``: the notification this moment posts (one of
        ``notify.EVENTS``), with the event's fields and ``notify_fields`` (the fields as the hooks
        know them where they differ); the run posts it itself, never from an event on the bus."""
        elapsed = time.monotonic() - self.started
        if line:
            self._print(f"[{elapsed:6.1f}s] {self.project}/{self.env}: {message}")
        data = {**fields, **self.envelope(type_, elapsed, message)}
        if fields.get("by") is not None:  # pause, promote, abort: whom the step acted for
            data["by"] = fields["by"]
        self.event.fire_event(data, f"deploy/{self.project}/{self.env}/{type_}")
        if notify_as:
            self._notify(notify_as, {**data, "kind": self.kind, "mode": self.mode, **(notify_fields or {})})

    def emit_later(self, type_, message, **fields):
        """The line now, its event at the flow's next :meth:`check_abort` (a signal handler's line)."""
        self._print(f"[{time.monotonic() - self.started:6.1f}s] {self.project}/{self.env}: {message}")
        self.later.append((type_, message, fields))

    def fire_later(self):
        """The events :meth:`emit_later` kept."""
        while self.later:
            type_, message, fields = self.later.pop(0)
            self.emit(type_, message, line=False, **fields)

    def progress(self, message):
        """A progress line of the build (its event: ``build``, the figures not known yet)."""
        self.emit("build", message, version=None, commit=None, branch=None, source=None, seconds=None)

    def envelope(self, type_, elapsed, message):
        """The fields every event carries."""
        user, _ = names.caller()
        kind = self.mode if self.mode in ("promote", "abort") else self.kind
        return {"v": EVENTS_VERSION, "type": type_, "run": self.run_id, "project": self.project, "env": self.env,
                "kind": kind, "mode": "emergency" if self.mode == "emergency" else "normal",
                "release": self.release, "user": user, "by": names.by(), "at": names.now(),
                "elapsed": round(elapsed, 3), "message": message}

    def _print(self, line):
        log.info("deploy: %s", line)
        if self.progress_to_stderr():
            print(line, file=sys.stderr, flush=True)
        elif self.jid_event is not None:
            with contextlib.suppress(ReferenceError):
                self.jid_event.fire_event({"message": line, "outputter": "deploy_progress"}, "progress")

    def _notify(self, what, data):
        if not self.hooks:
            return
        tag = f"deploy/{self.project}/{self.env}/{what}"
        try:
            notify.send(self.hooks, tag, data, log)
        except Exception:  # pylint: disable=broad-except  # a notification never stops a run
            log.warning("deploy: notification %s failed", tag, exc_info=True)

    def node_event(self, node, message, stage=None):
        """The ``node`` event of ``node`` as the run has it now."""
        entry = self.nodes.get(node, {})
        result = {"ok": "ok", "refused": "skipped"}.get(entry.get("result"), "failed")
        self.emit("node", message, node=node, stage=stage if stage is not None else self.stage,
                  old=entry.get("old"), new=entry.get("new"), result=result,
                  error=entry.get("error") if result != "ok" else None, seconds=entry.get("seconds"))

    # --- salt calls: one batched call to a list of minions
    def call(self, nodes, fun, kwarg=None, timeout=None, landed=None):
        return self.transport.call(nodes, fun, kwarg, timeout, landed)

    def node_call(self, nodes, fun, kwarg, landed=None):
        """A batched deploy.* call; what the nodes report of themselves goes into the master's record.
        ``landed``: see :meth:`jobs.Transport.call`."""
        out = self.call(nodes, fun, kwarg, landed=landed)
        reported = {n: store.reported_inventory(fun, res) for n, res in out.items()}
        reported = {n: inv for n, inv in reported.items() if inv is not False}
        self.inventories.update(reported)
        self.store.record_update(self.project, self.env, reported, lock=self.lock)
        return out


def switched(run):
    """node -> the release it had, for every node ``run`` switched to its release (and left there)."""
    return {
        node: entry["old"] for node, entry in run.nodes.items()
        if entry.get("result") == "ok" and entry.get("old") and entry.get("new") == run.release
        and entry["old"] != run.release
    }
