"""Pillar for a sandbox or test cluster of the sample project, written as a user would.

The project pillar follows the contract of ``pillar/deploy/rainbow.sls``
(``deploy:projects:<project>``); on a sandbox one machine plays every node, so each
node gets its own small pillar file with what differs per node (``root``, ``restart``,
``checks``, the job node's ``files``), merged by Salt into the project definition.

Layout written by :func:`write_pillar`::

    top.sls            '*': project           (every minion and the master: the runner reads it)
                       'G@roles:<project>' (compound): secrets   (the nodes only, never the master)
                       '<node id>': node_<node_id>               (one file per node; one Jinja
                                                                  entry picks it by the minion's id)
    project.sls        deploy: {projects: {<project>: <project_pillar(...)>}}
    secrets.sls        <project>_secrets: {...}
    node_<id>.sls      deploy: {projects: {<project>: <node_pillar(...)>}}

Used by ``python -m sandbox`` (sandbox/cluster.py) and by the integration tests.
"""

from __future__ import annotations

import copy
import json
import os

import yaml

__all__ = [
    "USER",
    "SECRETS",
    "JOB_FILES",
    "merge",
    "dump",
    "default_envs",
    "project_pillar",
    "node_pillar",
    "write_pillar",
    "node_sls_name",
]

USER = "www-data"
SECRETS = {"sms_key": "SMSKEY-5f1d2c9a-secret", "pay_key": "PAYKEY-77ae01b3-secret"}
# the job node's own crontab.xml (the article: in a 10-node cluster the job node differs)
JOB_FILES = {"config/crontab.xml": {"contents": "<crontab><job name='report'/></crontab>\n", "mode": "0644"}}


def merge(base: dict, extra: dict) -> dict:
    """Deep merge (dicts merge, everything else replaces); returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dump(path, data):
    """Write ``data`` as YAML (``yaml.safe_dump``, block style) to ``path``."""
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, default_flow_style=False)


def default_envs(preprod="pre-1", project="rainbow", gray="G@region:east", batch=1) -> dict:
    """The ``pro`` env of the sandbox: preprod first, a gray stage (region east), then the rest."""
    return {
        "pro": {
            "branch": "master",
            "target": f"G@roles:{project} and G@env:pro",
            "preprod": preprod,
            "stages": [
                {"name": "gray", "target": gray, "batch": 1},
                {"name": "all", "batch": batch},
            ],
            "max_failures": 0,
        },
    }


def project_pillar(repo, lb: dict, envs: dict | None = None, user=USER, group=None,
                   root="/data/www/rainbow", overrides: dict | None = None, project="rainbow", **extra) -> dict:
    """The project definition (``deploy:projects:<project>``), as in pillar/deploy/rainbow.sls.

    repo
        git URL or path (read by the master).
    lb
        ``{driver, minion, socket, backend, drain_timeout}`` (haproxy) or ``{driver: none}``.
    envs
        ``{env: {...}}``; default :func:`default_envs`.
    root
        default project root; a sandbox's nodes override it in their own pillar.
    project
        the project's name: its config template (sandbox/apps/php/config/app.ini.example) reads
        ``<project>_secrets`` and ``deploy:projects:<project>:greeting``, which it declares in
        ``template_pillar`` (a template sees nothing else of the pillar).
    extra
        deep-merged on top (e.g. ``keep_releases=5``, ``greeting='hi'``).
    overrides
        a dict deep-merged last, for keys that are also parameters here
        (``{'lb': {'drain_timeout': 2}}``, ``{'envs': {...}}``): a test's ``project_extra``.
    """
    project = {
        "repo": str(repo),
        "root": root,
        "user": user,
        "group": group or user,
        "keep_releases": 3,
        "build": [],
        "shared": ["storage/logs", "public/uploads"],
        "config": {"config/app.ini": {"source": "config/app.ini.example", "mode": "0640"}},
        "template_pillar": [f"{project}_secrets", f"deploy:projects:{project}:greeting"],
        "files": {},
        "lb": dict(lb),
        "envs": copy.deepcopy(envs) if envs is not None else default_envs(),
    }
    return merge(merge(project, extra), overrides or {})


def node_pillar(root, addr, reload_command, job=False, port=8080, job_files=None, overrides: dict | None = None,
                **extra) -> dict:
    """One node's own part of the project: its root, restart step, checks (on its own address),
    and for the job node its own ``files`` (crontab.xml).  ``extra``, then ``overrides`` (a dict,
    e.g. a test's ``node_extra[node]``, may hold any key) are deep-merged on top."""
    base = f"http://{addr}:{port}"
    conf = {
        "root": str(root),
        "restart": [{"cmd": reload_command}],
        "checks": [
            # "{release}": the deploy module puts in the release `current` points to, so the check
            # proves the node serves the new code (not a stale OPcache)
            {"url": f"{base}/", "status": 200, "contains": "release: {release}", "retries": 10, "delay": 0.2},
            {"url": f"{base}/health.php", "status": 200, "contains": "ok", "retries": 3, "delay": 0.5},
        ],
    }
    if job:
        conf["files"] = copy.deepcopy(job_files if job_files is not None else JOB_FILES)
    return merge(merge(conf, extra), overrides or {})


def node_sls_name(node_id) -> str:
    """``web-1`` -> ``node_web_1`` (the sls name of a node's pillar file)."""
    return "node_" + str(node_id).replace("-", "_").replace(".", "_")


def write_pillar(pillar_dir, project_conf: dict, node_confs: dict, secrets: dict | None = None,
                 project="rainbow", role=None, other_projects: dict | None = None,
                 node_projects: dict | None = None) -> dict:
    """Write top.sls, project.sls, secrets.sls and one node_<id>.sls per node into ``pillar_dir``.

    project_conf
        :func:`project_pillar` result, targeted at ``'*'`` (the master reads it too).
    node_confs
        ``{minion id: node_pillar(...)}``, each targeted at its minion id.
    secrets
        ``<project>_secrets`` (default :data:`SECRETS`), targeted at the compound
        ``G@roles:<role>`` only (role defaults to the project name): never the master.
    other_projects
        ``{name: conf}``: more projects in project.sls (e.g. a Tomcat app in the tests).
    node_projects
        ``{minion id: {name: conf}}``: those projects' per-node parts, in the node's file.

    Returns the top data.
    """
    os.makedirs(pillar_dir, exist_ok=True)
    role = role or project
    top = {"base": {"*": ["project"], f"G@roles:{role}": [{"match": "compound"}, "secrets"]}}
    node_projects = node_projects or {}
    own = {}  # minion id -> its sls
    for node in sorted(set(node_confs) | set(node_projects)):
        sls = node_sls_name(node)
        top["base"][node] = [sls]
        own[str(node)] = sls
        projects = dict(node_projects.get(node, {}))
        if node in node_confs:
            projects[project] = node_confs[node]
        dump(os.path.join(pillar_dir, f"{sls}.sls"), {"deploy": {"projects": projects}})
    projects = {**(other_projects or {}), project: project_conf}
    dump(os.path.join(pillar_dir, "project.sls"), {"deploy": {"projects": projects}})
    dump(os.path.join(pillar_dir, "secrets.sls"), {f"{project}_secrets": dict(SECRETS if secrets is None else secrets)})
    # One entry for the node files, chosen by the minion's id in Jinja: the master matches three
    # targets per pillar compile, not one per node (at 100 nodes that was most of a compile)
    common = {"base": {k: v for k, v in top["base"].items() if k not in own}}
    with open(os.path.join(pillar_dir, "top.sls"), "w", encoding="utf-8") as fh:
        yaml.safe_dump(common, fh, default_flow_style=False)
        fh.write("{%- set own = " + json.dumps(own, sort_keys=True) + " %}\n"
                 "{%- if grains.get('id') in own %}\n"
                 "  {{ grains['id'] }}:\n"
                 "  - {{ own[grains['id']] }}\n"
                 "{%- endif %}\n")
    return top
