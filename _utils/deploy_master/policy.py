"""Which release a rollback goes to, and the cluster view behind it (pure functions).

Inventories are what ``deploy.releases`` returns per node: ``{current, previous, releases:
[{name, status, prepared_at, activated_at, current, ...}], fingerprint}``.
"""

from deploy_master import DeployError, names


def age(rel):
    """When a release was first prepared (released): the one ordering of releases.

    Not when it was last activated: a node switched back to r2 after r3 failed there must not
    make r2 look newer than r3.  Releases without a prepare time fall back to their activation.
    """
    return rel.get("prepared_at") or rel.get("activated_at") or 0


def node_target(inventory):
    """One node's rule: of the good releases prepared before ``current`` whose commit differs from
    ``current``'s, the newest (by :func:`age`); None if there is none.

    The node module keeps a copy of this rule (``deploy.rollback_target``) to stay
    self-contained: tests/unit/test_policy.py pins that the two agree.
    """
    cur = next((r for r in inventory["releases"] if r["current"]), None)
    candidates = [
        r for r in inventory["releases"]
        if r["status"] == "good" and not r["current"]
        and (cur is None or (age(r) < age(cur) and not (r.get("commit") and r.get("commit") == cur.get("commit"))))
    ]
    return max(candidates, key=lambda r: (age(r), r["name"]))["name"] if candidates else None


def _stamp(rels):
    # a release's age across nodes: the earliest it was prepared anywhere
    return min(age(r) for r in rels.values())


def _commits(rels):
    return {r.get("commit") for r in rels.values() if r.get("commit")}


def cluster_view(inventories):
    """Which release is current where, who differs, and the release a rollback goes to: the node
    rule across nodes: of the releases older than the newest current one (by :func:`age`), present
    on every node, good on one and bad on none, whose commit differs from that current one's, the newest."""
    currents = {n: inv["current"] for n, inv in inventories.items()}
    counts = {}
    for cur in currents.values():
        counts[cur] = counts.get(cur, 0) + 1
    majority = max(counts, key=counts.get) if counts else None
    by_name = {}
    for node, inv in inventories.items():
        for rel in inv["releases"]:
            by_name.setdefault(rel["name"], {})[node] = rel
    newest_current = max(
        (c for c in set(currents.values()) if c and c in by_name), key=lambda c: _stamp(by_name[c]), default=None
    )
    candidates = [
        name for name, rels in by_name.items()
        if len(rels) == len(inventories)
        and name != newest_current
        and not any(r["status"] == "bad" for r in rels.values())
        and any(r["status"] == "good" for r in rels.values())
        and (newest_current is None or (_stamp(rels) < _stamp(by_name[newest_current])
                                        and not _commits(rels) & _commits(by_name[newest_current])))
    ]
    target = max(candidates, key=lambda c: (_stamp(by_name[c]), c), default=None)
    return {
        "current": currents,
        "majority": majority,
        "differ": sorted(n for n, c in currents.items() if c != majority),
        "rollback_target": target,
    }


def rollback_target(inventories, to=None, allow_bad=False):
    """The release a rollback of these nodes goes to: ``to`` if every node has it and none marks it
    bad (``allow_bad``: even if some do), else the cluster view's target; DeployError if there is none."""
    if to:
        names.valid(to, names.RELEASE_RE, "release")
        missing = sorted(n for n, inv in inventories.items() if to not in {r["name"] for r in inv["releases"]})
        if missing:
            raise DeployError(f"release {to} is not on {', '.join(missing)}: refusing (nothing was changed)")
        bad = sorted(n for n, inv in inventories.items() for r in inv["releases"]
                     if r["name"] == to and r["status"] == "bad")
        if bad and not allow_bad:
            raise DeployError(f"release {to} is marked bad on {', '.join(bad)}: refusing to roll back to it "
                              "(allow_bad=True goes there all the same)")
        return to
    view = cluster_view(inventories)
    if view["rollback_target"]:
        return view["rollback_target"]
    def good(inv):
        return [r["name"] for r in inv["releases"] if r["status"] == "good" and not r["current"]] or "none"

    have = "; ".join(f"{n}: current {inv['current']}, good {good(inv)}" for n, inv in sorted(inventories.items()))
    raise DeployError(
        f"no good release older than the current one, with another commit, is present on every node ({have}); "
        "choose one with to=<release>"
    )


def target_or_none(inventories, to=None, allow_bad=False):
    """:func:`rollback_target`, or None where it would refuse."""
    try:
        return rollback_target(inventories, to, allow_bad)
    except DeployError:
        return None
