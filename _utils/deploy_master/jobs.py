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

:class:`Transport` is the whole of a run's Salt transport: one batched call to a list of minions
(:func:`run`), then for the nodes that did not return, ``saltutil.find_job`` rounds, late returns
and the job cache, until each node has a return or a verdict.

On a master of masters (``order_masters``, docs/syndics.md) the nodes are minions of syndic masters.
Each syndic forwards its own master's ``salt/job/<jid>/new`` event, whose ``minions`` are the nodes
that syndic master took the job for, as ``syndic/<syndic id>/salt/job/<jid>/new``: :func:`gather`
reads them beside the returns, a node that no syndic took the job for is said to be behind a syndic
that does not answer (:func:`syndic_verdict`), and which syndic each node was last seen behind is
kept in the master's state folder (:func:`remember_syndics`) to name it.
"""

import logging
import os
import re
import time

import salt.utils.jid
from salt.exceptions import SaltClientError

from deploy_master import config, statedir

log = logging.getLogger(__name__)

# the master fires a return's event before it writes the return to the job cache: how long to look
# for a node's return in the cache after its event landed
CACHE_GRACE = 2.0


def publish(client, nodes, fun, kwarg, jid, timeout, arg=()):
    """Publish ``fun`` with ``arg`` and ``kwarg`` to the minions ``nodes`` (a list target) under ``jid``,
    listening on the event bus first.  Returns True if the master took the job for at least one of them.
    Raises ``SaltClientError`` when the master cannot be reached or does not answer in ``timeout`` s."""
    pub = client.run_job(nodes, fun, arg, kwarg=kwarg or {}, tgt_type="list", timeout=timeout, jid=jid, listen=True)
    return bool(pub and pub.get("jid"))


def gather(client, jid, nodes, timeout, quiet, landed=None, syndics=None):
    """Returns of ``jid`` from ``nodes`` (node -> ``{"ret", "retcode"}``), read from the event bus until
    every node returned, or ``timeout`` s passed and no return landed for ``quiet`` s (while returns
    keep landing, the nodes are working through the job: keep reading).  Nodes without a return are
    absent: the caller asks them whether they still run the job.  ``landed(found)``, when given, is
    told of each return as it lands (progress only: what counts is the job cache's copy).
    ``syndics`` (a dict, on a master of masters): filled with syndic id -> the nodes it took the job for."""
    tag = f"salt/job/{jid}/ret/"
    if syndics is not None:
        tag, match = f"(salt/job/{jid}/ret/|syndic/[^/]+/salt/job/{jid}/new$)", "regex"
    else:
        match = "startswith"
    missing, found = set(nodes), {}
    deadline = time.monotonic() + timeout
    try:
        while missing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            event = client.event.get_event(wait=min(left, 1.0), tag=tag, match_type=match, full=True)
            data = (event or {}).get("data") or {}
            if syndics is not None and _syndic_list(event, jid, syndics):
                continue
            node = data.get("id")
            if node not in missing or "return" not in data:
                continue
            found[node] = {"ret": data["return"], "retcode": data.get("retcode", 0)}
            missing.discard(node)
            if landed:
                landed(found)
            deadline = max(deadline, time.monotonic() + quiet)
    finally:
        client.event.unsubscribe(f"salt/job/{jid}")  # run_job subscribed: drop what it kept for this job
        if syndics is not None:
            client.event.unsubscribe(f"syndic/.*/{jid}", "regex")
    return found


SYNDIC_NEW = re.compile(r"syndic/(?P<syndic>[^/]+)/salt/job/(?P<jid>[0-9]+)/new")


def _syndic_list(event, jid, syndics):
    """True if ``event`` is a syndic's ``new`` event of ``jid``: its minions go to ``syndics[syndic id]``."""
    found = SYNDIC_NEW.fullmatch((event or {}).get("tag") or "")
    if not found or found["jid"] != str(jid):
        return False
    minions = ((event.get("data") or {}).get("minions")) or []
    syndics.setdefault(found["syndic"], set()).update(str(m) for m in minions if isinstance(m, str))
    return True


def known_syndics(opts):
    """The syndics that ever returned to this master of masters (Salt marks each in ``<cachedir>/syndics``)."""
    try:
        return set(os.listdir(os.path.join(opts["cachedir"], "syndics")))
    except OSError:
        return set()


def syndic_match(client, opts, target, tgt_type="compound", expect=(), wait=None):
    """On a master of masters: syndic id -> the minions its syndic master matches with ``target`` (as a master
    matches: its keys and its minions' cached grains; a minion that is down counts).  One ``test.true``
    job; the syndics' ``new`` events are read until every syndic in ``expect`` told, or ``wait`` s (default
    ``syndic_wait`` + 1) passed: a syndic master that matches no minion publishes nothing and tells nothing."""
    wait = float(opts.get("syndic_wait", 5)) + 1 if wait is None else wait
    jid = salt.utils.jid.gen_jid(opts)
    client.run_job(target, "test.true", tgt_type=tgt_type, timeout=wait, jid=jid, listen=True)
    lists = {}
    deadline = time.monotonic() + wait
    try:
        while not set(expect) <= set(lists) or not expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            event = client.event.get_event(wait=min(left, 1.0), tag=f"syndic/[^/]+/salt/job/{jid}/new$",
                                           match_type="regex", full=True)
            _syndic_list(event, jid, lists)
    finally:
        client.event.unsubscribe(f"salt/job/{jid}")
        client.event.unsubscribe(f"syndic/.*/{jid}", "regex")
    remember_syndics(opts, lists)
    return lists


def _members_path(opts):
    return os.path.join(statedir.folder(opts, "syndics"), "members.json")


def syndic_members(opts):
    """node -> the syndic it was last seen behind (:func:`remember_syndics`); {} when none is known."""
    data = statedir.read_json(_members_path(opts))
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember_syndics(opts, lists):
    """Keep which syndic each node of ``lists`` (syndic id -> nodes) is behind, for the errors of later runs;
    return what is known now (node -> syndic, as :func:`syndic_members`)."""
    members = syndic_members(opts)
    update = {node: syndic for syndic, nodes in lists.items() for node in nodes}
    if all(members.get(n) == s for n, s in update.items()):
        return members
    members.update(update)
    statedir.write_json(_members_path(opts), members)
    return members


def syndic_verdict(node, lists, members):
    """The error of ``node``, which did not return, on a master of masters: ``lists`` (syndic id -> nodes) say
    which syndic took the job for which node; ``members`` where each node was last seen."""
    for syndic, nodes in sorted(lists.items()):
        if node in nodes:
            return f"{NO_RESPONSE} (behind syndic {syndic})"
    last = members.get(node)
    if last:
        return (f"no response: syndic {last}, which it is behind, did not take the job (its syndic master or "
                "its salt-syndic is down)")
    return ("no response: no syndic took the job for it (the syndic master it signs in to, or its salt-syndic, "
            "is down, or it is no minion of a syndic master)")


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


def run(client, nodes, fun, jid, timeout, quiet, arg=(), kwarg=None, landed=None, syndics=None):
    """:func:`publish` then :func:`gather`, each return as the job cache holds it (:func:`authenticated`):
    the returns that landed (``{}`` if the master matched none of ``nodes``).  Raises
    ``SaltClientError`` as :func:`publish` does."""
    if not publish(client, nodes, fun, kwarg, jid, timeout, arg=arg):
        return {}
    return authenticated(client, jid, gather(client, jid, nodes, timeout, quiet, landed, syndics))


LATE_RETURN_GRACE = 5  # seconds to look for returns in the job cache after a node said it runs the job
NO_RESPONSE = "no response: minion down or not connected"


def first_error(data):
    """The first failed step of a node's return, in one line (or its ``error``)."""
    for step in data.get("steps", []):
        if not step.get("result"):
            for detail in step.get("details") or []:
                if not detail.get("result", detail.get("ok", True)):
                    return (f"{step['step']}: {detail.get('step') or detail.get('url')}: "
                            f"{detail.get('output') or detail.get('error')}")
            return f"{step['step']} failed"
    return data.get("error") or "failed"


def _outcome(got):
    """One node's return as the run sees it: ``{"ok", "ret", "error"}``."""
    data = got.get("ret") if isinstance(got, dict) else got
    retcode = got.get("retcode", 0) if isinstance(got, dict) else 0
    if not isinstance(data, dict):
        return {"ok": False, "error": str(data).replace("ERROR: ", "", 1)[:500]}
    ok = retcode == 0 and data.get("result", True) is not False
    out = {"ok": ok, "ret": data}
    if not ok:
        out["error"] = first_error(data)
    return out


class Transport:
    """The Salt transport of one run: ``client`` is a ``salt.client.LocalClient`` (its event bus and
    the master's job cache come with it), ``opts`` the master's options.  ``calls`` counts the Salt
    jobs published (the record's ``timings: salt_calls``)."""

    def __init__(self, opts, client):
        self.opts, self.client = opts, client
        self.timeout = config.timeout(opts)
        self.calls = 0

    def syndic_match(self, target, tgt_type="compound", expect=()):
        """:func:`syndic_match`: one job, counted with the run's."""
        self.calls += 1
        return syndic_match(self.client, self.opts, target, tgt_type=tgt_type, expect=expect)

    def call(self, nodes, fun, kwarg=None, timeout=None, landed=None):
        """One batched call of ``fun`` to ``nodes``: node -> ``{"ok", "ret", "error", "silent"}``.
        ``landed(outcomes)``: told of the returns so far (node -> its outcome) as each one lands."""
        nodes = sorted(nodes)
        if not nodes:
            return {}
        jid = salt.utils.jid.gen_jid(self.opts)
        self.calls += 1
        timeout = timeout or self.timeout
        syndics = {} if self.opts.get("order_masters") else None  # a master of masters: who took the job
        try:
            ret = run(self.client, nodes, fun, jid, timeout, config.find_job_interval(self.opts, len(nodes)),
                      kwarg=kwarg, landed=landed and (lambda found: landed({n: _outcome(g) for n, g in found.items()})),
                      syndics=syndics)
        except SaltClientError as exc:
            # a congested master (e.g. many nodes compiling their pillar at once) let Salt's client time
            # out publishing: the job may run all the same; ask the nodes, as for a slow one
            log.warning("deploy: %s on %d nodes: %s; asking the nodes whether they run it", fun, len(nodes), exc)
            ret = {}
        verdicts = {}
        if len(ret) < len(nodes):
            late, verdicts = self.stragglers(jid, [n for n in nodes if n not in ret])
            ret.update(late)
        if syndics is not None:
            members = remember_syndics(self.opts, syndics)
            verdicts = {n: syndic_verdict(n, syndics, members) if v == NO_RESPONSE else v for n, v in verdicts.items()}
        out = {}
        for node in nodes:
            got = ret.get(node)
            if got is None:
                out[node] = {"ok": False, "silent": True, "error": verdicts.get(node, NO_RESPONSE)}
            else:
                out[node] = _outcome(got)
        return out

    def stragglers(self, jid, missing):
        """The returns of the nodes that had not returned when :func:`jobs.gather` stopped reading
        (``deploy_timeout`` passed and no return landed for a ``find_job`` interval), and a verdict
        for each node still without one.

        Such a node is often a live node still running the job on a loaded master or minion (at 100
        nodes on two cores, every node took ~30 s to answer a ``find_job``).  Here a node is waited
        for as long as it says it runs the job (up to ``deploy_job_timeout``), and counts as gone
        only after ``deploy_silent_rounds`` more ``find_job`` rounds without an answer (or as many
        rounds in a row answering that it does not run the job).  A round waits
        :func:`config.find_job_interval`, each one twice as long as the one before, and an answer to
        an earlier round that lands in the job cache later still says the node lives.
        Returns that land meanwhile count."""
        missing = set(missing)
        found, verdicts = {}, {}
        silent = dict.fromkeys(missing, 0)  # rounds in a row without an answer
        denied = dict.fromkeys(missing, 0)  # rounds in a row answered "I do not run this job"
        rounds = config.silent_rounds(self.opts)
        limit = config.job_timeout(self.opts)
        deadline = time.monotonic() + limit
        wait = config.find_job_interval(self.opts, len(missing))
        asked = []  # the find_job jids of the rounds so far
        heard = set()  # (find_job jid, node): answers already counted
        running_seen = set()  # nodes that said at least once that they run the job
        while missing:
            # while returns keep landing the nodes are working through the job: wait for them
            # before asking (at 100 nodes each find_job round is one more job on every busy node)
            found.update(self.returns_while_landing(jid, missing, quiet=wait, deadline=deadline))
            if not missing:
                break
            if time.monotonic() > deadline:
                for node in missing:
                    verdicts[node] = (f"no return within deploy_job_timeout ({limit}s): " + (
                        "the minion still runs the job" if node in running_seen else
                        "the master did not take the question whether the minion runs the job"))
                break
            asked.append(salt.utils.jid.gen_jid(self.opts))
            running = self.find_job(jid, sorted(missing), fj_jid=asked[-1], timeout=wait)
            if running is None:  # the master did not take the question: no evidence against anyone
                time.sleep(1)
                continue
            heard.update((asked[-1], node) for node in running)
            for node, state in self.late_answers(asked[:-1], missing, heard).items():
                running.setdefault(node, state)
            found.update(self.cached_returns(jid, missing, grace=LATE_RETURN_GRACE if running else 0))
            for node in sorted(missing):
                state = running.get(node)
                if state is True:
                    silent[node] = denied[node] = 0
                    running_seen.add(node)
                    continue
                if state is False:
                    # it lives but runs no such job: maybe not yet (a minion that was frozen or swamped
                    # answers the question before the job it received first has started); after
                    # ``rounds`` such answers in a row, it never received the job or lost its return
                    silent[node], denied[node] = 0, denied[node] + 1
                    if denied[node] < rounds:
                        continue
                    verdicts[node] = ("no return: the minion answers but does not run this job (it never "
                                      "received it, or its return was lost)")
                else:
                    silent[node] += 1
                    if silent[node] < rounds:
                        continue
                    verdicts[node] = NO_RESPONSE
                missing.discard(node)
            if any(silent[node] for node in missing):
                wait = min(wait * 2, max(limit, 1))
            if any(state is True for state in running.values()):
                time.sleep(0.5)
        return found, verdicts

    def find_job(self, jid, nodes, fj_jid, timeout):
        """node -> True (runs ``jid``), False (answers, does not run it); nodes that did not answer are absent.

        ``fj_jid``: the round's own jid (its answers that land later are read from the job cache).
        None when the question could not be published (a congested master): no answer from anyone."""
        self.calls += 1
        try:
            ret = run(self.client, nodes, "saltutil.find_job", fj_jid, timeout, quiet=0, arg=[jid])
        except Exception:  # pylint: disable=broad-except
            log.debug("deploy: find_job %s failed", jid, exc_info=True)
            return None
        return {n: bool(r["ret"]) for n, r in ret.items() if isinstance(r["ret"], dict)}

    def returns_while_landing(self, jid, missing, quiet, deadline):
        """Returns of ``missing`` nodes from the job cache; while they land, look again until ``quiet`` s bring none."""
        found = got = self.cached_returns(jid, missing)
        while got and missing and time.monotonic() < deadline:
            got = self.cached_returns(jid, missing, grace=quiet)
            found.update(got)
        return found

    def late_answers(self, fj_jids, missing, heard):
        """node -> True/False from answers to earlier ``find_job`` rounds that landed after their round
        ended; each answer counts once (``heard``: the (round, node) answers already counted)."""
        late = {}
        for fj in fj_jids:
            try:
                cached = self.client.get_cache_returns(fj)
            except Exception:  # pylint: disable=broad-except
                continue
            for node in missing:
                got = (cached.get(node) or {}).get("ret")
                if isinstance(got, dict) and (fj, node) not in heard:
                    heard.add((fj, node))
                    late[node] = late.get(node, False) or bool(got)
        return late

    def cached_returns(self, jid, missing, grace=0):
        """Returns of ``missing`` nodes in the master's job cache (removed from ``missing``), looking
        for ``grace`` s."""
        found = {}
        deadline = time.monotonic() + grace
        while missing:
            try:
                cached = self.client.get_cache_returns(jid)
            except Exception:  # pylint: disable=broad-except
                cached = {}
            for node in list(missing):
                got = cached.get(node) or {}
                if got.get("ret") is not None:
                    found[node] = {"ret": got["ret"], "retcode": 0}
                    missing.discard(node)
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return found
