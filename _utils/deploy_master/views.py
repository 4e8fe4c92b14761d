"""What the runner's read-only views compute (pure, or reading the store): statistics from the
history, the projects and envs of the pillar with their locks, the nodes' answers to a validation."""

from salt.exceptions import SaltInvocationError

from deploy_master import config, contract, names, pillar_schema, policy
from deploy_master import plan as planning


def stats(records):
    """Deployment statistics from history ``records``: releases and rollbacks by result (and a
    successful rollback by mode), mean durations."""
    out = {
        "releases": {"success": 0, "failure": 0, "interrupted": 0, "aborted": 0, "paused": 0},
        # auto: on_failure=rollback; abort: deploy.abort (both of the nodes one run switched)
        "rollbacks": {"normal": 0, "emergency": 0, "auto": 0, "abort": 0, "failure": 0, "interrupted": 0,
                      "aborted": 0},
    }
    durations = {"release": [], "rollback": []}
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


def projects(pillar, backend):
    """The projects and envs of the master's ``pillar``, each env with its default branch and lock."""
    out = {}
    defined = (pillar.get("deploy") or {}).get("projects") or {}
    for name, conf in sorted(defined.items()):
        if not isinstance(conf, dict) or not names.PROJECT_RE.fullmatch(str(name)):
            continue
        envs = {}
        for env, envc in sorted((conf.get("envs") or {}).items()):
            if not isinstance(envc, dict) or not names.ENV_RE.fullmatch(str(env)):
                continue
            lock = backend.lock(name, env, "view")
            held = lock.holder()
            envs[env] = {
                "branch": str(config.branch(conf, envc) or ""),
                "lock": None if held is None else {"holder": held, "alive": bool(held) and lock.alive(held)},
                "detached": lock.detached(),
            }
        out[name] = {"envs": envs}
    return out


def validation_targets(plan, lbs):
    """(the nodes to ask, the LBs to pass them) for ``deploy.validate``: the env's nodes and its LB
    minions; ``lbs``: the env's LB definitions (each named), given with the servers to ask about."""
    nodes = list(plan["nodes"])
    lb = [{**one, "servers_asked": planning.behind_lb(plan)} for one in lbs] or None
    if lb:
        nodes = sorted(set(nodes) | {one["minion"] for one in lb})
    return [node for node in nodes if node not in plan["down"]], lb


def _lb_answers(entry, found, lb, node, ret, res):
    """The answers of the LBs that ``node`` runs: ``entry["lb"]`` (one LB: its answer; several: each
    one's under its name), and a problem for each LB that failed."""
    for one in lb or []:
        if node != one["minion"]:
            continue
        got = (ret.get("lbs") or {}).get(one["name"]) or {"error": res.get("error") or "no answer"}
        if len(lb) == 1:
            entry["lb"] = got
        else:
            entry.setdefault("lb", {})[one["name"]] = got
        if "error" in got:
            found.append(f"load balancer{'' if len(lb) == 1 else ' ' + one['name']}: {got['error']}")
            entry["result"] = "invalid"


def node_problems(plan, lb, answers, project):
    """node -> its problems, from the nodes' ``deploy.validate`` ``answers`` (the run's call results)."""
    out = {node: {"result": "no response", "problems": ["not connected to the master"]} for node in plan["down"]}
    for node, res in answers.items():
        ret = res.get("ret") if isinstance(res.get("ret"), dict) else {}
        found = []
        if node in plan["nodes"]:  # the LB minion alone: only its LB's answer counts
            found = list(ret.get("problems") or ([] if res["ok"] else [res.get("error") or "failed"]))
            if ret.get("shape") is not None:
                found += [f"its pillar: {p}" for p in pillar_schema.problems(ret["shape"], project, shape_only=True)]
        entry = {"result": "ok" if not found else "invalid", "problems": found}
        if node in plan["nodes"] and ret.get("missing"):
            entry["missing"] = ret["missing"]
        _lb_answers(entry, found, lb, node, ret, res)
        if res.get("silent"):
            entry["result"] = "no response"
        out[node] = entry
    return out


def releases(inventories, held):
    """The releases on every node and the cluster view, from the nodes' ``inventories``; a paused
    run (``held``: the lock's holder) is shown too."""
    nodes = {
        node: [
            {k: r.get(k) for k in ("name", "version", "commit", "committer", "time", "status", "current")}
            for r in inv["releases"]
        ]
        for node, inv in inventories.items()
    }
    out = {"nodes": nodes, "cluster": policy.cluster_view(inventories)}
    if held.get("paused"):
        paused = held["paused"]
        out["paused"] = {k: paused.get(k) for k in ("run", "release", "stage", "since", "switched")}
    return out


def validation_code(out):
    """The exit code of a validation's answer ``out`` (problems: 2, a node that did not answer: 1), and
    its ``result`` set accordingly."""
    answers = (out.get("nodes") or {}).values()
    code = contract.OK
    if any(v["result"] == "no response" for v in answers):
        code = contract.FAILED
    if out["problems"] or any(v["result"] == "invalid" for v in answers):
        code = contract.BAD_INPUT
    if code != contract.OK:
        out["result"] = "invalid" if code == contract.BAD_INPUT else "failed"
    return code


def pillar_problems(pillar, defined, project, env=None):
    """(the envs checked, the problems of the project's pillar ``defined`` as the master sees it):
    its keys and types, then the checks a release makes of each env (or of ``env``)."""
    problems = list(pillar_schema.problems(defined, project))
    envs = [env] if env is not None else sorted(
        (defined.get("envs") or {}) if isinstance(defined.get("envs"), dict) else [])
    for name in envs or [None]:
        try:
            config.project_env(pillar, project, name)
        except SaltInvocationError as exc:
            message = str(exc)
            if not any(message.endswith(p) or p in message for p in problems):
                problems.append(message)
    return envs, problems
