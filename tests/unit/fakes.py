"""Stand-ins the unit tests of the rollout package share."""

from deploy_master.rollout import lb
from deploy_master.rollout import run as runs


def balancer(lb_call, conf=None):
    """The run's real :class:`lb.LoadBalancer` over ``lb_call(fun, servers, **kwarg)``, an LB in memory."""
    conf = conf or {"driver": "haproxy", "minion": "lb-1"}

    def call(nodes, fun, kwarg):
        kwarg = {k: v for k, v in kwarg.items() if k != "lb"}
        return {nodes[0]: {"ok": True, "ret": lb_call(fun.split(".", 1)[1], kwarg.pop("servers"), **kwarg)}}

    return lb.LoadBalancer(conf, call)


class Recorder:
    """What a run says (its lines in ``log``, its events in ``events``), for the fake runs of the unit tests."""

    stage = None
    node_event = runs.Run.node_event

    def emit(self, type_, message, line=True, notify_as=None, notify_fields=None, **fields):
        if line:
            self.__dict__.setdefault("log", []).append(message)
        self.__dict__.setdefault("events", []).append((type_, fields))

    def progress(self, message):
        self.emit("build", message)
