"""The one definition of the project pillar (deploy_master.pillar_schema): unknown keys at every level
with the nearest valid key, wrong types, the shipped JSON Schema file, and every example pillar."""

import copy
import glob
import json
import os
import re
import textwrap

import pytest
import yaml
from salt.exceptions import SaltInvocationError

from deploy_master import config, pillar_schema
from saltext_deploy._modules import deploy_lb

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGE = {"name": "gray", "target": "G@region:east", "batch": 1, "pause": True,
         "analysis": {"bake": 30}}
ENV = {"branch": "master", "target": "G@roles:rainbow", "preprod": "pre-1", "stages": [STAGE],
       "max_failures": 0, "on_failure": "rollback", "lb": {"driver": "haproxy", "minion": "lb-1"}, "analysis": {"bake": 60, "max_error_rate": "1%"}}
PROJECT = {
    "repo": "/srv/git/rainbow.git", "root": "/data/www/rainbow", "user": "www", "group": "www",
    "keep_releases": 5, "build": [], "shared": ["storage/logs"], "writable": ["var/cache"],
    "config": {"config/app.ini": {"source": "config/app.ini.example", "mode": "0640"}},
    "template_pillar": ["rainbow_secrets"], "files": {"config/crontab.xml": {"contents": "x", "mode": "0644"}},
    "restart": [{"service": "php8.2-fpm", "action": "reload"}, {"cmd": "true", "timeout": 5, "name": "t"},
                {"clear": ["/tmp/x"]}],
    "checks": [{"url": "http://127.0.0.1/", "status": 200, "contains": "ok", "retries": 3, "delay": 0.5,
                "headers": {"Host": "x"}}],
    "lb": {"driver": "haproxy", "minion": "lb-1", "socket": "/run/haproxy/admin.sock", "backend": "rainbow",
           "drain_timeout": 30, "servers": {"web-1": "web1"}},
    "notify": [{"url": "https://h/x", "format": "slack", "events": ["failure"]}],
    "envs": {"pro": ENV},
}


def _with(path, value):
    """PROJECT with ``value`` set at ``path`` (a list of keys and indexes)."""
    conf = copy.deepcopy(PROJECT)
    node = conf
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return conf


def test_a_full_project_is_valid():
    assert pillar_schema.problems(PROJECT, "rainbow") == []
    assert config.project_env({"deploy": {"projects": {"rainbow": PROJECT}}}, "rainbow", "pro")[1] is ENV


@pytest.mark.parametrize("path,typo,message", [
    ([], "keep_release", "unknown key 'keep_release'; did you mean 'keep_releases'?"),
    (["envs", "pro"], "on_faliure", "unknown key 'on_faliure' in envs.pro; did you mean 'on_failure'?"),
    (["envs", "pro", "stages", 0], "pasue", "unknown key 'pasue' in envs.pro.stages[0]; did you mean 'pause'?"),
    (["envs", "pro", "analysis"], "bak", "unknown key 'bak' in envs.pro.analysis; did you mean 'bake'?"),
    (["envs", "pro", "stages", 0, "analysis"], "min_request",
     "unknown key 'min_request' in envs.pro.stages[0].analysis; did you mean 'min_requests'?"),
    (["lb"], "drain_timout", "unknown key 'drain_timout' in lb; did you mean 'drain_timeout'?"),
    (["envs", "pro", "lb"], "minon", "unknown key 'minon' in envs.pro.lb; did you mean 'minion'?"),
    (["checks", 0], "contain", "unknown key 'contain' in checks[0]; did you mean 'contains'?"),
    (["restart", 1], "timout", "unknown key 'timout' in restart[1]; did you mean 'timeout'?"),
    (["notify", 0], "evnets", "unknown key 'evnets' in notify[0]; did you mean 'events'?"),
    (["config", "config/app.ini"], "sorce", "unknown key 'sorce' in config.config/app.ini; did you mean 'source'?"),
    (["files", "config/crontab.xml"], "content",
     "unknown key 'content' in files.config/crontab.xml; did you mean 'contents'?"),
    (["svn"], "usrname", "unknown key 'usrname' in svn; did you mean 'username'?"),
    ([], "zzz", "unknown key 'zzz'; accepted: repo, root, vcs, svn, user, group, keep_releases"),
])
def test_a_typo_at_any_level_is_refused_with_the_nearest_key(path, typo, message):
    conf = copy.deepcopy(PROJECT)
    conf.setdefault("svn", {})
    node = conf
    for key in path:
        node = node[key]
    node[typo] = "rollback"
    found = pillar_schema.problems(conf, "rainbow")
    assert len(found) == 1 and found[0].startswith(message), found
    with pytest.raises(SaltInvocationError, match=re.escape(f"project 'rainbow': {message}")):
        config.project_env({"deploy": {"projects": {"rainbow": conf}}}, "rainbow", "pro")


@pytest.mark.parametrize("path,value,message", [
    (["keep_releases"], [3], "keep_releases: list [3] must be a whole number or a string"),
    (["keep_releases"], True, "keep_releases: bool True must be a whole number or a string"),
    (["shared"], "storage/logs", "shared: str 'storage/logs' must be a list"),
    (["writable"], [1], "writable[0]: int 1 must be a string"),
    (["envs", "pro", "target"], ["a"], "envs.pro.target: list ['a'] must be a string"),
    (["lb", "servers"], {"web-1": 8080}, "lb.servers.web-1: int 8080 must be a string"),
    (["checks", 0, "url"], None, "checks[0].url: NoneType None must be a string"),
    (["config"], ["config/app.ini"], "config: list ['config/app.ini'] must be a dict"),
    (["restart", 0, "action"], "bounce", "restart[0].action: 'bounce' must be one of start, stop, restart, reload"),
    (["envs", "test"], {"target": "x", "on_failure": "revert"},
     "envs.test.on_failure: 'revert' must be one of stop, rollback"),
])
def test_wrong_types_and_choices_are_named(path, value, message):
    found = pillar_schema.problems(_with(path, value), "rainbow")
    assert found and found[0] == message, found


def test_the_first_problem_and_how_many_more():
    conf = _with(["envs", "pro", "on_faliure"], "rollback")
    conf["keep_release"] = 3
    with pytest.raises(SaltInvocationError) as err:
        pillar_schema.check(conf, "rainbow")
    assert str(err.value) == ("project 'rainbow': unknown key 'on_faliure' in envs.pro; did you mean 'on_failure'? "
                              "(and 1 more: salt-run deploy.validate project=rainbow)")


def test_a_key_the_project_declares_for_its_templates_is_its_data():
    conf = {**PROJECT, "greeting": "hola", "template_pillar": ["rainbow_secrets", "deploy:projects:rainbow:greeting"]}
    assert pillar_schema.problems(conf, "rainbow") == []
    assert pillar_schema.problems({**conf, "greting": "x"}, "rainbow")[0].startswith("unknown key 'greting'")
    assert pillar_schema.problems(conf, "other")[0].startswith("unknown key 'greeting'")


def test_the_shape_of_a_node_pillar_carries_no_value():
    conf = _with(["svn"], {"password": "s3cret"})
    shape = pillar_schema.shape(conf)
    assert "s3cret" not in json.dumps(shape) and "/srv/git" not in json.dumps(shape)
    assert shape["envs"]["pro"]["stages"][0]["batch"] == 0 and shape["checks"][0]["delay"] == 0.0
    assert pillar_schema.problems(shape, "rainbow", shape_only=True) == []
    bad = pillar_schema.shape(_with(["envs", "pro", "on_faliure"], "rollback"))
    assert pillar_schema.problems(bad, "rainbow", shape_only=True) == [
        "unknown key 'on_faliure' in envs.pro; did you mean 'on_failure'?"]


def test_the_shipped_schema_file_is_the_generated_one():
    """Regenerate with: python -m deploy_master.pillar_schema pillar/deploy.schema.json"""
    with open(os.path.join(TOP, pillar_schema.SCHEMA_FILE), encoding="utf-8") as fh:
        assert fh.read() == pillar_schema.json_text()


def test_the_schema_file_agrees_with_the_validator():
    import jsonschema  # pylint: disable=import-outside-toplevel  # the tests extra installs it
    schema = pillar_schema.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"deploy": {"projects": {"rainbow": PROJECT}}}))
    bad = _with(["envs", "pro", "on_faliure"], "rollback")
    assert list(validator.iter_errors({"deploy": {"projects": {"rainbow": bad}}}))


# --------------------------------------------------------------------------- every example pillar


def _merge(base, extra):
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _documents():
    """The documentation's text: the pillar reference first (its full example is the base of the
    fragments), then the README and the other docs/ files."""
    first = os.path.join(TOP, "docs", "pillar.md")
    paths = [first, os.path.join(TOP, "README.md"),
             *sorted(p for p in glob.glob(os.path.join(TOP, "docs", "*.md")) if p != first)]
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            yield os.path.relpath(path, TOP), fh.read()


def readme_project_pillars():
    """The ```yaml blocks of the docs (README.md, docs/*.md) that are project pillar, each as a whole pillar.

    The full example (``deploy: projects: ...``) stands alone; a fragment is placed by its
    indentation as in the full example (4: a project, 6: project keys, 10: env keys) onto the
    first full example.  ``…`` marks an elision in a fragment and is dropped."""
    base, out = None, []
    for name, text in _documents():
        for match in re.finditer(r"^( *)```yaml\n(.*?)^\1```", text, re.M | re.S):
            block = match.group(2)
            first = next(line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#"))
            indent = len(first) - len(first.lstrip()) - len(match.group(1))
            doc = yaml.safe_load(textwrap.dedent(re.sub(r",\s*…", "", block)))
            if indent == 0 and isinstance(doc, dict) and "projects" in (doc.get("deploy") or {}):
                pillar = doc if base is None else _merge(base, doc)
                base = base or doc
            elif base is not None and indent in (4, 6, 10):
                project = _merge(base["deploy"]["projects"]["rainbow"], {})
                if indent == 4:
                    pillar = _merge(base, {"deploy": {"projects": doc}})
                elif indent == 6:
                    pillar = _merge(base, {"deploy": {"projects": {"rainbow": doc}}})
                else:
                    project["envs"]["pro"] = _merge(project["envs"]["pro"], doc)
                    pillar = _merge(base, {"deploy": {"projects": {"rainbow": project}}})
            else:
                continue
            out.append((f"{name} at character {match.start()}", pillar))
    return out


def pillar_files():
    folder = os.path.join(TOP, "pillar", "deploy")
    merged = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            merged = _merge(merged, yaml.safe_load(fh) or {})
    return merged


def test_every_readme_project_pillar_validates():
    found = readme_project_pillars()
    assert len(found) >= 5, "the docs' project pillar examples were not found"
    for offset, pillar in found:
        for project, conf in pillar["deploy"]["projects"].items():
            assert pillar_schema.problems(conf, project) == [], f"the block in {offset}"
            for env in conf["envs"]:
                config.project_env(pillar, project, env)


def test_the_pillar_folder_validates():
    pillar = pillar_files()
    for project, conf in pillar["deploy"]["projects"].items():
        assert pillar_schema.problems(conf, project) == []
        for env in conf["envs"]:
            config.project_env(pillar, project, env)


def test_the_node_knows_the_lb_drivers_the_pillar_allows():
    # the LB drivers are named once on each side: pillar_schema.LB_DRIVERS (master), deploy_lb.DRIVERS (node)
    assert set(pillar_schema.LB_DRIVERS) == {"none", *deploy_lb.DRIVERS}
