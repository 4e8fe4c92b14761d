"""The plan's targets on a master of masters (``order_masters``, docs/syndics.md).

The master of masters holds neither the nodes' keys nor their grains: its syndic masters do.  A target
is matched by the syndic masters themselves, each as a master matches (its keys, its minions' cached
grains: a minion that is down counts), and told back in their ``new`` events (:func:`jobs.syndic_match`).
A syndic master that is down tells nothing: the nodes of the env the master's record holds (they hold
releases of it) and that were last seen behind a syndic that does not answer are in the plan all the
same, so that the run fails on them, naming their syndic, instead of leaving them out unseen.

The emergency rollback does not match again: matching through the syndics costs a job and up to
``syndic_wait`` + 1 s per target, more than the rollback's own call.  It acts on the nodes the last
release or rollback of the env matched (:func:`remember_plan`), as it takes its target from the
master's record.
"""

import os

from deploy_master import jobs, statedir


def matcher(run):
    """``(match, connected)`` for :func:`deploy_master.plan.make` on a master of masters."""
    known = jobs.known_syndics(run.opts)
    answered = set()
    orphans = {}

    def match(target):
        lists = run.transport.syndic_match(target, expect=known)
        answered.update(lists)
        found = set().union(*lists.values()) if lists else set()
        if target == run.envc.get("target"):
            orphans.update(unreachable(run, answered))
            found |= set(orphans)
        return found

    def connected():
        """Every matched node but those behind a syndic that does not answer (the nodes' own answers
        come with the run's first call)."""
        return _Everyone(orphans)

    return match, connected


class _Everyone:
    """A set of every node but ``excluded`` (``plan.make`` asks ``node in connected()``)."""

    def __init__(self, excluded):
        self.excluded = set(excluded)

    def __contains__(self, node):
        return node not in self.excluded


def unreachable(run, answered):
    """node -> syndic for the env's nodes in the master's record that were last seen behind a syndic that
    answered none of the plan's jobs and does not answer a job to every minion either."""
    members = jobs.syndic_members(run.opts)
    record = run.store.record_read(run.project, run.env) or {}
    suspects = {n: members[n] for n in record if members.get(n) and members[n] not in answered}
    if not suspects:
        return {}
    alive = run.transport.syndic_match("*", tgt_type="glob", expect=set(suspects.values()))
    return {n: s for n, s in suspects.items() if s not in alive}


def _plan_path(run):
    return os.path.join(statedir.folder(run.opts, "syndics", "plans"), f"{run.project}_{run.env}.json")


def remember_plan(run, steps):
    """Keep the env's nodes as a release or rollback matched them, for the emergency rollback."""
    statedir.write_json(_plan_path(run), {"nodes": steps["nodes"], "preprod": steps["preprod"]})


def planned(run):
    """The emergency rollback's plan: the nodes the last release or rollback matched, no stages; None when
    no run of the env was planned on this master."""
    kept = statedir.read_json(_plan_path(run))
    if not isinstance(kept, dict) or not kept.get("nodes"):
        return None
    return {"nodes": sorted(kept["nodes"]), "preprod": kept.get("preprod"), "stages": [], "down": []}
