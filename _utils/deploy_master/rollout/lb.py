"""Every load-balancer action of a run, in one place: ``deploy_lb.<action>`` on the LB minion.

A run holds one :class:`LoadBalancer`; the steps call its actions and nothing else reaches the
load balancer.
"""

from deploy_master import DeployError


class LoadBalancer:
    """The env's load balancer (``conf``: its pillar, ``minion`` included), acted on through
    ``call(nodes, fun, kwarg)`` (the run's batched Salt call)."""

    def __init__(self, conf, call):
        self.conf, self._call = conf, call
        self.enabled = conf.get("driver", "none") != "none"

    def act(self, fun, nodes, **kwarg):
        """``deploy_lb.<fun>`` for the servers ``nodes``; DeployError when it fails."""
        minion = self.conf["minion"]
        lb = {k: v for k, v in self.conf.items() if k != "minion"}
        ret = self._call([minion], f"deploy_lb.{fun}", {"lb": lb, "servers": sorted(nodes), **kwarg})[minion]
        if not ret["ok"]:
            raise DeployError(f"load balancer ({self.conf['driver']} on {minion}): {fun} failed: {ret['error']}")
        return ret["ret"]

    def status(self, nodes):
        """node -> its state in the LB."""
        return self.act("status", nodes)["states"]

    def detach(self, nodes, wait):
        """Take ``nodes`` out (drain up to ``wait`` s, then maint)."""
        return self.act("detach", nodes, wait=wait)

    def swap(self, nodes, restore, wait):
        """Take ``nodes`` out and put ``restore`` back in their recorded state, in one call."""
        return self.act("swap", nodes, restore=sorted(restore), wait=wait)

    def attach(self, nodes):
        """Put ``nodes`` back in their recorded state."""
        return self.act("attach", nodes)

    def stats(self, nodes):
        """The LB's per-server counters of ``nodes`` (``{"servers": {...}, "time": ...}``)."""
        return self.act("stats", nodes)
