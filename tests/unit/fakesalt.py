"""One fake Salt for the unit tests of the rollout: it stands in for ``LocalClient`` (publish, the
job cache), the master's event bus (job returns, the run's events) and the minions it answers for:
nodes in memory running ``deploy.switch``, and an LB minion running ``deploy_lb.each`` for its LB.  A real
``rollout.run.Run`` is built on it (:func:`make_run`), so a test drives the rollout's own code, its
transport included, and asserts what Salt saw (``calls``) and what the run said (``events``)."""

import time

from deploy_master.rollout import run as runs

LB = {"driver": "haproxy", "minion": "lb-1", "backend": "rainbow", "drain_timeout": 1}


class FakeSalt:
    """``failing``: nodes whose switch fails (switched back); ``silent``: nodes that never return;
    ``recorded()``: the run's record of detached nodes, checked before every LB change."""

    def __init__(self, failing=(), silent=(), recorded=None, rates=None, nodes=None):
        self.failing, self.silent, self.recorded = set(failing), set(silent), recorded
        self.nodes = nodes  # fun, nodes, kwarg -> node -> {"ret", "retcode"}: a test's own deploy.* minions
        self.rates = dict(rates or {})  # node -> (responses, 5xx) its LB server answers between two stats
        self.counts = {n: [0, 0] for n in self.rates}
        self.stats_calls = []
        self.current = {}  # node -> release
        self.out = set()  # servers the LB has out of service
        self.calls, self.lb_calls, self.switches, self.fired, self.switch_calls = [], [], [], [], []
        self.cache, self.queue = {}, []
        self.opts = {"master_job_cache": "local_cache"}
        self.returners = {"local_cache.get_jid": lambda jid: {
            n: {"return": r["ret"], "retcode": r["retcode"]} for n, r in self.cache.get(jid, {}).items()}}
        self.event = self  # the bus LocalClient reads returns from
        self.after_switch = None  # called after each deploy.switch (a test's signal, say)
        self.lb_fails = set()  # deploy_lb functions that fail (changing nothing)
        self.after_stats = None  # called with the number of stats calls so far
        self.not_up = {}  # server -> its status: not UP again once put back (when the run waits)
        self.wait_seconds = 0.5  # how long a wait until UP takes

    # --- LocalClient
    def run_job(self, nodes, fun, arg=(), kwarg=None, tgt_type="list", timeout=None, jid=None, listen=True):
        self.calls.append((fun, sorted(nodes)))
        answers = self._answer(fun, list(nodes), kwarg or {}, list(arg))
        self.cache[jid] = answers
        self.queue = [{"tag": f"salt/job/{jid}/ret/{n}", "data": {"id": n, "return": r["ret"], "retcode": r["retcode"]}}
                      for n, r in answers.items()]
        return {"jid": jid, "minions": sorted(nodes)}

    def get_cache_returns(self, jid):
        return {n: {"ret": r["ret"]} for n, r in self.cache.get(jid, {}).items()}

    def destroy(self):
        pass

    # --- the event bus
    def get_event(self, wait=0, tag="", match_type=None, full=False):
        if self.queue:
            return self.queue.pop(0)
        time.sleep(min(wait, 0.05))
        return None

    def unsubscribe(self, tag):
        pass

    def fire_event(self, data, tag):
        self.fired.append((tag, data))

    # --- the minions
    def _answer(self, fun, nodes, kwarg, arg):
        if fun == "saltutil.find_job":
            return {}  # a node that never returned is down
        if fun == "deploy_lb.each":
            return {n: {"ret": self._each(n, kwarg), "retcode": 0} for n in nodes}
        if fun == "deploy.switch":
            self.switch_calls.append((sorted(nodes), kwarg.get("release"),
                                      {k: kwarg[k] for k in ("mark_left", "checks", "force") if k in kwarg}))
        if self.nodes:
            return self.nodes(fun, nodes, kwarg)
        assert fun == "deploy.switch", fun
        self.switches.append(sorted(nodes))
        out = {}
        for node in nodes:
            if node in self.silent:
                continue
            previous = self.current.get(node, "r1")
            if node in self.failing:
                out[node] = {"ret": {"result": False, "previous": previous, "current": previous, "reverted": True,
                                     "error": "checks failed"}, "retcode": 1}
                continue
            self.current[node] = kwarg["release"]
            out[node] = {"ret": {"result": True, "previous": previous, "current": kwarg["release"], "steps": [],
                                 "seconds": 0.1}, "retcode": 0}
        if self.after_switch:
            self.after_switch()
        return out

    def _each(self, minion, kwarg):
        """``deploy_lb.each`` on ``minion``: its LBs each answer (``lb_fails``: refused, changing nothing);
        with ``wait_up``, the servers put back are UP but those in ``not_up`` (then swap takes nothing out)."""
        action, answers, extra = kwarg["fun"], {}, {}
        restored = set(kwarg.get("restore") or []) if action == "swap" else set(kwarg["servers"])
        late = {s: st for s, st in self.not_up.items() if s in restored} if action in ("attach", "swap") else {}
        for lb in (lb for lb in kwarg["lbs"] if lb["minion"] == minion):
            if action in self.lb_fails:
                self.lb_calls.append((action, sorted(kwarg["servers"]), sorted(kwarg.get("restore") or [])))
                answers[lb["name"]] = {"ok": False, "error": f"{action} refused"}
            elif action == "swap" and late and "wait_up" in kwarg:  # held: only the restore
                ret = self._lb("attach", {"servers": sorted(restored)})
                answers[lb["name"]] = {"ok": True, "ret": ret}
                extra["held"] = True
            else:
                answers[lb["name"]] = {"ok": True, "ret": self._lb(action, kwarg)}
        if action in ("attach", "swap") and "wait_up" in kwarg:
            extra.update(wait_seconds=self.wait_seconds, not_up={lb["name"]: late for lb in kwarg["lbs"]} if late else {})
        return {"lbs": answers, **extra}

    def _lb(self, fun, kwarg):
        nodes, restore = list(kwarg["servers"]), list(kwarg.get("restore") or [])
        if fun == "stats":
            return self._stats(nodes)
        self.lb_calls.append((fun, sorted(nodes), sorted(restore)))
        recorded = set(self.recorded())
        if fun in ("detach", "swap"):
            assert set(nodes) <= recorded, "a node is taken out before the run records it"
        assert self.out <= recorded, "a node is out of the LB without the run's record"
        if fun == "status":
            return {"states": {n: "ready" for n in nodes}}
        if fun == "stats":
            return self._stats(nodes)
        if fun == "attach":
            self.out -= set(nodes)
            return {"restored": {n: "ready" for n in nodes}}
        self.out -= set(restore)
        self.out |= set(nodes)
        return {"prior": {n: "ready" for n in nodes}, "drain_seconds": 0.0, "restored": {n: "ready" for n in restore}}


    def _stats(self, nodes):
        """HAProxy's show-stat rows of ``nodes``: each one's counters grown by its ``rates``."""
        self.stats_calls.append(list(nodes))
        if self.after_stats:
            self.after_stats(len(self.stats_calls))
        out = {}
        for node in nodes:
            total, errors = self.rates[node]
            self.counts[node][0] += total
            self.counts[node][1] += errors
            done, failed = self.counts[node]
            out[node] = {"hrsp_2xx": done - failed, "hrsp_5xx": failed, "rtime": 10, "rtime_max": 30, "status": "UP"}
        return {"servers": out, "time": 1000.0 + len(self.stats_calls)}


def make_run(tmp_path, salt, envc=None, kind="release", lb=True, mode="normal", jid="20261202000000000000", **opts):
    """A real Run of rainbow/pro on ``salt``, its store on ``tmp_path``, holding the lock."""
    conf = {"repo": "/srv/git/rainbow.git", "root": "/srv/rainbow", "envs": {}, **({"lb": dict(LB)} if lb else {})}
    envc = {"target": "web-*", **(envc or {})}
    master = {"cachedir": str(tmp_path), "sock_dir": str(tmp_path), "gather_job_timeout": 1, "deploy_timeout": 1,
              "deploy_silent_rounds": 1, "deploy_find_job_per_node": 0, "deploy_job_timeout": 2, **opts}
    run = runs.Run(master, "rainbow", "pro", kind, mode, jid=jid, client=salt, event=salt,
                   definition=(conf, envc))
    run.lock = run.store.lock("rainbow", "pro", kind).acquire(run.jid)
    if salt.recorded is None:
        salt.recorded = run.lock.detached
    return run
