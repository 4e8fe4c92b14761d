"""The project and env definition (pillar ``deploy:projects``), validated; the master options.

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

import os

from salt.exceptions import SaltInvocationError

from deploy_master import hooks, lbs, names, notify, pillar_schema, plan, source
from deploy_master.gates import analysis


def branch(conf, envc):
    """The branch an env releases when no ref is given: its ``branch``, else its VCS's default (None for an
    unknown VCS, which the project's validation names)."""
    vcs = conf.get("vcs") or "git"
    return envc.get("branch") or (source.get(vcs).DEFAULT_BRANCH if vcs in source.KINDS else None)


def timeout(opts):
    """Seconds to wait for a silent minion (``deploy_timeout``, default 15)."""
    return int(opts.get("deploy_timeout", 15))


def silent_rounds(opts):
    """``find_job`` rounds a node may leave unanswered before it counts as gone (``deploy_silent_rounds``,
    default 2)."""
    return max(1, int(opts.get("deploy_silent_rounds", 2)))


def find_job_interval(opts, nodes):
    """Seconds between two ``saltutil.find_job`` rounds asking ``nodes`` nodes whether they run a job.

    ``gather_job_timeout`` (default 10), and at least ``deploy_find_job_per_node`` (default 0.2 s)
    per node asked: each round is one more job on every node asked, and on 100 busy nodes
    (two cores) a round every 10 s was most of what they did."""
    per_node = float(opts.get("deploy_find_job_per_node", 0.2))
    return max(int(opts.get("gather_job_timeout", 10)), int(per_node * nodes + 0.5))


def job_timeout(opts):
    """Longest wait for a node that says it still runs the job (``deploy_job_timeout``, default 600 s)."""
    return int(opts.get("deploy_job_timeout", 600))


def master_pillar(opts):
    """The pillar compiled for the master's own id, as ``state.orchestrate`` reads it."""
    import salt.pillar  # pylint: disable=import-outside-toplevel

    return salt.pillar.get_pillar(
        opts,
        {"id": opts["id"]},
        opts["id"],
        saltenv=opts.get("saltenv"),
        pillarenv=opts.get("pillarenv"),
    ).compile_pillar()


def load(opts, project, env=None):
    """:func:`project_env` read from the master's pillar."""
    return project_env(master_pillar(opts), project, env)


def project_env(pillar, project, env=None):
    """``(conf, envc)``: the project (and env, else None) definition from ``pillar``, validated.

    Unknown keys are refused first, then the checks of what values mean (below) speak; then
    :mod:`deploy_master.pillar_schema` refuses every unknown key (did you mean ...?) and wrong type, in every env."""
    defined = ((pillar.get("deploy") or {}).get("projects") or {}).get(project)
    pillar_schema.check(defined, project, unknown_only=True)  # a typo first: it silently changes what runs
    try:
        conf, envc = _project_env(pillar, project, env)
    except SaltInvocationError:  # a TypeError too
        raise
    except (AttributeError, TypeError, KeyError, ValueError):  # a dict where a list goes, ...: named below
        pillar_schema.check(defined, project)
        raise
    pillar_schema.check(conf, project)
    hooks.parse(conf, envc, f"project {project!r}" + (f" env {env!r}" if env is not None else ""))
    return conf, envc


def _project_env(pillar, project, env=None):
    names.valid(project, names.PROJECT_RE, "project name")
    if env is not None:
        names.valid(env, names.ENV_RE, "env name")
    projects = (pillar.get("deploy") or {}).get("projects") or {}
    conf = projects.get(project)
    if not isinstance(conf, dict):
        known = ", ".join(sorted(projects)) or "none"
        raise SaltInvocationError(
            f"unknown project {project!r}: the master's pillar deploy:projects has {known}"
        )
    for key in ("repo", "root", "envs"):
        if not conf.get(key) and not (key == "repo" and conf.get("vcs") == "artifact"):
            raise SaltInvocationError(f"project {project!r}: pillar is missing {key!r}")
    vcs = conf.get("vcs") or "git"
    if vcs not in source.KINDS:
        raise SaltInvocationError(f"project {project!r}: unknown vcs {vcs!r}: use one of {', '.join(source.KINDS)}")
    notify.hooks(conf, project)
    root = conf["root"]
    if not isinstance(root, str) or not os.path.isabs(root) or os.path.realpath(root) == "/":
        raise SaltInvocationError(f"project {project!r}: root {root!r} must be an absolute path other than '/'")
    if env is None:
        return conf, None
    return conf, _env(conf, project, env, vcs)


def _env(conf, project, env, vcs):
    """The env ``env`` of the project ``conf``, checked; the VCS's default branch when it names none."""
    envc = conf["envs"].get(env)
    if not isinstance(envc, dict):
        raise SaltInvocationError(
            f"unknown env {env!r} for project {project!r}: pillar has {', '.join(sorted(conf['envs']))}"
        )
    if not envc.get("branch") and vcs != "git":
        envc = {**envc, "branch": branch(conf, envc)}
    if not envc.get("target") and not envc.get("preprod"):
        raise SaltInvocationError(f"project {project!r} env {env!r}: give a 'target' (and optionally 'preprod')")
    for index, stage in enumerate(envc.get("stages") or []):
        if not isinstance(stage, dict):
            raise SaltInvocationError(f"env {env!r}: stage {index + 1} must be a dict with name, target, batch")
        where = f"env {env!r} stage {stage.get('name') or index + 1!r}"
        plan.batch_size(stage.get("batch", plan.DEFAULT_BATCH), 1, where)
        stage_pause(stage, where)
    on_failure(envc, env)
    where = f"project {project!r}" + (f" env {env!r}" if envc.get("lb") is not None else "")
    drivers = {lb["driver"] for lb in load_balancers(conf, envc, where)}
    lb_wait_up(conf, envc, f"project {project!r} env {env!r}")
    # the analysis reads every LB's counters: one LB without them (nginx) is the one it is checked against
    _check_analysis(envc, env, "nginx" if "nginx" in drivers else "haproxy" if drivers else "none")
    try:
        int(envc.get("max_failures", 0))
    except (TypeError, ValueError):
        raise SaltInvocationError(f"env {env!r}: max_failures must be a whole number") from None
    return envc


def _check_analysis(envc, env, driver):
    """The env's and its stages' ``analysis`` (deploy_master.gates.analysis), each with what its provider needs."""
    analysis.check(envc, env, driver)


ON_FAILURE = pillar_schema.ON_FAILURE


def stage_pause(stage, where):
    """A stage's gate after its last batch: None (go on), True (wait for a person:
    ``deploy.promote`` / ``deploy.abort``) or N (wait N seconds, then go on)."""
    return plan.pause(stage.get("pause"), where)


def on_failure(envc, env="?"):
    """What a failed batch, stage gate or abort does to the nodes already switched in the run:
    ``stop`` (the default: they stay on the new release) or ``rollback`` (back to the release each had)."""
    value = envc.get("on_failure", "stop")
    if not isinstance(value, str) or value not in ON_FAILURE:
        raise SaltInvocationError(f"env {env!r}: on_failure {value!r} must be 'stop' (the default) or 'rollback'")
    return value


def load_balancer(conf, envc):
    """The env's ``lb`` as written (an env may have its own): a dict, a list, or ``{"driver": "none"}``."""
    return envc.get("lb") or conf.get("lb") or {"driver": "none"}


def load_balancers(conf, envc, where="project"):
    """The env's load balancers (:func:`deploy_master.lbs.parse`): a list of definitions, each named."""
    return lbs.parse(load_balancer(conf, envc or {}), where)


def lb_wait_up(conf, envc, where="project"):
    """Longest wait for restored servers to be UP on every LB (``lb_wait_up``, default 30 s)."""
    return lbs.wait_up(conf, envc, where)
