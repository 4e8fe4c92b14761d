"""Every load-balancer action of a run, in one place: ``deploy_lb.each`` on the LB minions.

A run holds one :class:`LoadBalancers` (the env's ``lb``: one LB or a list, :func:`deploy_master.lbs.parse`);
the steps call its actions and nothing else reaches a load balancer.

A batch is out of every LB before its switch and back in every LB after it.  Each step is ONE
batched Salt call (``deploy_lb.each``) to every LB minion; a minion acts on the definitions naming
it, each LB answers on its own.  If one LB fails to take a batch out, the batch fails and the
batch's put-back restores it on every LB (``attach`` restores the state each LB recorded, an
operator's ``maint``/``drain`` included; an LB that never took it out has nothing to restore).
After a batch is put back, the next one leaves only once every LB reports the restored servers UP
(``lb_wait_up`` seconds at most, default 30): a server that does not come back is reported in
``not_up`` and the caller fails it (``max_failures`` applies).
"""

from deploy_master import DeployError, lbs


class LoadBalancers:
    """A run's load balancers (``definitions``: :func:`deploy_master.lbs.parse`), acted on through
    ``call(minions, fun, kwarg)`` (the run's batched Salt call: ``{minion: {"ok", "ret" | "error"}}``).
    ``wait_up``: longest wait, in seconds, for servers put back to be UP (0: no wait)."""

    def __init__(self, definitions, call, wait_up=lbs.DEFAULT_WAIT_UP):
        self.definitions = list(definitions)
        self._call = call
        self.wait_up = float(wait_up)
        self.minions = sorted({lb["minion"] for lb in self.definitions})

    def __bool__(self):
        return bool(self.definitions)

    def describe(self):
        """``haproxy on lb-1`` / ``2 load balancers: haproxy dc1 on lb-1, nginx edge on lb-2`` ("" for none)."""
        if len(self.definitions) == 1:
            lb = self.definitions[0]
            return f"{lb['driver']} on {lb['minion']}"
        each = ", ".join(f"{lb['driver']} {lb['name']} on {lb['minion']}" for lb in self.definitions)
        return f"{len(self.definitions)} load balancers: {each}" if each else ""

    def servers(self):
        """node -> its server name on the (first) LB: the names an analysis provider selects by."""
        return dict((self.definitions[0].get("servers") if self.definitions else None) or {})

    # --- the one call per step
    def _each(self, fun, nodes, **kwarg):
        """One ``deploy_lb.each`` call to every LB minion: ({lb name: ret}, {lb name: error}, extras)."""
        kwarg = {"lbs": self.definitions, "fun": fun, "servers": sorted(nodes), **kwarg}
        answers = self._call(self.minions, "deploy_lb.each", kwarg)
        rets, errors, extra = {}, {}, {"wait_seconds": 0.0, "not_up": {}, "held": False}
        for lb in self.definitions:
            answer = answers.get(lb["minion"]) or {"ok": False, "error": "no answer"}
            got = (answer.get("ret") or {}).get("lbs", {}).get(lb["name"]) if answer.get("ok") else None
            if got is None:
                errors[lb["name"]] = answer.get("error") or "no answer"
            elif not got.get("ok"):
                errors[lb["name"]] = got.get("error")
            else:
                rets[lb["name"]] = got.get("ret") or {}
        for minion in self.minions:
            ret = (answers.get(minion) or {}).get("ret") or {}
            if not isinstance(ret, dict):
                continue
            extra["wait_seconds"] = max(extra["wait_seconds"], float(ret.get("wait_seconds") or 0))
            extra["not_up"].update(ret.get("not_up") or {})
            extra["held"] = extra["held"] or bool(ret.get("held"))
        return rets, errors, extra

    def _failed(self, fun, errors):
        """The DeployError of ``fun`` failing on the LBs in ``errors`` (one LB: as it always read).  What
        the step took out goes back through the caller's put-back (:func:`.batches.put_back`)."""
        where = {lb["name"]: f"{lb['driver']} on {lb['minion']}" for lb in self.definitions}
        if len(self.definitions) == 1:
            ((name, text),) = errors.items()
            return DeployError(f"load balancer ({where[name]}): {fun} failed: {text}")
        detail = "; ".join(f"{name} ({where[name]}: {text})" for name, text in sorted(errors.items()))
        return DeployError(f"load balancer {fun} failed on {len(errors)} of {len(self.definitions)} LBs: {detail}")

    @staticmethod
    def _taken_out(rets):
        drains = [r.get("drain_seconds") or 0 for r in rets.values()]
        return {"prior": {name: ret.get("prior", {}) for name, ret in rets.items()},
                "drain_seconds": max(drains) if drains else 0.0}

    # --- the actions
    def status(self, nodes):
        """node -> its state: the one every LB gives, or ``"<lb>: <state>, ..."`` where they differ."""
        rets, errors, _ = self._each("status", nodes)
        if errors:
            raise self._failed("status", errors)
        return lbs.merge_states({name: ret.get("states", {}) for name, ret in rets.items()})

    def detach(self, nodes):
        """Take ``nodes`` out of every LB (drain up to each LB's ``drain_timeout``, then maint); DeployError
        if one LB fails (the others have them out: the caller puts them back on every LB)."""
        rets, errors, _ = self._each("detach", nodes)
        if errors:
            raise self._failed("detach", errors)
        return self._taken_out(rets)

    def attach(self, nodes, wait=True):
        """Put ``nodes`` back on every LB (their recorded state); with ``wait``, until UP everywhere
        (``lb_wait_seconds``: how long; ``not_up``: {node: each LB's last status} of those that are not)."""
        kwarg = {"wait_up": self.wait_up} if wait and self.wait_up > 0 else {}
        rets, errors, extra = self._each("attach", nodes, **kwarg)
        if errors:
            raise self._failed("attach", errors)
        return {"restored": self._restored(rets), "lb_wait_seconds": extra["wait_seconds"] if kwarg else None,
                "not_up": lbs.not_up_nodes(extra["not_up"])}

    def _restored(self, rets):
        """With one LB, {server: state} as ``deploy_lb.attach`` gives it; with several, per LB."""
        restored = {name: ret.get("restored", {}) for name, ret in rets.items()}
        return next(iter(restored.values()), {}) if len(self.definitions) == 1 else restored

    def swap(self, nodes, restore):
        """Put ``restore`` back, wait until UP on every LB, then take ``nodes`` out: one call to each LB
        minion when they are all one minion; else (every LB must see the restored servers UP before any
        takes the next batch out) an ``attach`` then a ``detach``.  ``not_up``: restored servers that did
        not come back; then nothing is taken out (``detached`` False): the caller fails them, then takes
        ``nodes`` out with :meth:`detach`."""
        if len(self.minions) > 1:
            back = self.attach(restore)
            if back["not_up"]:
                return {**back, "detached": False}
            return {**back, **self.detach(nodes), "detached": True}
        kwarg = {"restore": sorted(restore), **({"wait_up": self.wait_up} if self.wait_up > 0 else {})}
        rets, errors, extra = self._each("swap", nodes, **kwarg)
        if errors:
            raise self._failed("swap", errors)
        out = {"restored": self._restored(rets),
               "lb_wait_seconds": extra["wait_seconds"] if "wait_up" in kwarg else None,
               "not_up": lbs.not_up_nodes(extra["not_up"]), "detached": not extra["held"]}
        if out["detached"]:
            out.update(self._taken_out(rets))
        return out

    def stats(self, nodes):
        """{lb name: ``deploy_lb.stats`` of ``nodes`` on it}: each LB's own counters (the analysis sums them)."""
        rets, errors, _ = self._each("stats", nodes)
        if errors:
            raise self._failed("stats", errors)
        return rets
