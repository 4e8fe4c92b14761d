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

This file holds the public functions: their arguments, opening a run, the steps in the
article's order, and the views.  The steps live in ``deploy_master.rollout``, the Salt transport
in ``deploy_master.jobs``, the rest in the plain package ``deploy_master`` (its docstring lists
its modules).  The project definitions are read from the pillar compiled for the master's own id
(as ``state.orchestrate`` does); node secrets are never read here.  Master options: see
``deploy_master.config``.
"""

import functools
import logging
import os
import sys

import salt.version
from salt.exceptions import SaltInvocationError

try:
    import deploy_master
except ImportError:  # a source checkout whose editable install predates _utils/: the package is beside us
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_utils"))
    import deploy_master
from deploy_master import (  # noqa: E402
    DeployError, Locked, NotPaused, UnknownRef, build, config, contract, names, policy, store, views,
)
from deploy_master.rollout import batches, distribute, finish, hooks, revert, start  # noqa: E402
from deploy_master.rollout import run as runs  # noqa: E402
from deploy_master.source import artifact as artifacts  # noqa: E402

log = logging.getLogger(__name__)

__virtualname__ = "deploy"

# without --out, salt-run ends these with the summary of _output/deploy_summary.py (contract.with_outputter)
__outputter__ = {name: "deploy_summary" for name in ("release", "rollback", "promote", "abort")}


def _summary_by_default(fun, name):
    # defined here: Salt gives a runner call its __jid_event__ and __user__ through its function's globals
    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        return contract.with_outputter(fun(*args, **kwargs), __opts__, f"deploy.{name}", __outputter__[name])
    return wrapper


def __virtual__():
    # no gitpython needed here: the git source imports it when a build needs it, so rollback,
    # history and unlock work without it
    for name in __outputter__:  # every function is defined by now: wrap them once
        if not hasattr(globals()[name], "__wrapped__"):
            globals()[name] = _summary_by_default(globals()[name], name)
    return __virtualname__


# --------------------------------------------------------------------------- a run


def _Run(project, env, kind, mode="normal"):  # pylint: disable=invalid-name
    """A run of ``kind``, given what Salt gives the runner (its options, the job's jid, its progress channel)."""
    return runs.Run(__opts__, project, env, kind, mode, jid=globals().get("__jid__"),
                    jid_event=globals().get("__jid_event__"))


def _guarded(run, plan, body):
    """The run's body under :func:`finish.guard` (lock, signals, record, summary); its exit code to Salt."""
    ret = finish.guard(run, plan, body)
    return _failed(ret, ret["retcode"]) if ret.get("retcode") else ret


def _failed(ret, code=contract.FAILED):
    """Mark a runner return as failed: salt-run exits with ``retcode`` (as state.orchestrate does);
    the codes are in ``deploy_master.contract``."""
    __context__["retcode"] = code
    ret["retcode"] = code
    return ret


def _refused(exc, ret=None):
    """A refusal before anything changed (``ret``: what the return shows besides): bad input (2) or locked
    (3); anything else failed (1)."""
    if isinstance(exc, (SaltInvocationError, NotPaused, UnknownRef)):
        code = contract.BAD_INPUT
    elif isinstance(exc, Locked):
        code = contract.LOCKED
    else:
        code = contract.FAILED
    return _failed({**(ret or {}), "result": "refused", "error": str(exc)}, code)


def _acting(kwargs):
    """Name whom this runner call acts for (Salt's user of the call; ``by=``, a CI's own job identity,
    taken out of ``kwargs``): every record, event and notification of the run carries both."""
    names.acting(globals().get("__user__"), kwargs.pop("by", None))


# --------------------------------------------------------------------------- public: release


def release(project=None, env=None, ref=None, test=False, artifact=None, sha256=None, version=None, **kwargs):
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
    artifact, sha256, version
        Release bytes built elsewhere instead of a ref: a tar.gz, zip or WAR (``https://``, ``salt://``
        or a file on the master), its sha256 (checked before anything else) and the release's version.

    Exit code 0 on success, 1 on a failure, 2 bad input, 3 locked, 4 aborted (SIGTERM/SIGINT).
    Progress lines while it runs (on stderr with ``--out=...``); the summary lists every node
    (old -> new release, result, time out of the LB, LB state).  Any other argument is refused.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.release project=rainbow env=pro
        salt-run deploy.release project=rainbow env=pro ref=v1.1.0
        salt-run deploy.release project=rainbow env=pro test=True
        salt-run deploy.release project=rainbow env=pro artifact=https://ci.example.com/rainbow-1.4.2.tar.gz \\
            sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 version=1.4.2
    """
    try:
        _acting(kwargs)
        contract.check_arguments("deploy.release", ("project", "env", "ref", "test", "by", *artifacts.ARGUMENTS),
                                 kwargs, project=project, env=env)
        run = _Run(project, env, "release")
        run.conf, ref = artifacts.from_arguments(run.conf, ref, artifact, sha256, version)
    except SaltInvocationError as exc:
        return _refused(exc)
    default_branch = ref is None
    try:
        ref = names.valid(str(ref or config.branch(run.conf, run.envc)), names.REF_RE, "ref")
        build.source_for(__opts__, project, run.conf).check_installed()  # a missing client: exit 2, no lock
        if test:
            with run:
                return start.test_plan(run, ref, default_branch)
        # an unknown ref or a release name the nodes refuse is bad input: refused before the lock
        run.resolved = build.resolve(__opts__, project, env, run.conf, ref, default_branch)
        finish.take_lock(run)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = {}

    def body():
        run.emit("start", f"release of {ref}", line=False, notify_as="start", ref=ref, test=False)
        build = start.build(run, ref, branch=default_branch)
        plan.update(start.plan(run))
        for line in start.describe(run, plan):
            run.emit("plan", f"plan: {line}", **batches.plan_fields(run, plan))
        batches.check_lb(run, plan)
        run.check_abort("before prepare")
        ready = distribute.prepare(run, plan, build)
        run.build = build
        run.extra = {"ref": ref, "commit": build["commit"], "version": build["version"]}
        hooks.before_first_switch(run, plan)
        batches.preprod(run, plan, run.release)
        batches.stages(run, {**plan, "nodes": ready}, run.release)
        hooks.after_last_batch(run, plan)
        return run.extra

    return _guarded(run, plan, body)


# --------------------------------------------------------------------------- public: the pause's two ways out


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
        requested = finish.request(run, action)
        if requested:
            run.close()
            return requested
        state = finish.resume(run, action)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = dict(state["plan"])
    return _guarded(run, plan, lambda: body(run, plan, state))


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
        run.emit("promote", f"promote: run {run.run_id} ({run.release}) goes on with stage {following}",
                 stage=state["stage"], next=following, by=names.by() or names.caller()[0])
        batches.check_lb(run, plan)
        batches.stages(run, plan, run.release, start=state["next"])
        hooks.after_last_batch(run, plan)
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
        run.emit("abort", f"abort: run {run.run_id} ({run.release}) after stage {state['stage']}", line=False,
                 stage=state["stage"], by=names.by() or user)
        batches.check_lb(run, plan)
        return {"rolled_back": revert.revert(run, plan, f"aborted by deploy.abort ({user} from {host}) after stage "
                                                  f"{state['stage']}")}

    return _gate_command("abort", project, env, kwargs, body)


# --------------------------------------------------------------------------- public: rollback


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
        contract.check_rollback(to, emergency, force, allow_bad)
        run = _Run(project, env, "rollback", mode)
    except SaltInvocationError as exc:
        return _refused(exc)
    try:
        if test:
            with run:
                plan = start.plan(run, emergency=emergency)
                target = policy.rollback_target(revert.inventories(run, plan["nodes"]), to, allow_bad)
                return {"result": None, "comment": f"test=True: {mode} rollback would go to {target}",
                        "target": target, "plan": start.describe(run, plan) if not emergency else plan["nodes"]}
        finish.take_lock(run, force=force)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _refused(exc)
    plan = {}
    if allow_bad:
        run.extra["allow_bad"] = True

    def body():
        plan.update(start.plan(run, emergency=emergency))
        if emergency:
            return revert.emergency(run, plan, to, allow_bad)
        run.release = policy.rollback_target(revert.inventories(run, plan["nodes"]), to, allow_bad)
        run.emit("start", f"normal rollback to {run.release}", line=False, notify_as="start", ref=None, test=False,
                 to=run.release)
        run.emit("rollback", f"normal rollback to {run.release}"
                 + (" (allow_bad: even where it is marked bad)" if allow_bad else ""),
                 target=run.release, emergency=False, nodes=list(plan["nodes"]))
        batches.check_lb(run, plan)
        hooks.before_rollback(run, plan)
        batches.preprod(run, plan, run.release, mark_left="bad", force=allow_bad)
        batches.stages(run, plan, run.release, mark_left="bad", force=allow_bad)
        return {"to": run.release}

    return _guarded(run, plan, body)


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
            inventories = revert.inventories(run, start.plan(run)["nodes"])
    except (DeployError, SaltInvocationError) as exc:
        return _refused(exc)
    try:
        held = store.get(__opts__, log).lock(project, env, "view").holder() or {}
    except DeployError:
        held = {}
    return views.releases(inventories, held)


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
        limit = contract.whole_number("deploy.history", "limit", limit)
        records = store.get(__opts__, log).history_read(project, env)
    except (SaltInvocationError, DeployError) as exc:
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
        records = store.get(__opts__, log).history_read(project, env)
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1
    return views.stats(records)


def _lock_view(project, env, name, allowed, kwargs, **given):
    """(the lock, what :func:`lock_status` shows) of a project+env; raises SaltInvocationError on bad input."""
    contract.check_arguments(name, allowed, kwargs, project=project, env=env, **given)
    config.load(__opts__, project, env)
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
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)  # a missing part (etcd3gw): 2; the store failed: 1
    if held is None:
        return info
    if info["alive"] and not force:
        return _failed({**info, "result": "refused", "error": finish.held_by(lock, held)}, contract.LOCKED)
    try:
        with _Run(project, env, "unlock") as run:
            finish.clear(run, lock, held)
    except (SaltInvocationError, Locked) as exc:  # e.g. a master without a job cache: nothing was cleared
        return _refused(exc, info)
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
        out = views.projects(config.master_pillar(__opts__), store.get(__opts__, log))
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)
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
        limit = contract.whole_number("deploy.refs", "limit", limit)
        conf, _ = config.load(__opts__, project)
        return build.source_for(__opts__, project, conf).refs(limit)
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)


# --------------------------------------------------------------------------- public: validate (read-only)


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
    envs, problems = views.pillar_problems(pillar, defined, project, env)
    out = {"result": "valid", "project": project, "envs": envs, "problems": problems}
    if nodes is True and not problems:
        try:
            with _Run(project, env, "validate") as run:
                out["nodes"] = start.validate_nodes(run)
        except (DeployError, SaltInvocationError) as exc:
            out["problems"].append(str(exc))
    code = views.validation_code(out)
    return _failed(out, code) if code != contract.OK else out


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


# --------------------------------------------------------------------------- public: what a release would change


def changes(project=None, env=None, ref=None, **kwargs):
    """
    What releasing ``ref`` would change, before anyone confirms it: per group of nodes that run the
    same commit, the commits (git) or revisions (svn) between that commit and ``ref`` (and those a
    release of an older ref would take away), and which config files the project renders would
    change, with the names of their added, removed and changed keys, never a value.  Read-only: one
    batched listing of the nodes' releases, the repository read on the master (``deploy_master.changes``).

    project
        Project name.
    env
        Environment.
    ref
        Branch, tag or commit (default: the env's branch).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.changes project=rainbow env=pro ref=v1.1.0
    """
    from deploy_master import changes as preview  # pylint: disable=import-outside-toplevel

    default_branch = ref is None
    try:
        contract.check_arguments("deploy.changes", ("project", "env", "ref"), kwargs, project=project, env=env)
        with _Run(project, env, "list") as run:
            ref = names.valid(str(ref or config.branch(run.conf, run.envc)), names.REF_RE, "ref")
            src = build.source_for(__opts__, project, run.conf)
            src.check_installed()
            target = src.resolve(ref, branch=default_branch)
            currents = preview.currents(revert.inventories(run, start.plan(run)["nodes"]))
            return {"project": project, "env": env, **preview.compare(src, run.conf, target, currents)}
    except (SaltInvocationError, DeployError) as exc:
        return _refused(exc)  # a bad argument or an unknown ref: 2; a node or the repository failed: 1
