"""The interface of the master's state: :class:`Lock` and :class:`Store`, which :mod:`deploy_master.store`
(on the master's disk) and :mod:`deploy_master.store_etcd` (shared by several masters) implement;
:func:`deploy_master.store.get` gives the one the master options choose."""

import os


from deploy_master import Locked, NotPaused, names


class Lock:
    """One release or rollback per project+env at a time (interface).

    ``info`` (after :meth:`acquire`): the holder record: kind, user, host, jid, pid, since.
    ``warnings``: what taking over a stale lock did, for the run's summary.
    """

    def __init__(self, store, project, env, kind):
        self.store, self.project, self.env, self.kind = store, project, env, kind
        self.info = None
        self.warnings = []

    def holder(self):
        """The holder record; None if unlocked; ``{}`` if a lock is being written or unreadable."""
        raise NotImplementedError

    def alive(self, info):
        """Whether the run that holds ``info`` still lives."""
        raise NotImplementedError

    def acquire(self, jid):
        """Take the lock (over a stale one); DeployError naming the holder if it is held."""
        raise NotImplementedError

    def take_over(self, held):
        """Remove the stale lock ``held`` and record its run as interrupted."""
        raise NotImplementedError

    def release(self):
        """Give the lock back, if this run still holds it."""
        raise NotImplementedError

    def check(self):
        """Raise DeployError if this run no longer holds the lock (a shared store's lease was lost).

        The runner calls it before each step that changes nodes; a local lock is never lost."""

    def detached(self):
        """The nodes a run has taken out of the load balancer and not yet put back."""
        raise NotImplementedError

    # --- gates between stages
    def update(self, **fields):
        """Change this run's holder record (a field given None is removed), e.g. ``waiting``."""
        raise NotImplementedError

    def pause(self, state):
        """Keep the lock after this process ends, with the paused run's ``state`` (``run``, ``release``,
        ``stage``, ``next``, ``switched``...) in its record: a paused lock is never stale; the next
        release or rollback is refused naming it until ``deploy.promote`` / ``deploy.abort`` (or
        ``deploy.unlock force=True``).  :meth:`release` then leaves it."""
        raise NotImplementedError

    def resume(self, jid):
        """Take over the paused run (for promote or abort): the lock becomes this process's, the paused
        state is returned (and kept in the record as ``state``).  DeployError if there is no paused run;
        Locked if a live run holds the lock."""
        raise NotImplementedError

    def request(self, action, run, by):
        """Ask the run that waits in-process (``pause: N``) to ``promote`` or ``abort``."""
        raise NotImplementedError

    def requested(self):
        """The request left for this waiting run (taken once), or None."""
        raise NotImplementedError

    @staticmethod
    def _new_request(req, info):
        waiting = (info or {}).get("waiting") or {}
        if isinstance(req, dict) and req.get("run") and req.get("run") == waiting.get("run"):
            return req
        return None

    def _not_paused(self):
        return NotPaused(f"{self.project}/{self.env} has no paused run: nothing to promote or abort "
                           f"(see salt-run deploy.lock_status project={self.project} env={self.env})")

    def _resumed(self, jid, paused):
        user, host = names.caller()
        return {"kind": self.kind, "user": user, "host": host, "jid": jid, "pid": os.getpid(),
                "since": names.now(), "run": paused.get("run"), "state": paused}

    def set_detached(self, nodes):
        """Replace that list; written before detaching, emptied after restoring."""
        raise NotImplementedError

    @staticmethod
    def describe(info):
        """The holder, for people."""
        return (
            f"{info.get('kind', 'a run')} by {info.get('user', '?')} from {info.get('host', '?')} "
            + (f"on master {info['master']} " if info.get("master") else "")
            + f"(jid {info.get('jid', '?')}, pid {info.get('pid', '?')}) since {info.get('since', '?')}"
        )

    def _locked(self, held):
        paused = (held or {}).get("paused")
        if paused:
            return Locked(
                f"{self.project}/{self.env} is locked: paused run {paused.get('run')} "
                f"(release {paused.get('release')}, paused after stage {paused.get('stage')} "
                f"by {held.get('user', '?')} since {paused.get('since', '?')}): "
                f"promote or abort it: salt-run deploy.promote project={self.project} env={self.env}, or salt-run "
                f"deploy.abort project={self.project} env={self.env}"
            )
        return Locked(
            f"{self.project}/{self.env} is locked: "
            + (self.describe(held) if held else "a lock is being written")
            + f"; see salt-run deploy.unlock project={self.project} env={self.env}"
        )

    def _interrupted(self, held):
        """After taking over ``held``: say so, and record its run as interrupted."""
        paused = held.get("paused") or held.get("state")
        if paused:  # deploy.unlock force=True on a paused run (or a promote/abort that died)
            switched = paused.get("switched") or {}
            message = (f"cleared the paused run {paused.get('run')} (release {paused.get('release')}) of "
                       f"{self.describe(held)}; the nodes it switched stay on {paused.get('release')}: "
                       f"{', '.join(sorted(switched)) or 'none'}")
        else:
            message = f"took over a stale lock of {self.describe(held)}"
        self.warnings.append(message)
        self.store.log.warning("deploy: %s", message)
        self.store.history_append(
            self.project,
            {
                "kind": held.get("kind", "release"),
                "env": self.env,
                "result": "interrupted",
                "user": held.get("user"),
                "host": held.get("host"),
                "jid": held.get("jid"),
                "started": held.get("since"),
                "finished": names.now(),
            },
            lock=self,  # a shared store fences it with this run's lock, once taken
        )


class Store:
    """Where the master keeps its state (interface)."""

    def __init__(self, log=None):
        import logging  # pylint: disable=import-outside-toplevel

        self.log = log or logging.getLogger(__name__)

    def lock(self, project, env, kind):
        """The :class:`Lock` of project+env, for a run of ``kind``; not taken yet."""
        raise NotImplementedError

    def history_append(self, project, record, lock=None):
        """Add one run's record (``project`` is added to it)."""
        raise NotImplementedError

    def history_read(self, project, env=None):
        """Every record of the project (of ``env`` only, if given), oldest first."""
        raise NotImplementedError

    def record_read(self, project, env):
        """The record of the nodes: node -> its latest inventory; ``{}`` if none or unreadable."""
        raise NotImplementedError

    def record_update(self, project, env, changes, lock=None):
        """``changes``: node -> its inventory, or None when its state is unknown now (forget it)."""
        raise NotImplementedError
