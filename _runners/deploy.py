"""
Release a project to a whole environment, and roll it back: the cluster side of the article.

``salt-run deploy.release project=rainbow env=pro`` runs the article's flow:

1. lock the project+env on the master;
2. build on the master from the project's source (git: a cached mirror, ``git describe``
   for the version), package once, sha256, publish on the master's fileserver;
3. plan: the env's nodes, its pre-production node, its stages and their batches;
4. prepare the release on every node in parallel (nothing switches yet): each node says which
   contents it lacks, one archive carries their union, each node builds the release from its
   content store and verifies its tree hash;
5. switch the pre-production node first, restart, test; stop on failure;
6. then each stage, batch by batch: take the batch out of the load balancer, switch,
   restart, test, put it back; stop once failures exceed ``max_failures``;
7. record: history, statistics, cleanup of old releases, and a summary.

This file holds the flow, the batch step and the Salt transport; everything done on a node
is a call to the ``deploy`` execution module (one batched Salt call per step and batch), and
load-balancer actions are calls to ``deploy_lb`` on the LB minion.  The pieces the flow uses
live in the plain package ``deploy_master`` (``_utils/deploy_master/``): names, config, plan,
the rollback policy, the source (git), the build, and the store (lock, history, the record
of the nodes).

The project definitions are read from the pillar compiled for the master's own id
(as ``state.orchestrate`` does); node secrets are never read here.

Master options (all optional):

``deploy_state_dir``
    locks and history (default ``<cachedir>/deploy``)
``deploy_artifacts_dir``
    where artifacts are written; must lie inside a ``file_roots`` directory of
    ``base`` (default ``<first base file_root>/deploy_artifacts``)
``deploy_keep_artifacts``
    artifacts kept per project (default 10)
``deploy_timeout``
    seconds to wait for a node's return before asking whether it still runs the job (default 15)
``deploy_silent_rounds``
    ``saltutil.find_job`` rounds a node may leave unanswered, after Salt's own, before it counts
    as gone (default 2; the first lasts ``gather_job_timeout``, each next one twice as long)
``deploy_find_job_per_node``
    the least time between two ``find_job`` rounds, per node asked (default 0.2 s: 20 s for 100
    nodes, never less than ``gather_job_timeout``)
``deploy_job_timeout``
    longest wait, in seconds, for a node that says it still runs the job (default 600)
"""

import logging
import os
import signal
import sys
import time

import salt.client
import salt.utils.event
import salt.utils.jid
import salt.utils.minions
import salt.version
from salt.exceptions import SaltClientError, SaltInvocationError

try:
    import deploy_master
except ImportError:  # a source checkout whose editable install predates _utils/: the package is beside us
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_utils"))
    import deploy_master
from deploy_master import (  # noqa: E402
    Aborted, DeployError, Locked, NotPaused, UnknownRef, analysis, build, config, contract, jobs, manifest, names,
    notify, pillar_schema,
    hooks as release_hooks,
    plan as planning, policy, store,
)

log = logging.getLogger(__name__)

__virtualname__ = "deploy"

LATE_RETURN_GRACE = 5  # seconds to look for returns in the job cache after a node said it runs the job
NO_RESPONSE = "no response: minion down or not connected"


def __virtual__():
    # no gitpython needed here: the git source imports it when a build needs it, so rollback,
    # history and unlock work without it
    return __virtualname__


def _config(project, env=None):
    """The project (and env) definition, validated, from the master's pillar."""
    return config.load(__opts__, project, env)


# --------------------------------------------------------------------------- a run

class _Run:
    """State of one release or rollback: config, plan, client, progress, results."""

    def __init__(self, project, env, kind, mode="normal"):
        self.project, self.env, self.kind, self.mode = project, env, kind, mode
        self.conf, self.envc = _config(project, env)
        if jobs.cache_check(__opts__):
            raise SaltInvocationError(jobs.cache_check(__opts__))
        self.hooks = notify.hooks(self.conf, project)  # the run posts its own notifications
        self.lb = config.load_balancer(self.conf, self.envc)  # an env may have its own
        self.has_lb = self.lb.get("driver", "none") != "none"
        self.max_failures = int(self.envc.get("max_failures", 0))
        self.timeout = config.timeout(__opts__)
        self.started = time.monotonic()
        self.started_at = names.now()
        self.store = store.get(__opts__, log)
        self.client = salt.client.LocalClient(mopts=__opts__)
        self.event = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
        self.nodes = {}  # node -> {old, new, result, out_of_lb, error}
        self.timings = {}
        self.failed = []
        self.silent = set()  # nodes that never answered a switch
        self.refused = {}  # node -> its inventory: refused a switch, its state differs from the record
        self.refused_target = {}  # node -> why: same state as the record, but refused the record's target
        self.inventories = {}  # node -> latest inventory it reported in this run (None: unknown)
        self.lock = None
        self.release = None
        self.build = {}
        self.aborted = None  # the signal's name once SIGTERM/SIGINT arrived
        self.on_failure = config.on_failure(self.envc, env) if self.envc is not None else "stop"
        self.run_id = globals().get("__jid__") or salt.utils.jid.gen_jid(__opts__)  # names a paused run
        self.extra = {}  # what the summary and a paused run's state carry (ref, commit, version)
        self.outcome = None  # "aborted" for deploy.abort
        self.salt_calls = 0  # Salt jobs this run published (the record's timings: salt_calls)

    def check_abort(self, where):
        """Stop here (no new step or batch) if a signal asked the run to stop."""
        if self.aborted:
            raise Aborted(f"aborted by {self.aborted} {where}: no new batch was started; nodes not reached stay "
                          "on their release, every detached node is back in its prior LB state")

    def close(self):
        self.event.destroy()
        self.client.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- output
    def progress(self, message, **data):
        line = f"[{time.monotonic() - self.started:6.1f}s] {self.project}/{self.env}: {message}"
        log.info("deploy: %s", line)
        if _progress_to_stderr():
            print(line, file=sys.stderr, flush=True)
        else:
            try:
                __jid_event__.fire_event({"message": line, "outputter": "deploy_progress"}, "progress")
            except (NameError, ReferenceError):
                pass
        if data:
            self.fire("node" if "node" in data else "step", message=message, **data)

    def fire(self, what, **data):
        user, _ = names.caller()
        data.update({"project": self.project, "env": self.env, "kind": self.kind, "mode": self.mode, "user": user,
                     "by": names.by()})
        if self.release:
            data.setdefault("release", self.release)
        tag = f"deploy/{self.project}/{self.env}/{what}"
        self.event.fire_event(data, tag)
        if what in notify.EVENTS and self.hooks:
            # from the run itself, never from an event on the bus (a minion can fire any deploy/... event)
            try:
                notify.send(self.hooks, tag, data, log)
            except Exception:  # pylint: disable=broad-except  # a notification never stops a run
                log.warning("deploy: notification %s failed", tag, exc_info=True)

    # --- salt calls: one batched call to a list of minions
    def call(self, nodes, fun, kwarg=None, timeout=None):
        nodes = sorted(nodes)
        if not nodes:
            return {}
        jid = salt.utils.jid.gen_jid(__opts__)
        self.salt_calls += 1
        timeout = timeout or self.timeout
        try:
            ret = jobs.run(self.client, nodes, fun, jid, timeout, config.find_job_interval(__opts__, len(nodes)),
                           kwarg=kwarg)
        except SaltClientError as exc:
            # a congested master (e.g. many nodes compiling their pillar at once) let Salt's client time
            # out publishing: the job may run all the same; ask the nodes, as for a slow one
            log.warning("deploy: %s on %d nodes: %s; asking the nodes whether they run it", fun, len(nodes), exc)
            ret = {}
        verdicts = {}
        if len(ret) < len(nodes):
            late, verdicts = self.stragglers(jid, [n for n in nodes if n not in ret])
            ret.update(late)
        out = {}
        for node in nodes:
            got = ret.get(node)
            if got is None:
                out[node] = {"ok": False, "silent": True, "error": verdicts.get(node, NO_RESPONSE)}
                continue
            data = got.get("ret") if isinstance(got, dict) else got
            retcode = got.get("retcode", 0) if isinstance(got, dict) else 0
            if isinstance(data, dict):
                ok = retcode == 0 and data.get("result", True) is not False
                out[node] = {"ok": ok, "ret": data}
                if not ok:
                    out[node]["error"] = _first_error(data)
            else:
                out[node] = {"ok": False, "error": str(data).replace("ERROR: ", "", 1)[:500]}
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
        :func:`config.find_job_interval`, each one twice as long as the one before, and an answer to an earlier round that lands in
        the job cache later still says the node lives.  Returns that land meanwhile count."""
        missing = set(missing)
        found, verdicts = {}, {}
        silent = dict.fromkeys(missing, 0)  # rounds in a row without an answer
        denied = dict.fromkeys(missing, 0)  # rounds in a row answered "I do not run this job"
        rounds = config.silent_rounds(__opts__)
        limit = config.job_timeout(__opts__)
        deadline = time.monotonic() + limit
        wait = config.find_job_interval(__opts__, len(missing))
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
            asked.append(salt.utils.jid.gen_jid(__opts__))
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
        self.salt_calls += 1
        try:
            ret = jobs.run(self.client, nodes, "saltutil.find_job", fj_jid, timeout, quiet=0, arg=[jid])
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
        """Returns of ``missing`` nodes in the master's job cache (removed from ``missing``), looking for ``grace`` s."""
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

    def lb_call(self, fun, nodes, **kwarg):
        minion = self.lb["minion"]
        lb = {k: v for k, v in self.lb.items() if k != "minion"}
        ret = self.call([minion], f"deploy_lb.{fun}", {"lb": lb, "servers": sorted(nodes), **kwarg})[minion]
        if not ret["ok"]:
            raise DeployError(f"load balancer ({self.lb['driver']} on {minion}): {fun} failed: {ret['error']}")
        return ret["ret"]


def _failed(ret, code=contract.FAILED):
    """Mark a runner return as failed: salt-run exits with ``retcode`` (as state.orchestrate does);
    the codes are in ``deploy_master.contract``."""
    __context__["retcode"] = code
    ret["retcode"] = code
    return ret


def _refused(exc):
    """A refusal before anything changed: bad input (2) or locked (3); anything else failed (1)."""
    if isinstance(exc, (SaltInvocationError, NotPaused, UnknownRef)):
        code = contract.BAD_INPUT
    elif isinstance(exc, Locked):
        code = contract.LOCKED
    else:
        code = contract.FAILED
    return _failed({"result": "refused", "error": str(exc)}, code)


def _acting(kwargs):
    """Name whom this runner call acts for (Salt's user of the call; ``by=``, a CI's own job identity,
    taken out of ``kwargs``): every record, event and notification of the run carries both."""
    names.acting(globals().get("__user__"), kwargs.pop("by", None))


def _progress_to_stderr():
    """With an outputter chosen (``--out=json``, ``yaml``...), stdout is the return alone: progress
    lines go to stderr.  Otherwise they are progress events, which salt-run prints as they come."""
    return (__opts__.get("output") or "deploy_progress") != "deploy_progress"


def _first_error(data):
    for step in data.get("steps", []):
        if not step.get("result"):
            details = step.get("details") or []
            for detail in details:
                if not detail.get("result", detail.get("ok", True)):
                    return f"{step['step']}: {detail.get('step') or detail.get('url')}: {detail.get('output') or detail.get('error')}"
            return f"{step['step']} failed"
    return data.get("error") or "failed"


def _node_call(run, nodes, fun, kwarg):
    """A batched deploy.* call; what the nodes report of themselves goes into the master's record."""
    out = run.call(nodes, fun, kwarg)
    reported = {n: store.reported_inventory(fun, res) for n, res in out.items()}
    reported = {n: inv for n, inv in reported.items() if inv is not False}
    run.inventories.update(reported)
    run.store.record_update(run.project, run.env, reported, lock=run.lock)
    return out


# --------------------------------------------------------------------------- build


def _build(run, ref, test=False, branch=False):
    """Step 1-4 of the article: latest code, build, package, place it on the fileserver."""
    started = time.monotonic()
    info = build.build(__opts__, run.project, run.env, run.conf, ref, run.progress, test=test, branch=branch,
                       resolved=getattr(run, "resolved", None))
    run.release = info["release"]
    if test:
        return info
    run.timings["build"] = round(time.monotonic() - started, 3)
    run.progress(
        f"build: {run.release} ({info['commit'][:10]}, {'reused' if info['reused'] else 'built'} "
        f"{info['bytes']} bytes) in {run.timings['build']}s"
    )
    return info


# --------------------------------------------------------------------------- plan


def _plan(run):
    """The env's nodes: preprod first, then stages of batches."""
    ckminions = salt.utils.minions.CkMinions(__opts__)

    def match(target):
        return set(ckminions.check_minions(target, "compound")["minions"])

    return planning.make(run.env, run.envc, match, ckminions.connected_ids)


def _describe_plan(run, plan):
    return planning.describe(plan, run.lb) + release_hooks.plan_lines(run, plan)


# --------------------------------------------------------------------------- steps


def _fail(run, nodes, errors):
    for node in nodes:
        run.nodes.setdefault(node, {})
        run.nodes[node].update({"result": "failed", "error": errors[node]})
        if node not in run.failed:
            run.failed.append(node)
        run.progress(f"{node}: FAILED: {errors[node]}", node=node, result=False, error=errors[node])


def _check_lb(run, plan):
    if not run.has_lb:
        return {}
    nodes = planning.behind_lb(plan)
    status = run.lb_call("status", nodes)
    run.progress(f"load balancer: {run.lb['driver']} on {run.lb['minion']} answers for {len(nodes)} nodes")
    return status["states"]


def _distribute(run, nodes, info):
    """What travels: ONE archive for every node, the artifact itself when a node lacks everything
    (or every node has the release), else a part with the contents some node lacks.

    A node the master's record shows without any release of the project lacks everything: the
    artifact, nobody is asked (a first release).  Otherwise one call asks every node which contents
    it lacks; the node reads the release's manifest from the fileserver, so neither the question
    nor the answer grows with the files.  Returns (the archive's ``{source, checksum}``, the nodes
    to prepare, errors)."""
    started = time.monotonic()
    doc = build.manifest_of(__opts__, run.project, run.release)
    sizes = manifest.blob_sizes(doc)
    record = run.store.record_read(run.project, run.env)
    new = [n for n in nodes if not (isinstance(record.get(n), dict) and record[n].get("releases"))]
    if new:  # unasked, every node is one to prepare (an empty answer: not prepared)
        errors, answers, lacking, whole = {}, {n: {} for n in nodes}, set(sizes), True
        why = f"{len(new)} nodes hold no release of {run.project} (the master's record)"
    else:
        ret = run.call(nodes, "deploy.lacking", {"project": run.project, "release": run.release,
                                                 "tree": info["tree"], "manifest": info["manifest"]})
        errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
        answers = {n: r["ret"] for n, r in ret.items() if r["ok"]}
        lacking, whole = manifest.plan_transfer(answers, sizes)
        why = f"lacking {len(lacking)}/{len(sizes)} contents"
    fresh = [n for n, a in answers.items() if not a.get("prepared")]
    if whole:
        what = {"source": info["source"], "checksum": info["checksum"], "bytes": info["bytes"]}
        run.progress(f"distribute: {len(fresh)} nodes to prepare, {why}: the whole artifact ({info['bytes']} bytes)")
    else:
        what = build.part(__opts__, run.project, info, lacking)
        run.progress(f"distribute: {len(fresh)} nodes to prepare, {why} ({sum(sizes[s] for s in lacking)} bytes): "
                     f"a part of {what['bytes']} bytes ({100 * what['bytes'] / max(info['bytes'], 1):.2f}% of the artifact)")
    run.timings["distribute"] = {"seconds": round(time.monotonic() - started, 3), "contents": len(sizes),
                                 "lacking": len(lacking), "bytes": what["bytes"], "artifact_bytes": info["bytes"],
                                 "asked": not new}
    return what, [n for n in nodes if n in answers], errors


def _prepare_everywhere(run, plan, build):
    started = time.monotonic()
    archive, nodes, errors = _distribute(run, plan["nodes"], build)
    kwarg = {
        "project": run.project, "release": run.release, "source": archive["source"], "checksum": archive["checksum"],
        "tree": build["tree"],
        "meta": {k: build[k] for k in ("version", "branch", "commit", "committer", "time")}, "inventory": True,
    }
    try:
        ret = _node_call(run, nodes, "deploy.prepare", kwarg)
    finally:
        if archive.get("path"):  # a part serves this run only
            os.unlink(archive["path"])
    errors.update({n: r["error"] for n, r in ret.items() if not r["ok"]})
    ret.update({n: {"ok": False, "error": e} for n, e in errors.items()})
    _fail(run, errors, errors)
    run.timings["prepare"] = round(time.monotonic() - started, 3)
    fresh = sum(1 for r in ret.values() if r["ok"] and r["ret"].get("changed"))
    run.progress(
        f"prepare: {len(ret) - len(errors)}/{len(ret)} nodes ready ({fresh} unpacked) in {run.timings['prepare']}s",
        step="prepare", ok=len(ret) - len(errors), failed=sorted(errors),
    )
    if len(run.failed) > run.max_failures:
        raise DeployError(
            f"prepare failed on {', '.join(sorted(errors))}: nothing was switched"
        )
    return [n for n in plan["nodes"] if n not in errors]


def _switch(run, nodes, release, mark_left=None, checks="gate", expect=None, force=False):
    """One batched deploy.switch; returns the nodes that passed.

    With ``expect`` (node -> fingerprint, or what :func:`_fingerprints` gives), a node in another
    state refuses: it lands in ``run.refused`` with its inventory, unchanged, and is not counted
    as failed.  A node in the recorded state that refuses the target itself (marked bad, missing,
    incomplete, or not what the record says) lands in ``run.refused_target`` and fails.
    ``force``: the nodes switch even to a release they marked bad (the node records it).
    """
    kwarg = {"project": run.project, "release": release, "checks": checks, "inventory": True}
    if mark_left:
        kwarg["mark_left"] = mark_left
    if force:
        kwarg["force"] = True
    if expect:
        kwarg["expect"] = {n: expect[n] for n in nodes}
    kwarg.update(release_hooks.switch_kwarg(run, mark_left))
    ret = _node_call(run, nodes, "deploy.switch", kwarg)
    passed = []
    for node, res in ret.items():
        out = res.get("ret") or {}
        if res.get("silent"):
            run.silent.add(node)
        if out.get("refused") and out.get("why") == "target":
            run.refused_target[node] = res["error"]
            _fail(run, [node], {node: res["error"]})
            run.nodes[node].update({"result": "refused", "old": out.get("current")})  # failed, changing nothing
            continue
        if out.get("refused") and isinstance(out.get("inventory"), dict):
            run.refused[node] = out["inventory"]
            run.nodes.setdefault(node, {}).update({"result": "refused", "old": out.get("current")})
            run.progress(f"{node}: {res['error']}", node=node, result=None)
            continue
        entry = run.nodes.setdefault(node, {})
        entry.setdefault("old", out.get("previous"))
        entry["new"] = out.get("current") if out else "unknown (no return)"
        entry["seconds"] = out.get("seconds")
        if out.get("forced"):
            entry["forced"] = True  # switched to a release it had marked bad (force)
        if res["ok"]:
            entry["result"] = "ok"
            passed.append(node)
            steps = ", ".join(f"{s['step']} {s['seconds']}s" for s in out.get("steps", []))
            run.progress(f"{node}: {out.get('previous')} -> {release}: {steps}", node=node, result=True)
        else:
            _fail(run, [node], {node: res["error"] + (" (switched back)" if out.get("reverted") else "")})
    return passed


def _preprod(run, plan, release, **switch_args):
    node = plan["preprod"]
    run.check_abort("before the pre-production node")
    if not node:
        return
    if node in run.failed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; nothing was switched")
    if run.lock:
        run.lock.check()
    started = time.monotonic()
    run.progress(f"preprod {node}: switching to {release}")
    passed = _switch(run, [node], release, **switch_args)
    run.timings["preprod"] = round(time.monotonic() - started, 3)
    if not passed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; stopped before any web node")
    run.fire("stage", stage="preprod", nodes=[node], seconds=run.timings["preprod"])


def _batch(run, stage, index, nodes, release, held=None, keep=False, **switch_args):
    """One batch behind the LB: detach (drain, maint), switch, restore each server's recorded state.

    ``held`` (a list) carries the previous batch of the stage, still out of the LB: the call that
    takes this batch out puts that one back (``deploy_lb.swap``), so a batch costs two sequential
    Salt calls, not three.  With ``keep``, this batch is left out and appended to ``held`` for the
    next batch (or :func:`_put_back`); without, it is put back here (the stage's last batch, or a
    step between batches that needs it in service).  Before any LB call changes
    anything, the run's record of detached nodes (``run.lock.set_detached``) holds every server it
    takes out, so an interrupted run is repaired by ``deploy.unlock``."""
    started = time.monotonic()
    label = f"stage {stage['name']} batch {index}/{len(stage['batches'])}"
    back = [held.pop() for _ in range(len(held))] if held and run.has_lb else []
    detached_at = None
    done = False
    try:
        if run.has_lb:
            run.lock.set_detached(set(run.lock.detached()) | set(nodes))
            detached_at = time.monotonic()
            wait = float(run.lb.get("drain_timeout", 30))
            if back:
                out = run.lb_call("swap", nodes, restore=sorted(n for b in back for n in b["nodes"]), wait=wait)
                _back_in(run, back)
                back = []
            else:
                out = run.lb_call("detach", nodes, wait=wait)
            run.timings.setdefault("drain", []).append(out.get("drain_seconds"))
            run.progress(f"{label}: {', '.join(nodes)} out of the LB (drained in {out.get('drain_seconds')}s)")
        passed = _switch(run, nodes, release, **switch_args)
        done = True
    finally:
        if detached_at is not None:
            # a node that never answered may be half-restarted: it stays out, and the summary says so
            back.append({"label": label, "since": detached_at, "nodes": [n for n in nodes if n not in run.silent],
                         "left": sorted(n for n in nodes if n in run.silent)})
        if back and (not done or not keep or held is None):
            _put_back(run, back)
        elif back:
            held.extend(back)
    seconds = round(time.monotonic() - started, 3)
    run.timings.setdefault("batches", []).append({"stage": stage["name"], "batch": index, "nodes": nodes, "seconds": seconds})
    run.fire("batch", stage=stage["name"], batch=index, nodes=nodes, passed=passed, seconds=seconds)
    return passed


class _Paused(Exception):  # pylint: disable=too-few-public-methods
    """A stage's ``pause: true``: the run stops here, keeping the lock, until deploy.promote / deploy.abort."""

    def __init__(self, state):
        super().__init__(f"paused after stage {state['stage']}")
        self.state = state


class _AbortRequested(DeployError):
    """deploy.abort asked a run that waits in-process (``pause: N``) to stop and revert."""


def _put_back(run, held):
    """Restore the recorded LB state of the batches in ``held`` (one call), and say so."""
    nodes = sorted(n for b in held for n in b["nodes"])
    if nodes:
        run.lb_call("attach", nodes)
    _back_in(run, held)


def _back_in(run, held):
    """Bookkeeping once the batches in ``held`` are back in the LB: the run's record, time out, progress."""
    nodes = {n for b in held for n in b["nodes"]}
    run.lock.set_detached(set(run.lock.detached()) - nodes)
    now = time.monotonic()
    for batch in held:
        out_for = round(now - batch["since"], 3)
        for node in batch["nodes"]:
            run.nodes.setdefault(node, {})["out_of_lb"] = out_for
        if batch["nodes"]:
            run.progress(f"{batch['label']}: {', '.join(batch['nodes'])} back in the LB after {out_for}s")
        for node in batch["left"]:
            run.progress(f"{batch['label']}: {node} left out of the LB: it did not answer; check it, then "
                         f"salt-run deploy.unlock project={run.project} env={run.env}")
    held.clear()


def _analysis_settings(run, stage):
    """The analysis settings after ``stage`` (None: no analysis): releases behind an LB only (a
    rollback goes back to known code as fast as it can)."""
    if run.kind != "release" or not run.has_lb:
        return None
    return analysis.stage_settings(run.envc, stage["name"], f"env {run.env!r}")


def _analysis_per_batch(run, stage):
    """True if the stage's analysis runs after each batch: the batch must then be back in the LB at once."""
    settings = _analysis_settings(run, stage)
    return bool(settings) and settings["after"] == "batch"


def _stages(run, plan, release, start=0, **switch_args):
    """The stages from ``start`` on, batch by batch; a release's stage ends with its gates."""
    for number, stage in enumerate(plan["stages"]):
        if number < start:
            continue
        held = []  # the stage's previous batch, still out of the LB: put back by the next batch's LB call
        per_batch = _analysis_per_batch(run, stage)
        try:
            for index, batch in enumerate(stage["batches"], 1):
                nodes = [n for n in batch if n not in run.failed]
                run.check_abort(f"before stage {stage['name']} batch {index}")
                if nodes:
                    if run.lock:
                        run.lock.check()  # a shared store's lease lost: stop before the next batch
                    last = index == len(stage["batches"])
                    _batch(run, stage, index, nodes, release, held=held, keep=not (last or per_batch), **switch_args)
                if len(run.failed) > run.max_failures:
                    raise DeployError(
                        f"{len(run.failed)} node(s) failed ({', '.join(run.failed)}), more than max_failures="
                        f"{run.max_failures}: stopped; nodes not reached stay on their release"
                    )
                _analysis(run, plan, stage, batch=index)
        finally:
            if held:
                _put_back(run, held)
        run.fire("stage", stage=stage["name"])
        run.progress(f"stage {stage['name']} done")
        if getattr(run, "kind", None) == "release":  # a rollback has no gates
            _gates(run, plan, number)


def _analysis(run, plan, stage, switched_nodes=None, batch=None):
    """Analysis of live traffic (pillar ``analysis``, see ``deploy_master.analysis``): after a stage
    (or each batch with ``after: batch``), watch the LB's per-server counters for ``bake`` seconds,
    the servers now on the release against those still on the old one; DeployError if worse than
    the limits.  Releases only (a rollback goes back to known code as fast as it can).
    ``switched_nodes``: the nodes on the release (default: those this run switched)."""
    settings = _analysis_settings(run, stage)
    if not settings or (settings["after"] == "batch") != (batch is not None):
        return
    behind = planning.behind_lb(plan)
    switched = _switched(run) if switched_nodes is None else switched_nodes
    new = sorted(set(switched) & set(behind))  # the preprod node is not behind the LB
    if not new:
        return
    old = sorted(set(behind) - set(new))
    label = f"stage {stage['name']}" + (f" batch {batch}/{len(stage['batches'])}" if batch else "")
    run.progress(f"{label}: analysis: watching live traffic on the LB for {settings['bake']:g}s "
                 f"({', '.join(new)} on the release" + (f" against {', '.join(old)})" if old else ")"))
    started = time.monotonic()
    deadline = started + settings["bake"]
    taken = [run.lb_call("stats", new + old)]
    next_sample = started + settings["interval"]
    while time.monotonic() < deadline:
        run.check_abort(f"during the analysis of {label}")
        if time.monotonic() >= next_sample:
            if run.lock:
                run.lock.check()
            taken.append(run.lb_call("stats", new + old))
            next_sample += settings["interval"]
        time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
    taken.append(run.lb_call("stats", new + old))
    result = analysis.decide(settings, [t["servers"] for t in taken], new, old)
    entry = {"stage": stage["name"], "batch": batch, "seconds": round(time.monotonic() - started, 3),
             "samples": len(taken), "window": [taken[0].get("time"), taken[-1].get("time")], "settings": settings,
             **result}
    run.timings.setdefault("analysis", []).append(entry)
    run.fire("analysis", **entry)
    run.progress(f"{label}: analysis: {analysis.describe(result)}")
    for note in result["notes"]:
        run.progress(f"{label}: analysis: {note}")
    if not result["passed"]:
        raise DeployError(f"analysis of {label} failed: {'; '.join(result['reasons'])}")
    if result["verdict"] == "inconclusive" and run.lock:
        run.lock.warnings.append(f"analysis of {label} passed without evidence (inconclusive: pass): "
                                 f"{'; '.join(result['reasons'])}")


def _gates(run, plan, number):
    """What a release's stage must pass before the next one starts, in order:

    1. the analysis of live traffic on the load balancer (raises DeployError);
    2. the pause: ``pause: true`` stops the run here (exit 5) until ``deploy.promote`` /
       ``deploy.abort``; ``pause: N`` waits N seconds holding the lock.

    A DeployError raised here fails the stage like a failed batch: the env's ``on_failure`` applies.
    """
    _analysis(run, plan, plan["stages"][number])
    _pause(run, plan, number)


def _switched(run):
    """node -> the release it had, for every node this run switched to its release (and left there)."""
    return {
        node: entry["old"] for node, entry in run.nodes.items()
        if entry.get("result") == "ok" and entry.get("old") and entry.get("new") == run.release
        and entry["old"] != run.release
    }


def _paused_state(run, plan, number):
    return {
        "run": run.run_id, "release": run.release, "stage": plan["stages"][number]["name"], "next": number + 1,
        "plan": {k: plan[k] for k in ("nodes", "preprod", "stages")}, "nodes": run.nodes, "failed": run.failed,
        "switched": _switched(run), "timings": run.timings, "started": run.started_at, "extra": run.extra,
        "build": {k: run.build.get(k) for k in ("source", "checksum", "commit", "version", "branch")},
    }


def _pause(run, plan, number):
    stage = plan["stages"][number]
    gate = stage.get("pause")
    if gate is None:
        return
    if number + 1 >= len(plan["stages"]):
        run.progress(f"stage {stage['name']}: pause ignored: it is the last stage")
        return
    run.check_abort(f"before the pause after stage {stage['name']}")
    following = plan["stages"][number + 1]["name"]
    if gate is True:
        raise _Paused(_paused_state(run, plan, number))
    run.fire("pause", run=run.run_id, stage=stage["name"], seconds=gate, switched=_switched(run))
    run.progress(f"stage {stage['name']}: pause {gate}s before stage {following} (deploy.promote goes on now, "
                 "deploy.abort reverts)")
    run.lock.update(waiting={"run": run.run_id, "stage": stage["name"], "seconds": gate, "since": names.now()})
    deadline = time.monotonic() + gate
    try:
        while time.monotonic() < deadline:
            run.check_abort(f"during the pause after stage {stage['name']}")
            run.lock.check()
            req = run.lock.requested()
            if req and req.get("action") == "promote":
                run.progress(f"promoted by {req.get('by')}: stage {following} starts now")
                break
            if req and req.get("action") == "abort":
                run.outcome = "aborted"
                raise _AbortRequested(f"aborted by deploy.abort ({req.get('by')}) during the pause after stage "
                                      f"{stage['name']}")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        try:
            run.lock.update(waiting=None)
        except DeployError as exc:  # a lost lock: the error that stopped the wait says more
            log.warning("deploy: could not clear the wait from the lock: %s", exc)


def _revert(run, plan, why):
    """Every node switched in this run back to the release it had, through the LB, batch by batch in
    the plan's order (the pre-production node first), like a normal rollback of those nodes: the
    release left is marked bad there, checks are reported.  Returns what it did, for the summary."""
    switched = {n: prev for n, prev in _switched(run).items() if n not in run.silent}
    if not switched:
        return None
    forward = (run.nodes, run.failed)
    run.nodes, run.failed = {}, []
    targets = sorted(set(switched.values()))
    run.fire("rollback", nodes=switched, to=targets[0] if len(targets) == 1 else targets, reason=why)
    run.progress(f"rollback of this run ({why}): {', '.join(sorted(switched))} back to {', '.join(targets)}")
    error = None
    try:
        if plan.get("preprod") in switched:
            _switch(run, [plan["preprod"]], switched[plan["preprod"]], mark_left="bad", checks="report", force=True)
        for stage in plan["stages"]:
            for index, batch in enumerate(stage["batches"], 1):
                nodes = [n for n in batch if n in switched]
                for prev in sorted({switched[n] for n in nodes}):  # one release before, normally: one call
                    if run.lock:
                        run.lock.check()
                    _batch(run, stage, index, [n for n in nodes if switched[n] == prev], prev, mark_left="bad",
                           checks="report", force=True)  # back to what each node reported it served
    except DeployError as exc:
        error = str(exc)
    finally:
        back, failed = run.nodes, run.failed
        run.nodes, run.failed = forward
    for node, entry in back.items():
        run.nodes.setdefault(node, {})["rolled_back"] = {k: entry.get(k) for k in ("new", "result", "error") if entry.get(k)}
    done = {"result": "failure" if error or failed else "success", "to": switched, "failed": failed,
            "nodes": back, "reason": why}
    if error:
        done["error"] = error
    user, host = names.caller()
    try:
        run.store.history_append(run.project, {
            "kind": "rollback", "mode": "abort" if run.outcome == "aborted" else "auto", "env": run.env,
            "result": done["result"], "user": user, "host": host, "by": names.by(), "release": targets[0] if len(targets) == 1 else targets,
            "from": run.release, "run": run.run_id, "started": run.started_at, "finished": names.now(),
            "nodes": back, "error": error or (f"failed on {', '.join(failed)}" if failed else None), "reason": why,
        }, lock=run.lock)
    except DeployError as exc:
        done["error"] = f"{done.get('error') or ''}; {exc}".lstrip("; ")
    run.progress(f"rollback of this run: {done['result']}" + (f" ({', '.join(failed)} failed)" if failed else ""))
    return done


def _finish(run, plan, error=None, extra=None, aborted=False, paused=None):
    """Record and report: cleanup, LB state of every node, history, events, summary.

    ``paused``: the state of a run stopped by ``pause: true``: kept in the store with the lock
    (before anything else), recorded as ``paused``, exit 5."""
    if paused:
        try:
            run.lock.pause(paused)
        except DeployError as exc:
            error, paused = f"could not keep the paused run: {exc}", None
    reached = [n for n in plan["nodes"] if n not in run.failed] if plan else []
    if run.kind == "release" and reached and run.release and not error and not paused and not run.outcome:
        try:
            _node_call(run, reached, "deploy.cleanup", {"project": run.project, "inventory": True})
        except DeployError as exc:  # the store failed (a lost lock): the releases are out, cleanup waits
            error = str(exc)
    lb_states = {}
    if plan and run.has_lb and run.mode != "emergency":
        nodes = planning.behind_lb(plan)
        try:
            lb_states = run.lb_call("status", nodes)["states"]
        except Exception as exc:  # pylint: disable=broad-except  # e.g. the master not answering: still record the run
            lb_states = {n: f"unknown ({exc})" for n in nodes}
    for node, state in lb_states.items():
        run.nodes.setdefault(node, {})["lb"] = state
    result = ("paused" if paused else "aborted" if aborted or run.outcome == "aborted"
              else "failure" if error or run.failed else "success")
    run.timings["salt_calls"] = run.salt_calls
    seconds = round(time.monotonic() - run.started, 3)
    user, host = names.caller()
    record = {
        "kind": run.kind, "mode": run.mode, "env": run.env, "result": result, "user": user, "host": host,
        "by": names.by(), "release": run.release, "started": run.started_at, "finished": names.now(), "seconds": seconds,
        "nodes": run.nodes, "timings": run.timings, "error": error, "run": run.run_id, **(extra or {}),
    }
    if paused:
        record.update(stage=paused["stage"], switched=paused["switched"])
    try:
        run.store.history_append(run.project, record, lock=run.lock)
    except DeployError as exc:  # a lost lock: the next run records this one as interrupted
        error = record["error"] = f"{error}; {exc}" if error else str(exc)
        result = record["result"] = "failure"
    if paused:
        run.fire("pause", run=run.run_id, stage=paused["stage"], seconds=None, switched=paused["switched"],
                 next=plan["stages"][paused["next"]]["name"])
    else:
        run.fire("success" if result == "success" else "failure", result=result, error=error, seconds=seconds)
    run.progress(f"{run.kind} {result} in {seconds}s" + (f": {error}" if error else ""))
    summary = {"result": result, "retcode": 0, "release": run.release, "run": run.run_id, "seconds": seconds,
               "nodes": run.nodes, "timings": run.timings, **(extra or {})}
    if error:
        summary["error"] = error
    if run.lock and run.lock.warnings:
        summary["warnings"] = run.lock.warnings
    if paused:
        summary["paused"] = {"stage": paused["stage"], "next": plan["stages"][paused["next"]]["name"],
                             "switched": paused["switched"]}
        summary["comment"] = (f"paused after stage {paused['stage']}, holding the lock: salt-run deploy.promote "
                              f"project={run.project} env={run.env} goes on, salt-run deploy.abort "
                              f"project={run.project} env={run.env} reverts")
        return _failed(summary, contract.PAUSED)
    if result == "success" or (run.mode == "abort" and not error
                               and not ((extra or {}).get("rolled_back") or {}).get("failed")):
        return summary  # deploy.abort did what it was asked
    return _failed(summary, contract.ABORTED if result == "aborted" and run.mode != "abort" else contract.FAILED)


def _take_lock(run):
    run.lock = run.store.lock(run.project, run.env, f"{run.kind} ({run.mode})" if run.kind == "rollback" else run.kind)
    run.lock.acquire(globals().get("__jid__"))
    _recover(run)


def _recover(run):
    """After a stale lock: nodes the dead run had taken out of the LB go back in their prior state."""
    left = run.lock.detached()
    if left and run.has_lb:
        out = run.lb_call("attach", left)
        run.lock.set_detached([])
        message = f"restored LB state of {', '.join(left)} left detached by an interrupted run: {out['restored']}"
        run.lock.warnings.append(message)
        run.progress(message)


def _on_signals(run):
    """SIGTERM/SIGINT while a run holds the lock: finish the step or batch in flight (its LB restore
    included), start nothing new, record the run as aborted.  Returns the handlers to put back."""

    def handler(signum, frame):  # pylint: disable=unused-argument
        name = signal.Signals(signum).name
        if not run.aborted:
            run.aborted = name
            run.progress(f"{name} received: finishing the step in flight, then stopping (no new batch)")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding caller): its own handling stays
            pass
    return previous


def _guard(run, plan, body):
    """Run body(); whatever happens, release the lock and write the summary."""
    error = None
    extra = {}
    paused = None
    previous = _on_signals(run)
    try:
        try:
            extra = body() or {}
        except _Paused as exc:
            paused = exc.state
        except DeployError as exc:
            error = str(exc)
            if run.aborted and not error.startswith("aborted"):
                error = f"aborted by {run.aborted}: {error}"
            # a failed batch, stage gate or abort: the env's on_failure (deploy.abort always reverts)
            if run.kind == "release" and (run.on_failure == "rollback" or isinstance(exc, _AbortRequested)) \
                    and not isinstance(exc, release_hooks.AfterReleaseFailed):
                extra["rolled_back"] = _revert(run, plan, error)
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("deploy: unexpected error")
            error = f"unexpected error: {exc}"
        if run.aborted and error and not error.startswith("aborted"):
            error = f"aborted by {run.aborted}: {error}"
        extra = {**run.extra, **extra}
        try:
            return _finish(run, plan, error, extra, aborted=bool(run.aborted) and error is not None, paused=paused)
        finally:
            if run.lock:
                run.lock.release()
            run.close()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- public: release


def release(project=None, env=None, ref=None, test=False, **kwargs):
    """
    Release a project to an environment: build, prepare everywhere, preprod, stages and
    batches behind the load balancer, record.

    project
        Project name (pillar ``deploy:projects:<project>`` on the master).
    env
        Environment (``envs:<env>``).
    ref
        Branch, tag or commit to release (default: the env's ``branch``).
    test
        ``True``: print the release name and the plan, change nothing.

    Exit code 0 on success, 1 on a failure, 2 bad input, 3 locked, 4 aborted (SIGTERM/SIGINT).
    Progress lines while it runs (on stderr with ``--out=...``); the summary lists every node
    (old -> new release, result, time out of the LB, LB state).  Any other argument is refused.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.release project=rainbow env=pro
        salt-run deploy.release project=rainbow env=pro ref=v1.1.0
        salt-run deploy.release project=rainbow env=pro test=True
    """
    try:
        _acting(kwargs)
        contract.check_arguments("deploy.release", ("project", "env", "ref", "test", "by"), kwargs, project=project,
                                 env=env)
        run = _Run(project, env, "release")
    except SaltInvocationError as exc:
        return _refused(exc)
    default_branch = ref is None
    try:
        ref = names.valid(str(ref or run.envc.get("branch") or "master"), names.REF_RE, "ref")
        build.source_for(__opts__, project, run.conf).check_installed()  # a missing client: exit 2, no lock
        if test:
            with run:
                return _release_plan(run, ref, default_branch)
        # an unknown ref or a release name the nodes refuse is bad input: refused before the lock
        run.resolved = build.resolve(__opts__, project, env, run.conf, ref, default_branch)
        _take_lock(run)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = {}

    def body():
        run.fire("start", ref=ref)
        build = _build(run, ref, branch=default_branch)
        plan.update(_plan(run))
        for line in _describe_plan(run, plan):
            run.progress(f"plan: {line}")
        _check_lb(run, plan)
        run.check_abort("before prepare")
        ready = _prepare_everywhere(run, plan, build)
        run.build = build
        run.extra = {"ref": ref, "commit": build["commit"], "version": build["version"]}
        release_hooks.before_first_switch(run, plan, _node_call)
        _preprod(run, plan, run.release)
        _stages(run, {**plan, "nodes": ready}, run.release)
        release_hooks.after_last_batch(run, plan, _node_call)
        return run.extra

    return _guard(run, plan, body)


# --------------------------------------------------------------------------- public: the pause's two ways out


def _resume(run, action):
    """Take the paused run over for ``action`` (promote / abort) and put its state back into ``run``."""
    run.lock = run.store.lock(run.project, run.env, action)
    state = run.lock.resume(globals().get("__jid__"))
    run.run_id, run.release = state["run"], state["release"]
    run.nodes, run.failed = state.get("nodes") or {}, list(state.get("failed") or [])
    run.timings, run.extra, run.build = state.get("timings") or {}, state.get("extra") or {}, state.get("build") or {}
    return state


def _gate_command(action, project, env, kwargs, body):
    """deploy.promote / deploy.abort: a run waiting in-process (``pause: N``) gets a request; a paused
    run (``pause: true``) is taken over and ``body(run, plan, state)`` goes on with it."""
    try:
        _acting(kwargs)
        contract.check_arguments(f"deploy.{action}", ("project", "env", "by"), kwargs, project=project, env=env)
        run = _Run(project, env, "release", action)
    except SaltInvocationError as exc:
        return _refused(exc)
    try:
        view = run.store.lock(project, env, "view")
        held = view.holder()
        waiting = (held or {}).get("waiting")
        if waiting and view.alive(held):
            user, host = names.caller()
            view.request(action, waiting["run"], f"{user} from {host}")
            run.close()
            return {"result": "requested", "run": waiting["run"], "action": action,
                    "comment": f"run {waiting['run']} waits after stage {waiting['stage']}: asked it to {action}"}
        state = _resume(run, action)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = dict(state["plan"])
    return _guard(run, plan, lambda: body(run, plan, state))


def promote(project=None, env=None, **kwargs):
    """
    Continue a paused release (a stage with ``pause: true``) from the next stage: the same release,
    no build, no prepare; to the end or to the next pause.  A release waiting in-process
    (``pause: N``) skips the rest of its wait.

    Exit code 0 when the release finished, 5 when it paused again, 1 on a failure (the env's
    ``on_failure`` applies), 2 when there is no paused run, 3 when the lock is held by a running run.
    Limit who may run it with Salt's publisher ACL / external auth on runner functions (README).

    project
        Project name.
    env
        Environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.promote project=rainbow env=pro
    """

    def body(run, plan, state):
        following = plan["stages"][state["next"]]["name"]
        run.fire("promote", run=run.run_id, stage=state["stage"], next=following)
        run.progress(f"promote: run {run.run_id} ({run.release}) goes on with stage {following}")
        _check_lb(run, plan)
        _stages(run, plan, run.release, start=state["next"])
        release_hooks.after_last_batch(run, plan, _node_call)
        return run.extra

    return _gate_command("promote", project, env, kwargs, body)


def abort(project=None, env=None, **kwargs):
    """
    Abort a paused release: every node it switched goes back to the release it had, through
    the load balancer, batch by batch (a normal rollback of those nodes); the release is marked
    bad on them, and the run is recorded as ``aborted``.  A release waiting in-process
    (``pause: N``) stops its wait and does the same.

    Exit code 0 when every switched node is back, 1 if some could not be, 2 when there is no
    paused run, 3 when the lock is held by a running run.

    project
        Project name.
    env
        Environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.abort project=rainbow env=pro
    """

    def body(run, plan, state):
        run.outcome = "aborted"
        user, host = names.caller()
        run.fire("abort", run=run.run_id, stage=state["stage"])
        _check_lb(run, plan)
        return {"rolled_back": _revert(run, plan, f"aborted by deploy.abort ({user} from {host}) after stage "
                                                  f"{state['stage']}")}

    return _gate_command("abort", project, env, kwargs, body)


def _release_plan(run, ref, default_branch=False):
    build = _build(run, ref, test=True, branch=default_branch)
    plan = _plan(run)
    return {"result": None, "comment": "test=True: nothing was changed", "release": run.release,
            "commit": build["commit"], "plan": _describe_plan(run, plan), "down": plan["down"]}


# --------------------------------------------------------------------------- public: rollback


def _inventories(run, nodes):
    ret = _node_call(run, nodes, "deploy.releases", {"project": run.project})
    errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
    if errors:
        raise DeployError("cannot list releases on " + "; ".join(f"{n}: {e}" for n, e in sorted(errors.items())))
    return {n: r["ret"] for n, r in ret.items()}


def _known_inventories(run, nodes):
    """The master's record of every node (see ``_node_call``), or None if one is missing."""
    record = run.store.record_read(run.project, run.env)
    known = {n: record.get(n) for n in nodes}
    if all(isinstance(inv, dict) and inv.get("fingerprint") for inv in known.values()):
        return known
    return None


def _fingerprints(inventories, target):
    """What each node must find before it switches (deploy.switch ``expect``): its state as recorded
    (fingerprint), and the record's claims that steer the rollback, which the node checks itself: the
    target and its status there, the release it serves and that one's status (what an undo restores)."""
    def status(inv, name):
        return next((r["status"] for r in inv["releases"] if r["name"] == name), None)
    return {n: {"fingerprint": inv["fingerprint"], "release": target, "status": status(inv, target),
                "current": inv["current"], "current_status": status(inv, inv["current"])}
            for n, inv in inventories.items()}


def _emergency_target(run, nodes, to, allow_bad=False):
    """The target from the master's record; the nodes are listed first only if the record cannot tell."""
    known = _known_inventories(run, nodes)
    target = policy.target_or_none(known, to, allow_bad) if known else None
    if target:
        return known, target, "record"
    run.progress("the master's record does not cover every node or gives no target: listing releases first")
    known = _inventories(run, nodes)
    return known, policy.rollback_target(known, to, allow_bad), "listing"


def _undo(run, nodes, known):
    """Switch nodes back to the release the record says they served (each node confirmed it before it
    switched: ``expect``), and give it back its status."""
    groups = {}  # (release served before, its status then) -> nodes: one call per group
    for node in nodes:
        prev = known[node]["current"]
        status = next((r["status"] for r in known[node]["releases"] if r["name"] == prev), None)
        groups.setdefault((prev, status), []).append(node)
    for (prev, status), members in groups.items():
        if not prev:
            run.progress(f"{', '.join(members)}: served no release before; left on {run.release}")
            continue
        run.progress(f"{', '.join(members)}: back to {prev}")
        _switch(run, members, prev, checks="report", force=True)  # the rollback marked it bad
        if status:
            _node_call(run, members, "deploy.mark", {"project": run.project, "release": prev, "status": status, "inventory": True})


def _refused_target(run, nodes, known, target):
    """Nodes in the recorded state refused the record's target: the record does not tell the truth
    (altered by a writer of the store, or the target broken there).  Every node this call switched
    goes back, and the run stops: a rollback never goes where a node says it must not."""
    why = dict(run.refused_target)
    switched = [n for n in nodes if run.nodes.get(n, {}).get("result") == "ok" and n not in run.silent]
    if switched:
        _undo(run, switched, known)
    raise DeployError(
        f"{', '.join(sorted(why))} refused the target {target} of the master's record, which disagrees with "
        f"the node: " + "; ".join(f"{n}: {e}" for n, e in sorted(why.items()))
        + (f"; {', '.join(switched)} switched back" if switched else "; nothing was changed")
    )


def _emergency(run, plan, to, allow_bad=False):
    """Emergency rollback: every node at once, in one batched call, acting on the master's record.

    The target comes from the record the runs keep of every node, so no listing round trip
    is needed; each node checks that its state is the recorded one (``expect``) and refuses
    before changing anything if not.  A refusal never leaves the env split: if the nodes'
    true state gives the same target, the refused nodes follow; if not, the switched nodes
    go back and the target is chosen again from the true state, once.  The record's target is bound
    into ``expect``: a node that sees it otherwise (bad, missing, incomplete) refuses, and the run
    stops (:func:`_refused_target`).
    """
    nodes = list(plan["nodes"])
    known, target, source = _emergency_target(run, nodes, to, allow_bad)
    run.release = target
    run.fire("start", to=target)
    run.progress(f"emergency rollback to {target}: one call to {len(nodes)} nodes (target from the {source}), "
                 "no LB actions, checks reported")
    changed = set()
    for attempt in (1, 2):
        run.refused = {}
        _switch(run, nodes, target, mark_left="bad", checks="report", expect=_fingerprints(known, target),
                force=allow_bad)
        if run.refused_target:
            _refused_target(run, nodes, known, target)
        if not run.refused:
            break
        refused = dict(run.refused)
        changed.update(refused)
        truth = {**known, **refused}
        if policy.target_or_none(truth, to, allow_bad) == target:
            run.progress(f"{', '.join(sorted(refused))}: changed since the master's record; "
                         f"{target} is still the target there: switching them too")
            run.refused = {}
            _switch(run, sorted(refused), target, mark_left="bad", checks="report",
                    expect=_fingerprints(refused, target), force=allow_bad)
            if run.refused_target:
                _refused_target(run, nodes, truth, target)
            _fail(run, sorted(run.refused), {n: "its releases changed again during the rollback: not switched"
                                             for n in run.refused})
            break
        switched = [n for n in nodes if n not in refused and n not in run.silent]
        _undo(run, switched, known)
        if attempt == 2:
            raise DeployError(
                f"the releases on {', '.join(sorted(refused))} changed during the rollback: every switched node "
                "was switched back; run the rollback again"
            )
        nodes = [n for n in nodes if n not in run.silent]
        known = {n: run.inventories.get(n) or truth[n] for n in nodes}
        target = run.release = policy.rollback_target(known, to, allow_bad)
        run.progress(f"{', '.join(sorted(refused))}: changed since the master's record, which made "
                     f"{target} the target: every node goes there instead")
    return {"to": target, "target_from": source, "changed_since_record": sorted(changed)}


def rollback(project=None, env=None, to=None, emergency=False, force=False, allow_bad=False, test=False, **kwargs):
    """
    Roll an environment back to the last good release (or ``to``).

    Normal: the path of a release (lock, preprod first, stages, batches behind the LB,
    restart, checks, stop on failure) without build or distribution.  Emergency: one
    batched call to every node at once (atomic switch + restart steps, no LB actions;
    checks run and are reported, not gating).  The release left is marked bad.

    project
        Project name.
    env
        Environment.
    to
        Release to go to (default: the newest good release older than the current one,
        with another commit, that is present on every node of the env).
    emergency
        ``True`` for the emergency path.
    force
        With ``emergency=True``: go ahead even if a release or rollback holds the lock.
    allow_bad
        With ``to``: go there even though nodes marked it bad (a node refuses a release
        it marked bad otherwise).  The nodes record the forced switch in the release's
        history, the run's record has ``allow_bad: true`` and ``forced`` per node.
    test
        ``True``: say what would be done, change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.rollback project=rainbow env=pro
        salt-run deploy.rollback project=rainbow env=pro to=rainbow_pro_v1.0.0_master_2016-08-10_10-00-00_xuliangwei
        salt-run deploy.rollback project=rainbow env=pro emergency=True
        salt-run deploy.rollback project=rainbow env=pro to=<release marked bad> allow_bad=True
    """
    mode = "emergency" if emergency else "normal"
    try:
        _acting(kwargs)
        contract.check_arguments("deploy.rollback", ("project", "env", "to", "emergency", "force", "allow_bad", "test",
                                                     "by"), kwargs, project=project, env=env)
        if to is not None:
            names.valid(to, names.RELEASE_RE, "release")
        if force and not emergency:
            raise SaltInvocationError("force=True is only for emergency=True (it passes the lock); to go to a "
                                      "release marked bad, use to=<release> allow_bad=True")
        if allow_bad and not to:
            raise SaltInvocationError("allow_bad=True needs to=<release>: a rollback goes to a release marked "
                                      "bad only when it is named")
        run = _Run(project, env, "rollback", mode)
    except SaltInvocationError as exc:
        return _refused(exc)
    try:
        if test:
            with run:
                plan = _plan(run)
                target = policy.rollback_target(_inventories(run, plan["nodes"]), to, allow_bad)
                return {"result": None, "comment": f"test=True: {mode} rollback would go to {target}",
                        "target": target, "plan": _describe_plan(run, plan) if not emergency else plan["nodes"]}
        if not force:
            _take_lock(run)
        else:
            held = run.store.lock(project, env, "view").holder() or {}
            if held.get("paused"):
                run.extra["warnings"] = [
                    f"the paused run {held['paused'].get('run')} still holds the lock: abort it "
                    f"(salt-run deploy.abort project={project} env={env}) or clear it (deploy.unlock force=True)"]
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = {}
    if allow_bad:
        run.extra["allow_bad"] = True

    def body():
        plan.update(_plan(run))
        if emergency:
            return _emergency(run, plan, to, allow_bad)
        run.release = policy.rollback_target(_inventories(run, plan["nodes"]), to, allow_bad)
        run.fire("start", to=run.release)
        run.progress(f"normal rollback to {run.release}" + (" (allow_bad: even where it is marked bad)" if allow_bad else ""))
        _check_lb(run, plan)
        release_hooks.before_rollback(run, plan, _node_call)
        _preprod(run, plan, run.release, mark_left="bad", force=allow_bad)
        _stages(run, plan, run.release, mark_left="bad", force=allow_bad)
        return {"to": run.release}

    return _guard(run, plan, body)


# --------------------------------------------------------------------------- public: views


def releases(project=None, env=None, **kwargs):
    """
    List the releases on every node of an environment, and the cluster view: which
    release is current where, the nodes that differ from the majority, and the release
    a rollback would go to.

    project
        Project name.
    env
        Environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.releases project=rainbow env=pro
    """
    try:
        contract.check_arguments("deploy.releases", ("project", "env"), kwargs, project=project, env=env)
        with _Run(project, env, "list") as run:
            inventories = _inventories(run, _plan(run)["nodes"])
    except (DeployError, SaltInvocationError) as exc:
        return _refused(exc)
    nodes = {
        node: [
            {k: r.get(k) for k in ("name", "version", "commit", "committer", "time", "status", "current")}
            for r in inv["releases"]
        ]
        for node, inv in inventories.items()
    }
    out = {"nodes": nodes, "cluster": policy.cluster_view(inventories)}
    try:
        held = store.get(__opts__, log).lock(project, env, "view").holder() or {}
    except DeployError:
        held = {}
    if held.get("paused"):
        paused = held["paused"]
        out["paused"] = {k: paused.get(k) for k in ("run", "release", "stage", "since", "switched")}
    return out


def history(project=None, env=None, limit=20, **kwargs):
    """
    The release and rollback history of a project (newest last): who, when, ref, commit,
    release, result per node, durations.

    project
        Project name.
    env
        Only this environment.
    limit
        How many records (default 20).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.history project=rainbow env=pro limit=5
    """
    try:
        contract.check_arguments("deploy.history", ("project", "env", "limit"), kwargs, project=project)
        names.valid(project, names.PROJECT_RE, "project name")
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise SaltInvocationError(f"deploy.history: limit={limit!r} must be a whole number") from None
    except SaltInvocationError as exc:
        return _refused(exc)
    try:
        records = store.get(__opts__, log).history_read(project, env)
    except DeployError as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1
    return records[-limit:] if limit > 0 else records


def stats(project=None, env=None, **kwargs):
    """
    Deployment statistics (the article's 部署统计): successful and failed releases,
    rollbacks (normal / emergency), interrupted runs, mean durations.

    project
        Project name.
    env
        Only this environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.stats project=rainbow
        salt-run deploy.stats project=rainbow env=pro
    """
    try:
        contract.check_arguments("deploy.stats", ("project", "env"), kwargs, project=project)
        names.valid(project, names.PROJECT_RE, "project name")
    except SaltInvocationError as exc:
        return _refused(exc)
    out = {
        "releases": {"success": 0, "failure": 0, "interrupted": 0, "aborted": 0, "paused": 0},
        # auto: on_failure=rollback; abort: deploy.abort (both of the nodes one run switched)
        "rollbacks": {"normal": 0, "emergency": 0, "auto": 0, "abort": 0, "failure": 0, "interrupted": 0,
                      "aborted": 0},
    }
    durations = {"release": [], "rollback": []}
    try:
        records = store.get(__opts__, log).history_read(project, env)
    except DeployError as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1
    for rec in records:
        kind = "rollbacks" if str(rec.get("kind", "")).startswith("rollback") else "releases"
        result = rec.get("result")
        if kind == "releases":
            out["releases"][result if result in out["releases"] else "failure"] += 1
        elif result == "success":
            mode = rec.get("mode", "normal")
            out["rollbacks"][mode if mode in out["rollbacks"] else "normal"] += 1
        else:
            out["rollbacks"][result if result in ("interrupted", "aborted") else "failure"] += 1
        if rec.get("seconds") is not None:
            durations[kind[:-1]].append(rec["seconds"])
    out["mean_seconds"] = {k: round(sum(v) / len(v), 3) if v else None for k, v in durations.items()}
    return out


def _lock_view(project, env, name, allowed, kwargs, **given):
    """(the lock, what :func:`lock_status` shows) of a project+env; raises SaltInvocationError on bad input."""
    contract.check_arguments(name, allowed, kwargs, project=project, env=env, **given)
    _config(project, env)
    lock = store.get(__opts__, log).lock(project, env, "unlock")
    held = lock.holder()
    if held is None:
        return lock, None, {"locked": False, "detached": lock.detached()}
    alive = bool(held) and lock.alive(held)
    return lock, held, {"locked": True, "holder": held, "alive": alive, "detached": lock.detached()}


def lock_status(project=None, env=None, **kwargs):
    """
    Show the lock of a project+env: whether it is held, by which run (holder), whether that run
    is alive, and the nodes a run left out of the load balancer.  Changes nothing: the read-only
    view a viewer's ACL may allow (``deploy.unlock`` clears).

    project
        Project name.
    env
        Environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.lock_status project=rainbow env=pro
    """
    try:
        return _lock_view(project, env, "deploy.lock_status", ("project", "env"), kwargs)[2]
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1


def unlock(project=None, env=None, force=False, **kwargs):
    """
    Clear the lock of a project+env.  A lock whose run is gone (stale) is cleared
    and the nodes that run left out of the load balancer are put back in their prior
    state; a live lock is cleared only with ``force=True``.  ``deploy.lock_status`` shows
    the lock without changing it.

    project
        Project name.
    env
        Environment.
    force
        Clear a lock even though its run still seems alive.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.unlock project=rainbow env=pro
        salt-run deploy.unlock project=rainbow env=pro force=True
    """
    try:
        _acting(kwargs)
        lock, held, info = _lock_view(project, env, "deploy.unlock", ("project", "env", "force", "by"), kwargs)
    except SaltInvocationError as exc:
        return _refused(exc)
    except DeployError as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1
    if held is None:
        return info
    alive = info["alive"]
    if alive and not force:
        if held.get("paused"):
            why = (f"{lock._locked(held)}; or force=True, which clears it and leaves the nodes it switched on "  # pylint: disable=protected-access
                   f"{held['paused'].get('release')}")
        else:
            why = f"the lock is held by a running {lock.describe(held)}; use force=True"
        return _failed({**info, "result": "refused", "error": why}, contract.LOCKED)
    try:
        with _Run(project, env, "unlock") as run:
            run.lock = lock
            if not lock.take_over(held):
                return _failed({**info, "result": "refused", "error": "the lock changed while it was being cleared: "
                                "another run took it; see deploy.lock_status"}, contract.LOCKED)
            _recover(run)
    except SaltInvocationError as exc:  # e.g. a master without a job cache: nothing was cleared
        return _refused(exc)
    except DeployError as exc:
        return _failed({**info, "result": "failure", "error": str(exc)})
    return {**info, "result": "cleared", "warnings": lock.warnings}


# --------------------------------------------------------------------------- public: views for the web console
# What the console needs and no other runner function gives: the projects and envs of the
# pillar with each env's lock, and the refs of a project's mirror.  Read-only; no node is called.


def projects(**kwargs):
    """
    The projects and envs of the master's pillar, with each env's default branch and lock
    (holder, whether its run is alive, nodes it left out of the LB): the web console's
    first page.  Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.projects
    """
    try:
        contract.check_arguments("deploy.projects", (), kwargs)
        backend = store.get(__opts__, log)
        out = {}
        defined = (config.master_pillar(__opts__).get("deploy") or {}).get("projects") or {}
        for name, conf in sorted(defined.items()):
            if not isinstance(conf, dict) or not names.PROJECT_RE.fullmatch(str(name)):
                continue
            envs = {}
            for env, envc in sorted((conf.get("envs") or {}).items()):
                if not isinstance(envc, dict) or not names.ENV_RE.fullmatch(str(env)):
                    continue
                lock = backend.lock(name, env, "view")
                held = lock.holder()
                default = "trunk" if conf.get("vcs") == "svn" else "master"
                envs[env] = {
                    "branch": str(envc.get("branch") or default),
                    "lock": None if held is None else {"holder": held, "alive": bool(held) and lock.alive(held)},
                    "detached": lock.detached(),
                }
            out[name] = {"envs": envs}
    except SaltInvocationError as exc:
        return _refused(exc)
    except DeployError as exc:
        return _failed({"result": "refused", "error": str(exc)})
    return out


def refs(project=None, limit=50, **kwargs):
    """
    The branches and tags of a project's repository (git: fetched into the master's mirror;
    svn: the folders under ``branches/`` and ``tags/``, and trunk), newest first, each with
    its commit, date, committer and subject: the console's ref chooser.  Changes nothing on
    any node.

    project
        Project name.
    limit
        How many branches and how many tags (default 50).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.refs project=rainbow
    """
    try:
        contract.check_arguments("deploy.refs", ("project", "limit"), kwargs, project=project)
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise SaltInvocationError(f"deploy.refs: limit={limit!r} must be a whole number") from None
        conf, _ = _config(project)
        return build.source_for(__opts__, project, conf).refs(limit)
    except SaltInvocationError as exc:
        return _refused(exc)
    except DeployError as exc:
        return _failed({"result": "refused", "error": str(exc)})


# --------------------------------------------------------------------------- public: validate (read-only)


def _validate_nodes(project, env):
    """One batched, read-only ``deploy.validate`` call to the env's nodes and its LB minion: node ->
    its problems (the keys and types of its project pillar checked against the one definition)."""
    with _Run(project, env, "validate") as run:
        plan = _plan(run)
        nodes = list(plan["nodes"])
        lb = dict(run.lb) if run.has_lb else None
        if lb:
            lb["servers_asked"] = planning.behind_lb(plan)
            nodes = sorted(set(nodes) | {lb["minion"]})
        out = {node: {"result": "no response", "problems": ["not connected to the master"]} for node in plan["down"]}
        asked = [node for node in nodes if node not in plan["down"]]
        for node, res in run.call(asked, "deploy.validate", {"project": project, "lb": lb}).items():
            ret = res.get("ret") if isinstance(res.get("ret"), dict) else {}
            found = []
            if node in plan["nodes"]:  # the LB minion alone: only its LB's answer counts
                found = list(ret.get("problems") or ([] if res["ok"] else [res.get("error") or "failed"]))
                if ret.get("shape") is not None:
                    found += [f"its pillar: {p}" for p in pillar_schema.problems(ret["shape"], project, shape_only=True)]
            entry = {"result": "ok" if not found else "invalid", "problems": found}
            if node in plan["nodes"] and ret.get("missing"):
                entry["missing"] = ret["missing"]
            if lb and node == lb["minion"]:
                entry["lb"] = ret.get("lb") or {"error": res.get("error") or "no answer"}
                if "error" in entry["lb"]:
                    found.append(f"load balancer: {entry['lb']['error']}")
                    entry["result"] = "invalid"
            if res.get("silent"):
                entry["result"] = "no response"
            out[node] = entry
        return out


def validate(project=None, env=None, nodes=False, **kwargs):
    """
    Check a project (and one env) as the master sees it, and with ``nodes=True`` what each of the
    env's nodes would use, without changing anything: no lock, no build, no history.

    The master's view: every key of the project pillar known and of its type (an unknown key with
    the nearest valid one: "did you mean"), then the checks a release makes of each env (or of
    ``env``).  The nodes' view (``nodes=True``, needs ``env``): one batched read-only call
    (``deploy.validate`` on each node and the LB minion): the project in each node's pillar (its
    keys and types, no value leaves the node), the root layout, the project user, every
    ``template_pillar``/``template_grains`` key present, and the load balancer's answer.

    project
        Project name.
    env
        One env (default: every env of the project).
    nodes
        ``True``: also ask the env's nodes.

    Exit code 0 when everything is valid, 2 when a problem was found (each is listed under
    ``problems``, per node under ``nodes``), 1 when a node did not answer.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.validate project=rainbow
        salt-run deploy.validate project=rainbow env=pro nodes=True
    """
    try:
        contract.check_arguments("deploy.validate", ("project", "env", "nodes"), kwargs, project=project)
        names.valid(project, names.PROJECT_RE, "project name")
        if env is not None:
            names.valid(env, names.ENV_RE, "env name")
        if nodes is True and env is None:
            raise SaltInvocationError("deploy.validate: nodes=True needs env=")
        pillar = config.master_pillar(__opts__)
        defined = ((pillar.get("deploy") or {}).get("projects") or {}).get(project)
        if not isinstance(defined, dict):
            config.project_env(pillar, project)  # names the unknown project
    except SaltInvocationError as exc:
        return _refused(exc)
    problems = list(pillar_schema.problems(defined, project))
    envs = [env] if env is not None else sorted((defined.get("envs") or {}) if isinstance(defined.get("envs"), dict) else [])
    for name in envs or [None]:
        try:
            config.project_env(pillar, project, name)
        except SaltInvocationError as exc:
            message = str(exc)
            if not any(message.endswith(p) or p in message for p in problems):
                problems.append(message)
    out = {"result": "valid", "project": project, "envs": envs, "problems": problems}
    code = contract.OK
    if nodes is True and not problems:
        try:
            out["nodes"] = _validate_nodes(project, env)
        except (DeployError, SaltInvocationError) as exc:
            out["problems"].append(str(exc))
        else:
            if any(v["result"] == "no response" for v in out["nodes"].values()):
                code = contract.FAILED
            if any(v["result"] == "invalid" for v in out["nodes"].values()):
                code = contract.BAD_INPUT
    if out["problems"]:
        code = contract.BAD_INPUT
    if code != contract.OK:
        out["result"] = "invalid" if code == contract.BAD_INPUT else "failed"
        return _failed(out, code)
    return out


# --------------------------------------------------------------------------- public: version

def version(**kwargs):
    """
    The version of salt-deploy on this master, and the Salt and Python that run it.  Read-only.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.version
    """
    try:
        contract.check_arguments("deploy.version", (), kwargs)
    except SaltInvocationError as exc:
        return _refused(exc)
    return {"salt-deploy": deploy_master.__version__, "salt": salt.version.__version__,
            "python": ".".join(str(n) for n in sys.version_info[:3])}
