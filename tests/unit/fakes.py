"""Stand-ins the unit tests of the rollout package share."""

from deploy_master.rollout import lb


def balancer(lb_call, conf=None):
    """The run's real :class:`lb.LoadBalancer` over ``lb_call(fun, servers, **kwarg)``, an LB in memory."""
    conf = conf or {"driver": "haproxy", "minion": "lb-1"}

    def call(nodes, fun, kwarg):
        kwarg = {k: v for k, v in kwarg.items() if k != "lb"}
        return {nodes[0]: {"ok": True, "ret": lb_call(fun.split(".", 1)[1], kwarg.pop("servers"), **kwarg)}}

    return lb.LoadBalancer(conf, call)
