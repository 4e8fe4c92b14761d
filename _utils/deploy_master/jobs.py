"""One Salt job to a list of minions, and its returns read from the master's event bus as they land.

Salt 3008's ``LocalClient.cmd`` gathers returns by polling the event bus without blocking; its TCP
transport then reads one 4 kB chunk per poll and the client sleeps 10 ms between polls, so returns
are read at about 300 kB/s (every return also echoes the job's arguments).  A 64 kB argument to 10
nodes took 6.5 s that way and 1.5 s read here with blocking reads (bench/README.md).

An event only says that a return landed: a minion can fire an event whose tag and data name another
minion (``event.send`` with ``preload``, a batch of ``events``), and Salt's minion tag blacklist lets
it through.  What counts is what Salt's authenticated return path wrote to the master's job cache
(the master stores a return under the id the minion authenticated with): :func:`run` reads the
job cache once for the nodes whose event landed and keeps their return from there.
"""

import time

# the master fires a return's event before it writes the return to the job cache: how long to look
# for a node's return in the cache after its event landed
CACHE_GRACE = 2.0


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


def cache_check(opts):
    """Why the master's job cache cannot vouch for returns (None when it can): with ``job_cache: False``
    or an ``ext_job_cache``, Salt writes no return to ``master_job_cache``."""
    if not opts.get("job_cache", True) or opts.get("ext_job_cache"):
        return ("deploy reads each node's return from the master's job cache (the only record of what "
                "the node itself returned): set job_cache: True and no ext_job_cache on the master")
    return None


def cached(client, jid):
    """node -> ``{"ret", "retcode"}`` of ``jid`` in the master's job cache (``master_job_cache``'s
    ``get_jid``: the returns Salt's authenticated return path stored)."""
    data = client.returners[f"{client.opts['master_job_cache']}.get_jid"](jid) or {}
    return {node: {"ret": got.get("return"), "retcode": got.get("retcode", 0)}
            for node, got in data.items() if isinstance(got, dict) and "return" in got}


def authenticated(client, jid, found, grace=CACHE_GRACE):
    """``found`` (returns read from events) as the job cache holds them: each node's return and
    retcode from the cache; a node whose return is not in the cache within ``grace`` s is left out
    (its event was forged, or its return is late: the caller asks it as a node that did not answer)."""
    if not found:
        return {}
    deadline = time.monotonic() + grace
    while True:
        cache = cached(client, jid)
        if all(node in cache for node in found) or time.monotonic() >= deadline:
            return {node: cache[node] for node in found if node in cache}
        time.sleep(0.05)


def run(client, nodes, fun, jid, timeout, quiet, arg=(), kwarg=None):
    """:func:`publish` then :func:`gather`, each return as the job cache holds it (:func:`authenticated`):
    the returns that landed (``{}`` if the master matched none of ``nodes``).  Raises
    ``SaltClientError`` as :func:`publish` does."""
    if not publish(client, nodes, fun, kwarg, jid, timeout, arg=arg):
        return {}
    return authenticated(client, jid, gather(client, jid, nodes, timeout, quiet))
