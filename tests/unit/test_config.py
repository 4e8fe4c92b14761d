"""The project/env definition (deploy_master.config): validated from a pillar dict, no Salt globals."""

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import config, statedir

ENV = {"target": "G@roles:rainbow", "preprod": "pre-1", "stages": [{"name": "gray", "batch": 1}]}
PROJECT = {"repo": "/srv/git/rainbow.git", "root": "/data/www/rainbow", "envs": {"pro": ENV},
           "lb": {"driver": "haproxy", "minion": "lb-1"}}


def _pillar(**changes):
    return {"deploy": {"projects": {"rainbow": {**PROJECT, **changes}}}}


def test_project_and_env():
    conf, envc = config.project_env(_pillar(), "rainbow", "pro")
    assert conf["repo"] == "/srv/git/rainbow.git" and envc is ENV
    assert config.project_env(_pillar(), "rainbow") == (conf, None)
    assert config.load_balancer(conf, envc) == {"driver": "haproxy", "minion": "lb-1"}
    assert config.load_balancer(conf, {**envc, "lb": {"driver": "none"}}) == {"driver": "none"}
    assert config.load_balancer({}, {}) == {"driver": "none"}


@pytest.mark.parametrize("pillar,project,env,message", [
    (_pillar(), "nope", "pro", "unknown project 'nope': the master's pillar deploy:projects has rainbow"),
    ({}, "rainbow", "pro", "unknown project 'rainbow': the master's pillar deploy:projects has none"),
    (_pillar(), "rainbow", "qa", "unknown env 'qa' for project 'rainbow': pillar has pro"),
    (_pillar(), "../x", "pro", "invalid project name '../x'"),
    (_pillar(), "rainbow", "p r o", "invalid env name 'p r o'"),
    (_pillar(repo=""), "rainbow", "pro", "project 'rainbow': pillar is missing 'repo'"),
    (_pillar(root="data/www"), "rainbow", "pro", "root 'data/www' must be an absolute path other than '/'"),
    (_pillar(root="/x/.."), "rainbow", "pro", "must be an absolute path other than '/'"),
    (_pillar(envs={"pro": {"branch": "master"}}), "rainbow", "pro", "give a 'target'"),
    (_pillar(envs={"pro": {**ENV, "stages": ["gray"]}}), "rainbow", "pro", "stage 1 must be a dict"),
    (_pillar(envs={"pro": {**ENV, "stages": [{"name": "gray", "batch": "150%"}]}}), "rainbow", "pro",
     "env 'pro' stage 'gray': batch '150%' must be"),
    (_pillar(lb={"driver": "f5"}), "rainbow", "pro", "unknown lb driver 'f5'"),
    (_pillar(lb={"driver": "nginx"}), "rainbow", "pro", "lb needs the 'minion'"),
    (_pillar(envs={"pro": {**ENV, "max_failures": "some"}}), "rainbow", "pro", "max_failures must be a whole number"),
])
def test_bad_definitions_are_named(pillar, project, env, message):
    with pytest.raises(SaltInvocationError, match=__import__("re").escape(message)):
        config.project_env(pillar, project, env)


def test_master_options(tmp_path):
    opts = {"cachedir": str(tmp_path)}
    assert statedir.folder(opts, "git") == str(tmp_path / "deploy" / "git") and (tmp_path / "deploy" / "git").is_dir()
    assert statedir.folder({**opts, "deploy_state_dir": str(tmp_path / "s")}) == str(tmp_path / "s")
    assert statedir.base(opts) == str(tmp_path / "deploy")
    assert config.timeout(opts) == 15 and config.timeout({"deploy_timeout": "3"}) == 3


# --- gates between stages: pause and on_failure


@pytest.mark.parametrize("value,expected", [(True, True), (False, None), (None, None), (300, 300), (1, 1)])
def test_stage_pause(value, expected):
    stages = [{"name": "gray", "batch": 1, "pause": value}, {"name": "all"}]
    _, envc = config.project_env(_pillar(envs={"pro": {**ENV, "stages": stages}}), "rainbow", "pro")
    assert config.stage_pause(envc["stages"][0], "gray") == expected
    assert config.stage_pause(envc["stages"][1], "all") is None


@pytest.mark.parametrize("value", [0, -5, "300", "yes", 1.5, [1], {"s": 1}])
def test_a_bad_pause_is_named(value):
    stages = [{"name": "gray", "batch": 1, "pause": value}]
    with pytest.raises(SaltInvocationError, match=r"env 'pro' stage 'gray': pause .* must be true \(wait for "
                                                  r"deploy.promote\), false, or a whole number of seconds >= 1"):
        config.project_env(_pillar(envs={"pro": {**ENV, "stages": stages}}), "rainbow", "pro")


def test_on_failure():
    _, envc = config.project_env(_pillar(), "rainbow", "pro")
    assert config.on_failure(envc) == "stop"
    for value in ("stop", "rollback"):
        _, envc = config.project_env(_pillar(envs={"pro": {**ENV, "on_failure": value}}), "rainbow", "pro")
        assert config.on_failure(envc) == value
    for value in ("revert", "", True, 1):
        with pytest.raises(SaltInvocationError, match=r"env 'pro': on_failure .* must be 'stop' \(the default\) "
                                                      r"or 'rollback'"):
            config.project_env(_pillar(envs={"pro": {**ENV, "on_failure": value}}), "rainbow", "pro")
