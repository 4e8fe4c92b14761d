"""
States for releases on a node, for users who drive deployments from their own SLS files.

.. code-block:: yaml

    rainbow-release:
      deploy.prepared:
        - name: rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
        - project: rainbow
        - source: salt://deploy_artifacts/rainbow/rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei.tar.gz
        - checksum: 5f2b...e1

    rainbow-live:
      deploy.active:
        - name: rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
        - project: rainbow
        - require:
          - deploy: rainbow-release

Each state is a thin wrapper around the ``deploy`` execution module, is idempotent and
honours ``test=True``.
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "deploy"


def __virtual__():
    if "deploy.prepare" in __salt__:
        return __virtualname__
    return (False, "the deploy execution module is not available")


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def prepared(name, project, source, checksum, meta=None, saltenv="base"):
    """
    Have release ``name`` of ``project`` prepared on the node (unpacked, config rendered),
    without switching to it.

    name
        Release name.
    project
        Project name (pillar ``deploy:projects:<project>``).
    source
        ``salt://`` URL of the artifact.
    checksum
        sha256 of the artifact.
    meta
        Optional metadata stored with the release (version, branch, commit, committer, time).
    saltenv
        Fileserver environment of ``source``.

    .. code-block:: yaml

        rainbow-release:
          deploy.prepared:
            - name: rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
            - project: rainbow
            - source: salt://deploy_artifacts/rainbow/rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei.tar.gz
            - checksum: 5f2b...e1
    """
    ret = _ret(name)
    try:
        info = __salt__["deploy.info"](project, name)
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    if info is not None and not info.get("old_layout"):  # an old layout is built anew, root's
        if info.get("checksum") == checksum:
            ret["comment"] = f"Release {name} is already prepared"
            return ret
        return {**ret, "result": False, "comment": f"Release {name} exists with a different checksum"}
    if __opts__["test"]:
        return {**ret, "result": None, "comment": f"Release {name} would be prepared from {source}",
                "changes": {"prepared": name}}
    try:
        out = __salt__["deploy.prepare"](project, name, source, checksum, meta=meta, saltenv=saltenv)
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    ret["changes"] = {"prepared": out["path"]}
    ret["comment"] = f"Release {name} prepared"
    return ret


def active(name, project, checks="gate"):
    """
    Have ``current`` point at release ``name``: switch, restart, check (switching back
    and failing if the checks fail with ``checks: gate``).

    name
        Release name, already prepared (use ``deploy.prepared`` first).
    project
        Project name.
    checks
        ``gate`` (default), ``report`` or ``skip``.

    .. code-block:: yaml

        rainbow-live:
          deploy.active:
            - name: rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei
            - project: rainbow
    """
    ret = _ret(name)
    try:
        current = __salt__["deploy.current"](project)
        info = __salt__["deploy.info"](project, name)
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    if current == name:
        ret["comment"] = f"Release {name} is already current"
        return ret
    if info is None:
        return {**ret, "result": False, "comment": f"Release {name} is not prepared on this node"}
    if info.get("status") == "bad":
        return {**ret, "result": False, "comment": _BAD.format(name)}
    if __opts__["test"]:
        return {**ret, "result": None, "comment": f"current would be switched from {current} to {name}",
                "changes": {"current": {"old": current, "new": name}}}
    return _switch_ret(ret, __salt__["deploy.switch"](project, name, checks=checks))


def rolled_back(name, to=None, checks="gate"):
    """
    Roll project ``name`` back on this node to ``to`` (default: the newest good release
    other than ``current``); the release left is marked bad.  Without ``to``, a node whose
    ``current`` was switched to from a release now marked bad is already rolled back.

    name
        Project name.
    to
        Release to roll back to.
    checks
        ``gate`` (default), ``report`` or ``skip``.

    .. code-block:: yaml

        rainbow-rollback:
          deploy.rolled_back:
            - name: rainbow
    """
    ret = _ret(name)
    try:
        current = __salt__["deploy.current"](name)
        if not to:
            # Already rolled back when ``current`` was switched to from a release now marked bad;
            # without this a second run would go back further (or fail: no good release left).
            inv = __salt__["deploy.releases"](name)
            status = {r["name"]: r["status"] for r in inv["releases"]}
            if current and status.get(inv["previous"]) == "bad" and status.get(current) != "bad":
                ret["comment"] = f"{name} is already rolled back to {current} (from {inv['previous']}, marked bad)"
                return ret
        target = to or __salt__["deploy.rollback_target"](name)
        info = __salt__["deploy.info"](name, target) if target else None
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    if not target or info is None:
        return {**ret, "result": False,
                "comment": f"No good release to roll back to{'' if not to else ': ' + to + ' is not prepared'}"}
    if current == target:
        ret["comment"] = f"{name} is already on {target}"
        return ret
    if info.get("status") == "bad":
        return {**ret, "result": False, "comment": _BAD.format(target)}
    if __opts__["test"]:
        return {**ret, "result": None, "comment": f"{name} would be rolled back from {current} to {target}",
                "changes": {"current": {"old": current, "new": target}}}
    return _switch_ret(ret, __salt__["deploy.rollback"](name, to=target, checks=checks))


_BAD = "Release {} is marked bad on this node: a state does not switch to it (salt-call deploy.activate ... force=True)"


def _switch_ret(ret, out):
    if out["result"]:
        ret["changes"] = {"current": {"old": out["previous"], "new": out["release"]}}
        ret["comment"] = f"Switched to {out['release']}"
    else:
        failed = [s for s in out["steps"] if not s.get("result")]
        ret["result"] = False
        ret["comment"] = (
            f"Switching to {out['release']} failed at {failed[0]['step'] if failed else 'unknown step'}"
            + (f"; switched back to {out['previous']}" if out["reverted"] else "")
        )
    return ret
