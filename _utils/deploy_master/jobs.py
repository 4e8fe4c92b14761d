"""One Salt job to a list of minions, and its returns read from the master's event bus as they land.

Salt 3008's ``LocalClient.cmd`` gathers returns by polling the event bus without blocking; its TCP
transport then reads one 4 kB chunk per poll and the client sleeps 10 ms between polls, so returns
are read at about 300 kB/s (every return also echoes the job's arguments).  A 64 kB argument to 10
nodes took 6.5 s that way and 1.5 s read here with blocking reads (README, "Performance").
"""

import time


def publish(client, nodes, fun, kwarg, jid, timeout, arg=()):
    """Publish ``fun`` with ``arg`` and ``kwarg`` to the minions ``nodes`` (a list target) under ``jid``,
    listening on the event bus first.  Returns True if the master took the job for at least one of them.
    Raises ``SaltClientError`` when the master cannot be reached or does not answer in ``timeout`` s."""
    pub = client.run_job(nodes, fun, arg, kwarg=kwarg or {}, tgt_type="list", timeout=timeout, jid=jid, listen=True)
    return bool(pub and pub.get("jid"))


def gather(client, jid, nodes, timeout, quiet):
    """Returns of ``jid`` from ``nodes`` (node -> ``{"ret", "retcode"}``), read from the event bus until
    every node returned, or ``timeout`` s passed and no return landed for ``quiet`` s (while returns
    keep landing, the nodes are working through the job: keep reading).  Nodes without a return are
    absent: the caller asks them whether they still run the job."""
    tag = f"salt/job/{jid}/ret/"
    missing, found = set(nodes), {}
    deadline = time.monotonic() + timeout
    try:
        while missing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            event = client.event.get_event(wait=min(left, 1.0), tag=tag, match_type="startswith", full=True)
            data = (event or {}).get("data") or {}
            node = data.get("id")
            if node not in missing or "return" not in data:
                continue
            found[node] = {"ret": data["return"], "retcode": data.get("retcode", 0)}
            missing.discard(node)
            deadline = max(deadline, time.monotonic() + quiet)
    finally:
        client.event.unsubscribe(f"salt/job/{jid}")  # run_job subscribed: drop what it kept for this job
    return found


def run(client, nodes, fun, jid, timeout, quiet, arg=(), kwarg=None):
    """:func:`publish` then :func:`gather`: the returns that landed (``{}`` if the master matched none of
    ``nodes``).  Raises ``SaltClientError`` as :func:`publish` does."""
    if not publish(client, nodes, fun, kwarg, jid, timeout, arg=arg):
        return {}
    return gather(client, jid, nodes, timeout, quiet)
