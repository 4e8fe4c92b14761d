"""The project pillar (``deploy:projects:<project>``): every key, its type, its default, where it may appear.

:data:`PROJECT` is the one definition, written as a JSON Schema (draft 2020-12) subset: ``type``,
``properties``, ``additionalProperties``, ``required``, ``items``, ``enum``, ``default``,
``description``.  It drives

- :func:`problems` / :func:`check`: the runner's validation before the lock, the build or any node
  call: an unknown key at any level (with the nearest valid key: "did you mean"), a wrong type, a
  value outside its choices, a missing required key.  What a value means beyond its type (a batch
  size, a pause, the analysis limits, a hook's URL) stays checked where it is used
  (``config``, ``plan``, ``analysis``, ``notify``, the node module): one rule each;
- the shipped ``pillar/deploy.schema.json`` (:func:`json_schema`; ``python -m deploy_master.pillar_schema``
  writes it), for editors and CI linters.

A key a project declares for its own config templates (``deploy:projects:<project>:<key>`` in its
``template_pillar``) is the project's data, not a typo: it is accepted at the project level.

To add a project key: one line in :data:`PROJECT_KEYS` (or :data:`ENV_KEYS`, :data:`STAGE_KEYS`, ...),
then regenerate the schema file.
"""

import difflib
import json
import os
import sys

from salt.exceptions import SaltInvocationError

from deploy_master import gates, notify
from deploy_master.gates import analysis

ON_FAILURE = ("stop", "rollback")
LB_DRIVERS = ("none", "haproxy", "nginx")
VCS = ("git", "svn", "artifact")
RESTART_ACTIONS = ("start", "stop", "restart", "reload")  # the node module's RESTART_ACTIONS

SCHEMA_FILE = os.path.join("pillar", "deploy.schema.json")  # relative to the source checkout
SCHEMA_ID = "https://github.com/salt-deploy/salt-deploy/pillar/deploy.schema.json"

_PY_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def _key(type_, description, default=None, **more):
    out = {"type": type_, "description": description}
    if default is not None:
        out["default"] = default
    out.update(more)
    return out


def _obj(properties, description, required=(), **more):
    out = {"type": "object", "description": description, "properties": properties,
           "additionalProperties": False}
    if required:
        out["required"] = list(required)
    out.update(more)
    return out


def _map(values, description):
    """A dict whose keys are the user's (paths, minion ids, env names) and whose values are ``values``."""
    return {"type": "object", "description": description, "additionalProperties": values}


_STR_LIST = {"type": "array", "items": {"type": "string"}}
_SECONDS = ["number", "string"]  # the code reads seconds with float()/int(): '30' works as 30

LB_KEYS = {
    "name": _key("string", "the load balancer's name in progress lines, errors and the record (default "
                 "<minion>/<backend>, or <minion>/nginx)"),
    "driver": _key("string", "the load balancer: haproxy, nginx or none", "none", enum=list(LB_DRIVERS)),
    "minion": _key("string", "the minion that runs the load balancer (required unless driver none)"),
    "socket": _key("string", "haproxy: its admin socket"),
    "backend": _key("string", "haproxy: the backend holding the env's servers"),
    "drain_timeout": _key(_SECONDS, "longest wait, in seconds, for a draining server's sessions to end", 30),
    "servers": _map({"type": "string"}, "haproxy: minion id -> server name in the backend (default: the "
                    "minion id); nginx: minion id -> host:port of its server line (required)"),
    "upstream_file": _key("string", "nginx: the file holding the upstream's server lines (root's)"),
    "nginx": _key("array", "nginx: the command used for -t and -s reload", ["nginx"], items={"type": "string"}),
}

def _lb(description):
    """``lb``: one load balancer (a dict) or several (a list of them)."""
    return {"type": ["object", "array"], "description": description + ": one (a dict) or several (a list)",
            "properties": LB_KEYS, "additionalProperties": False, "items": _obj(LB_KEYS, "a load balancer")}


_ANALYSIS_TYPES = {"bake": _SECONDS, "interval": _SECONDS, "max_error_rate": "string",
                   "max_p95_ms": ["number", "string", "null"], "min_requests": ["integer", "string"]}
ANALYSIS_KEYS = {
    key: _key(_ANALYSIS_TYPES.get(key, "string"), f"analysis of live traffic: {key} (docs/analysis.md)",
              analysis.DEFAULTS[key], **({"enum": list(analysis.CHOICES[key])} if key in analysis.CHOICES else {}))
    for key in analysis.KEYS
}
# each provider's own keys (its module's PILLAR), beside the gate's
ANALYSIS_KEYS.update({key: spec for name in gates.PROVIDERS for key, spec in
                      getattr(gates.provider(name), "PILLAR", {}).items()})
_ANALYSIS = {"type": ["object", "boolean"],
             "description": "analysis of live traffic on the load balancer; a stage's changes some keys, false turns "
                            "it off there",
             "properties": ANALYSIS_KEYS, "additionalProperties": False}

HOOK_STEP_KEYS = {
    "name": _key("string", "the step's name in progress lines and the record", "the command or function"),
    "cmd": _key(["string", "array"], "a command run as the project user in the release folder, without a shell "
                "(a list of arguments, or a string split into them)", items={"type": "string"}),
    "timeout": _key(_SECONDS, "seconds a cmd step may take", 300),
    "fun": _key("string", "a Salt function (module.function) run by root on the node, not in the release"),
    "args": _key("array", "the Salt function's positional arguments", []),
    "kwargs": _map({}, "the Salt function's keyword arguments"),
}
_HOOK_STEPS = {"type": "array", "items": _obj(HOOK_STEP_KEYS, "a hook step: cmd or fun")}
HOOKS_KEYS = {
    "before_switch": {**_HOOK_STEPS, "description": "steps on each node, in the new release, before its switch"},
    "once": {**_HOOK_STEPS, "description": "steps on once_node before the first switch; once per release and env"},
    "after_release": {**_HOOK_STEPS, "description": "steps on once_node after the last batch"},
    "on_rollback": {**_HOOK_STEPS, "description": "steps on once_node before a normal rollback switches"},
    "once_node": _key("string", "the node running once, after_release and on_rollback",
                      "the preprod node, else the first node of the plan"),
}
_HOOKS = _obj(HOOKS_KEYS, "release hooks (docs/hooks.md); an env's phases replace the project's")

STAGE_KEYS = {
    "name": _key(["string", "integer"], "the stage's name (default stage<N>)"),
    "target": _key("string", "compound match of the stage's nodes (default: the env's nodes left)"),
    "batch": _key(["integer", "string"], "a whole number >= 1 or a percentage 1%-100% of the stage's nodes", "25%"),
    "pause": _key(["boolean", "integer", "null"], "after the stage: true waits for deploy.promote, N waits N seconds",
                  False),
    "analysis": _ANALYSIS,
}

ENV_KEYS = {
    "branch": _key("string", "the ref released when none is given", "master (git), trunk (svn)"),
    "target": _key("string", "compound match of the env's nodes (a target or a preprod is required)"),
    "preprod": _key("string", "the pre-production minion: released and checked first, not behind the LB"),
    "stages": _key("array", "stages of batches; nodes matched by no stage form a last stage 'rest'",
                   items=_obj(STAGE_KEYS, "a stage")),
    "max_failures": _key(["integer", "string"], "failed nodes a batch may have before the release stops", 0),
    "on_failure": _key("string", "what a failure does to the nodes this run switched", "stop", enum=list(ON_FAILURE)),
    "lb": _lb("the env's own load balancers, instead of the project's"),
    "lb_wait_up": _key(_SECONDS, "longest wait, in seconds, for a batch put back to be UP on every LB before the "
                       "next one leaves (0: no wait)", 30),
    "analysis": _ANALYSIS,
    "hooks": _HOOKS,
}

CHECK_KEYS = {
    "url": _key("string", "the address asked (on the node)"),
    "status": _key(["integer", "string"], "the expected HTTP status", 200),
    "contains": _key("string", "text the answer must contain; {release} stands for the release current points to"),
    "retries": _key(["integer", "string"], "attempts at least", 3),
    "delay": _key(_SECONDS, "longest seconds between two attempts", 1),
    "deadline": _key(_SECONDS, "seconds since the first attempt before the check fails", "(retries - 1) x delay"),
    "timeout": _key(_SECONDS, "seconds per attempt", 5),
    "headers": _map({"type": ["string", "number", "boolean"]}, "request headers"),
}

RESTART_KEYS = {
    "service": _key("string", "a service restarted through Salt's service module"),
    "action": _key("string", "what is done to the service", "restart", enum=list(RESTART_ACTIONS)),
    "cmd": _key("string", "a command run as the project user"),
    "name": _key("string", "the name shown in progress lines", "the command"),
    "timeout": _key(_SECONDS, "seconds a cmd step may take", 120),
    "clear": _key(["string", "array"], "directories emptied, kept", items={"type": "string"}),
}

NOTIFY_KEYS = {
    "url": _key("string", "http(s) address of the webhook; never logged or returned"),
    "format": _key("string", "the wire format", "json", enum=list(notify.FORMATS)),
    "events": _key("array", "the events posted", list(notify.EVENTS),
                   items={"type": "string", "enum": list(notify.EVENTS)}),
    "name": _key("string", "the hook's name in logs, instead of its URL"),
    "secret": _key("string", "DingTalk's signing secret"),
}

SVN_KEYS = {
    "username": _key("string", "the Subversion user"),
    "password": _key("string", "the Subversion password (master-only pillar)"),
    "timeout": _key(["integer", "string"], "seconds per svn call", 300),
    "trunk": _key("string", "the main line's folder", "trunk"),
}

PROJECT_KEYS = {
    "repo": _key("string", "git URL or path, or the Subversion URL, read by the master (not for vcs artifact)"),
    "root": _key("string", "per node: releases/, shared/, meta/, current (absolute, not '/')"),
    "vcs": _key("string", "where the code comes from", "git", enum=list(VCS)),
    "svn": _obj(SVN_KEYS, "Subversion's credentials, timeout and trunk path"),
    "user": _key("string", "owns the release files; cmd steps run as this user", "root"),
    "group": _key("string", "the release files' group", "the user"),
    "keep_releases": _key(["integer", "string"], "releases kept on each node", 5),
    "build": _key("array", "commands run by the master in a clean checkout before packaging", [],
                  items={"type": ["string", "array"], "items": {"type": "string"}}),
    "shared": _key("array", "relative paths linked to shared/ in every release", [], items={"type": "string"}),
    "writable": _key("array", "relative paths of a release the app user may write", [], items={"type": "string"}),
    "config": _map(_obj({"source": _key("string", "a path in the release or salt://"),
                         "mode": _key(["string", "integer"], "octal mode", "0640")},
                        "a config template", required=("source",)),
                   "release path -> template rendered per node into each release"),
    "template_pillar": _key("array", "the pillar keys the config templates see ('a:b:c' for nested)", [],
                            items={"type": "string"}),
    "template_grains": _key("array", "the grains the config templates see", "id, host, fqdn, os, ipv4, ...",
                            items={"type": "string"}),
    "template_limits": _obj({"seconds": _key(_SECONDS, "wall and CPU seconds per config file", 5),
                             "bytes": _key(["integer", "number"], "the largest rendered config file", 1048576),
                             "memory": _key(["integer", "number"], "memory a file's renderer may add", 268435456)},
                            "bounds of each config file's rendering"),
    "files": _map(_obj({"contents": _key(["string", "number", "boolean"], "the file's contents"),
                        "mode": _key(["string", "integer"], "octal mode", "0644")},
                       "a per-node file", required=("contents",)),
                  "release path -> extra per-node file"),
    "restart": _key("array", "steps after the switch, in order: service, cmd or clear", [],
                    items=_obj(RESTART_KEYS, "a restart step")),
    "checks": _key("array", "checks run on each node after its switch", [], items=_obj(CHECK_KEYS, "a check")),
    "lb": _lb("the project's load balancers"),
    "lb_wait_up": _key(_SECONDS, "longest wait, in seconds, for a batch put back to be UP on every LB before the "
                       "next one leaves (0: no wait); an env's own wins", 30),
    "notify": _key("array", "webhooks told of a run's events", [], items=_obj(NOTIFY_KEYS, "a hook")),
    "subdir": _key("string", "git, svn: release only this folder of the repository (its contents)"),
    "submodules": _key("boolean", "git: include submodules, at the commits the release's tree records", False),
    "submodule_urls": _key("array", "git: URL prefixes a submodule may be fetched from, beyond the repo's host",
                           [], items={"type": "string"}),
    "artifact": _obj({"url": _key("string", "https://, salt:// or a file on the master (deploy_artifact_dirs)"),
                      "sha256": _key("string", "the artifact's sha256 (64 hex digits), checked before anything"),
                      "timeout": _key(["integer", "number"], "seconds for the download", 300),
                      "max_bytes": _key("integer", "the largest artifact, unpacked", 2147483648)},
                     "vcs artifact: bytes built elsewhere (tar.gz, zip or WAR)"),
    "hooks": _HOOKS,
    "envs": _map(_obj(ENV_KEYS, "an env"), "env name -> its definition"),
    # a new project key: one line here, then `python -m deploy_master.pillar_schema` (writes the schema file)
}

PROJECT = _obj(PROJECT_KEYS, "a project: deploy:projects:<project>", required=("root", "envs"))


# --------------------------------------------------------------------------- validation


def _type_ok(value, types):
    for name in [types] if isinstance(types, str) else types:
        if isinstance(value, _PY_TYPES[name]) and not (isinstance(value, bool) and name in ("integer", "number")):
            return True
    return False


def _type_names(types):
    names = [types] if isinstance(types, str) else list(types)
    words = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
             "array": "a list", "object": "a dict", "null": "null"}
    return " or ".join(words[n] for n in names)


def _where(path):
    return path or "the project"


def _walk(value, schema, path, out, shape_only, extra_keys=()):
    types = schema.get("type")
    if types is not None and not _type_ok(value, types):
        out.append(("type", f"{_where(path)}: {type(value).__name__} {value!r} must be {_type_names(types)}"
                    if not shape_only else f"{_where(path)}: must be {_type_names(types)}"))
        return
    if "enum" in schema and not shape_only and value not in schema["enum"]:
        out.append(("value", f"{_where(path)}: {value!r} must be one of {', '.join(map(str, schema['enum']))}"))
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        more = schema.get("additionalProperties", True)
        for key in () if shape_only else schema.get("required", ()):
            if key not in value or value[key] in (None, "", [], {}):
                out.append(("missing", f"{path + ': ' if path else ''}pillar is missing {key!r}"))
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in props:
                _walk(item, props[key], sub, out, shape_only)
            elif key in extra_keys:
                continue
            elif more is False:
                out.append(("unknown", _unknown(key, list(props), path)))
            elif isinstance(more, dict):
                _walk(item, more, sub, out, shape_only)
    elif isinstance(value, (list, tuple)) and "items" in schema:
        for index, item in enumerate(value):
            _walk(item, schema["items"], f"{path}[{index}]", out, shape_only)


def unknown_key(key, accepted, path):
    """``unknown key 'x' in <path>; did you mean 'y'?`` (or the keys accepted)."""
    return _unknown(key, accepted, path)


def _unknown(key, accepted, path):
    where = f" in {path}" if path else ""
    near = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.6)
    if near:
        return f"unknown key {key!r}{where}; did you mean {near[0]!r}?"
    return f"unknown key {key!r}{where}; accepted: {', '.join(accepted)}"


def declared_keys(conf, project):
    """The project-level keys the project declares for its own templates (``deploy:projects:<project>:<key>``)."""
    prefix = f"deploy:projects:{project}:"
    declared = conf.get("template_pillar") if isinstance(conf, dict) else None
    if not isinstance(declared, (list, tuple)):
        return set()
    return {k[len(prefix):].split(":")[0] for k in declared if isinstance(k, str) and k.startswith(prefix)} - {""}


def problems(conf, project, shape_only=False, unknown_only=False):
    """Everything wrong with the project definition ``conf``, each as one line (empty: valid).

    ``shape_only``: ``conf`` is :func:`shape` of a definition (keys and types, no values): only the
    keys and the types are checked.  ``unknown_only``: only the unknown keys."""
    if not isinstance(conf, dict):
        return [] if unknown_only else [f"must be a dict (deploy:projects:{project})"]
    out = []
    _walk(conf, PROJECT, "", out, shape_only, declared_keys(conf, project))
    return [text for kind, text in out if kind == "unknown" or not unknown_only]


def check(conf, project, unknown_only=False):
    """Raise one SaltInvocationError (bad input) naming the first problem of ``conf`` and how many more."""
    found = problems(conf, project, unknown_only=unknown_only)
    if found:
        more = (f" (and {len(found) - 1} more: salt-run deploy.validate project={project})"
                if len(found) > 1 else "")
        raise SaltInvocationError(f"project {project!r}: {found[0]}{more}")


def shape(value):
    """``value`` with every leaf replaced by an empty value of its type: what a node reports of its
    pillar for :func:`problems` (``shape_only``) without a value leaving it."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [shape(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value and False
    return type(value)() if isinstance(value, (str, int, float)) else ""


# --------------------------------------------------------------------------- the JSON Schema file


def json_schema():
    """The shipped JSON Schema of a pillar file's ``deploy`` data (``pillar/deploy.schema.json``)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "salt-deploy pillar (generated from deploy_master/pillar_schema.py: do not edit)",
        "type": "object",
        "properties": {
            "deploy": {
                "type": "object",
                "properties": {"projects": {
                    "type": "object",
                    "description": "project name ([a-z0-9][a-z0-9_-]*) -> its definition",
                    "additionalProperties": PROJECT,
                }},
            },
        },
    }


def json_text():
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv=None):
    """``python -m deploy_master.pillar_schema [FILE]``: write the JSON Schema (default: stdout)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stdout.write(json_text())
        return 0
    with open(argv[0], "w", encoding="utf-8") as fh:
        fh.write(json_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
