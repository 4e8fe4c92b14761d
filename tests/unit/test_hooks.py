"""Release hooks (deploy_master.hooks): parse, plan, "already released here" (pure)."""

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError, config, hooks

ENV = {"target": "G@roles:rainbow", "preprod": "pre-1"}
PROJECT = {"repo": "/srv/git/rainbow.git", "root": "/data/www/rainbow", "user": "www-data", "envs": {"pro": ENV}}
PLAN = {"nodes": ["pre-1", "web-1", "web-2"], "preprod": "pre-1",
        "stages": [{"name": "all", "batches": [["web-2"], ["web-1"]]}]}


def _pillar(project=None, env=None):
    conf = {**PROJECT, **(project or {})}
    conf["envs"] = {"pro": {**ENV, **(env or {})}}
    return {"deploy": {"projects": {"rainbow": conf}}}


def test_steps_are_normalised_a_string_is_split_never_given_to_a_shell():
    out = hooks.parse({"user": "www-data", "hooks": {
        "once": [{"name": "migrate", "cmd": "php artisan migrate --force"}],
        "before_switch": [{"cmd": ["php", "artisan", "config:cache"], "timeout": 60},
                          {"cmd": "echo 'a b; rm -rf /'"}],
        "after_release": [{"name": "purge", "fun": "http.query", "args": ["https://cdn/purge"],
                           "kwargs": {"method": "POST"}}],
    }})
    assert out["once"] == [{"name": "migrate", "cmd": ["php", "artisan", "migrate", "--force"], "timeout": 300.0}]
    assert out["before_switch"][0] == {"name": "php", "cmd": ["php", "artisan", "config:cache"], "timeout": 60.0}
    assert out["before_switch"][1]["cmd"] == ["echo", "a b; rm -rf /"]  # one argument, no shell
    assert out["after_release"] == [{"name": "purge", "fun": "http.query", "args": ["https://cdn/purge"],
                                     "kwargs": {"method": "POST"}}]
    assert out["on_rollback"] == [] and out["once_node"] is None
    assert not hooks.declared(hooks.parse({}))


def test_an_env_replaces_the_projects_phases_one_by_one():
    conf = {"user": "app", "hooks": {"once": [{"cmd": "a"}], "after_release": [{"cmd": "b"}]}}
    out = hooks.parse(conf, {"hooks": {"once": [], "once_node": "web-1"}})
    assert out["once"] == [] and out["after_release"][0]["cmd"] == ["b"] and out["once_node"] == "web-1"


@pytest.mark.parametrize("hooks_value,message", [
    ({"once": {"cmd": "x"}}, "once must be a list of steps"),
    ({"once": ["x"]}, "once step 1 must be a dict"),
    ({"once": [{"name": "m"}]}, "give either cmd (a command) or fun"),
    ({"once": [{"cmd": "x", "fun": "test.ping"}]}, "give either cmd (a command) or fun"),
    ({"once": [{"cmd": ""}]}, "cmd is empty"),
    ({"once": [{"cmd": "echo 'open"}]}, "cannot be split into arguments"),
    ({"once": [{"cmd": ["a", 1]}]}, "cmd must be a string or a list of strings"),
    ({"once": [{"cmd": "x", "timeout": 0}]}, "timeout 0 must be a number of seconds > 0"),
    ({"once": [{"cmd": "x", "timeout": True}]}, "must be a number of seconds > 0"),
    ({"once": [{"cmd": "x", "args": []}]}, "args goes with fun"),
    ({"once": [{"fun": "cmd.run", "args": ["php artisan migrate"]}]}, "would run commands as root"),
    ({"once": [{"fun": "state.apply"}]}, "would run commands as root"),
    ({"once": [{"fun": "nope"}]}, "must name a Salt function as module.function"),
    ({"once": [{"fun": "test.ping", "args": "x"}]}, "args must be a list"),
    ({"once": [{"fun": "test.ping", "timeout": 3}]}, "timeout goes with cmd"),
    ({"once": [{"cmd": "x", "nmae": "m"}]}, "unknown key 'nmae'"),
    ({"once_node": ""}, "once_node must be a minion id"),
])
def test_a_bad_step_is_named(hooks_value, message):
    with pytest.raises(SaltInvocationError, match=None) as exc:
        hooks.parse({"user": "app", "hooks": hooks_value}, None, "project 'rainbow'")
    assert message in str(exc.value) and str(exc.value).startswith("project 'rainbow'")


def test_cmd_steps_need_a_project_user_other_than_root():
    for conf in ({}, {"user": "root"}):
        with pytest.raises(SaltInvocationError, match="the release's files are not run as root"):
            hooks.parse({**conf, "hooks": {"before_switch": [{"cmd": "php artisan config:cache"}]}})
    assert hooks.parse({"hooks": {"once": [{"fun": "test.ping"}]}})["once"][0]["fun"] == "test.ping"


def test_the_pillar_is_checked_by_config_with_did_you_mean_per_env():
    conf, envc = config.project_env(_pillar(env={"hooks": {"once": [{"cmd": "php artisan migrate"}]}}),
                                    "rainbow", "pro")
    assert hooks.parse(conf, envc)["once"][0]["cmd"] == ["php", "artisan", "migrate"]
    with pytest.raises(SaltInvocationError, match="unknown key 'befor_switch' in envs.pro.hooks; did you mean "
                                                  "'before_switch'"):
        config.project_env(_pillar(env={"hooks": {"befor_switch": []}}), "rainbow", "pro")
    with pytest.raises(SaltInvocationError, match=r"unknown key 'tmeout' in hooks.once\[0\]; did you mean 'timeout'"):
        config.project_env(_pillar({"hooks": {"once": [{"cmd": "x", "tmeout": 3}]}}), "rainbow", "pro")
    with pytest.raises(SaltInvocationError, match="project 'rainbow' env 'pro': hooks.once step 1: fun 'cmd.run'"):
        config.project_env(_pillar(env={"hooks": {"once": [{"fun": "cmd.run"}]}}), "rainbow", "pro")


def test_the_once_node():
    assert hooks.once_node({"once_node": None}, PLAN) == "pre-1"
    assert hooks.once_node({"once_node": "web-1"}, PLAN) == "web-1"
    assert hooks.once_node({"once_node": None}, {**PLAN, "preprod": None}) == "web-2"  # the first switched
    with pytest.raises(DeployError, match="once_node 'db-1' is not a node of the env"):
        hooks.once_node({"once_node": "db-1"}, PLAN)


def test_released_before_reads_the_envs_history():
    ok_once = {"kind": "release", "release": "r1", "result": "failure", "hooks": {"once": {"result": True}}}
    assert hooks.released_before([ok_once], "r1")
    assert hooks.released_before([{"kind": "release", "release": "r1", "result": "success"}], "r1")
    assert not hooks.released_before([{"kind": "release", "release": "r1", "result": "failure",
                                       "hooks": {"once": {"result": False}}}], "r1")
    assert not hooks.released_before([{"kind": "rollback", "release": "r1", "result": "success"}], "r1")
    assert not hooks.released_before([{"kind": "release", "release": "r0", "result": "success"}], "r1")
    assert not hooks.released_before([], "r1")


def test_the_plan_lists_the_hooks():
    parsed = hooks.parse({"user": "app", "hooks": {"once": [{"name": "migrate", "cmd": "m"}],
                                                   "before_switch": [{"name": "cache", "cmd": "c"}],
                                                   "after_release": [{"name": "purge", "fun": "test.ping"}],
                                                   "on_rollback": [{"name": "down", "cmd": "d"}]}})
    assert hooks.describe(parsed, "pre-1") == [
        "hooks once on pre-1, before the first switch: migrate",
        "hooks before_switch on each node, in the new release: cache",
        "hooks after_release on pre-1, after the last batch: purge",
    ]
    assert hooks.describe(parsed, "pre-1", once_skipped=True)[0].endswith("(skipped: already released to this env)")
    assert hooks.describe(parsed, "pre-1", "rollback") == ["hooks on_rollback on pre-1, before the first switch: down"]


def test_a_failed_phase_says_step_exit_code_and_tail():
    ret = {"ok": False, "error": "x", "ret": {"steps": [
        {"step": "cache", "result": True, "retcode": 0, "seconds": 0.1},
        {"step": "migrate", "result": False, "retcode": 3, "output": "SQLSTATE", "seconds": 0.2}]}}
    assert hooks.error_line("once", "pre-1", ret) == "hooks once on pre-1: step 'migrate' failed (exit 3): SQLSTATE"
    assert hooks.summary(ret) == {"result": False, "error": "x", "steps": [
        {"step": "cache", "result": True, "retcode": 0, "seconds": 0.1},
        {"step": "migrate", "result": False, "retcode": 3, "seconds": 0.2}]}  # no output in the record
    assert hooks.error_line("once", "pre-1", {"ok": False, "error": "no response"}) == \
        "hooks once on pre-1: no response"


def test_the_nodes_copy_of_the_hook_function_rule_is_the_masters():
    # the node module stays self-contained: it keeps a copy of the rule a fun step is checked by
    from saltext_deploy._modules import deploy as node  # pylint: disable=import-outside-toplevel

    assert node.HOOK_FUN_RE.pattern == hooks.FUN_RE.pattern
    assert tuple(node.HOOK_ROOT_RUNNERS) == tuple(hooks.ROOT_RUNNERS)
