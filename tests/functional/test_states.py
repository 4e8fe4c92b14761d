"""The states deploy.prepared / deploy.active / deploy.rolled_back: idempotent, and test=True changes nothing."""

import os

from tests.functional.fnlib import PROJECT


def test_prepared(project):
    url, _, checksum = project.artifact("r1")
    kwargs = {"name": "r1", "project": PROJECT, "source": url, "checksum": checksum, "meta": {"version": "v1"}}

    ret = project.states.prepared(test=True, **kwargs)
    assert ret.result is None
    assert "would be prepared" in ret.comment
    assert ret.changes == {"prepared": "r1"}
    assert not os.path.exists(project.path("releases"))

    ret = project.states.prepared(**kwargs)
    assert ret.result is True
    assert ret.changes == {"prepared": project.release_dir("r1")}
    assert project.meta("r1")["version"] == "v1"
    before = project.tree()

    for test in (False, True):
        ret = project.states.prepared(test=test, **kwargs)
        assert ret.result is True
        assert ret.changes == {}
        assert "already prepared" in ret.comment
    assert project.tree() == before

    # same name, other artifact: refused, untouched
    other_url, _, other = project.artifact("r1-other", marker="other code")
    ret = project.states.prepared(**{**kwargs, "source": other_url, "checksum": other})
    assert ret.result is False and "different checksum" in ret.comment
    assert project.tree() == before


def test_prepared_failure_is_reported(project):
    url, _, _ = project.artifact("r1")
    ret = project.states.prepared(name="r1", project=PROJECT, source=url, checksum="0" * 64)
    assert ret.result is False
    assert "checksum mismatch" in ret.comment
    ret = project.states.prepared(name="../r1", project=PROJECT, source=url, checksum="0" * 64)
    assert ret.result is False
    assert "invalid release name" in ret.comment
    assert project.release_names() == []


def test_active(project):
    project.deploy("r1")
    project.prepare("r2")
    before = project.tree()

    ret = project.states.active(name="r2", project=PROJECT, test=True)
    assert ret.result is None
    assert "would be switched from r1 to r2" in ret.comment
    assert ret.changes == {"current": {"old": "r1", "new": "r2"}}
    assert project.tree() == before

    ret = project.states.active(name="r2", project=PROJECT)
    assert ret.result is True
    assert ret.changes == {"current": {"old": "r1", "new": "r2"}}
    assert project.current == "r2"
    before = project.tree()

    for test in (False, True):
        ret = project.states.active(name="r2", project=PROJECT, test=test)
        assert ret.result is True
        assert ret.changes == {}
        assert "already current" in ret.comment
    assert project.tree() == before

    ret = project.states.active(name="r9", project=PROJECT)
    assert ret.result is False and "not prepared" in ret.comment
    assert project.current == "r2"


def test_active_with_failing_checks(project, web):
    from tests.functional.test_switch import _broken, _checks

    project.write_pillar(checks=_checks(web))
    project.deploy("r1")
    project.prepare("r2", files=_broken())
    ret = project.states.active(name="r2", project=PROJECT)
    assert ret.result is False
    assert "failed at checks" in ret.comment and "switched back to r1" in ret.comment
    assert ret.changes == {}
    assert project.current == "r1"
    # the failed release was switched away from and marked bad: that is "rolled back" already
    ret = project.states.rolled_back(name=PROJECT)
    assert ret.result is True and ret.changes == {} and "already rolled back to r1" in ret.comment


def test_prepared_then_active_in_one_sls(project, loaders, base_dir):
    # the documented use: two states with a requisite, applied together
    url, _, checksum = project.artifact("r1")
    sls = os.path.join(base_dir, "files", "dpl_fn_release.sls")
    with open(sls, "w", encoding="utf-8") as fh:
        fh.write(
            "rainbow-release:\n  deploy.prepared:\n    - name: r1\n    - project: rainbow\n"
            f"    - source: {url}\n    - checksum: {checksum}\n"
            "rainbow-live:\n  deploy.active:\n    - name: r1\n    - project: rainbow\n"
            "    - require:\n      - deploy: rainbow-release\n"
        )
    ret = loaders.modules.state.sls("dpl_fn_release")
    assert not ret.failed
    assert [r.result for r in ret] == [True, True]
    assert project.current == "r1"
    ret = loaders.modules.state.sls("dpl_fn_release")
    assert [r.changes for r in ret] == [{}, {}]


def test_rolled_back(project):
    project.deploy("r1")
    project.deploy("r2")
    before = project.tree()

    ret = project.states.rolled_back(name=PROJECT, test=True)
    assert ret.result is None
    assert "would be rolled back from r2 to r1" in ret.comment
    assert project.tree() == before

    ret = project.states.rolled_back(name=PROJECT, checks="skip")
    assert ret.result is True
    assert ret.changes == {"current": {"old": "r2", "new": "r1"}}
    assert project.current == "r1"
    assert project.meta("r2")["status"] == "bad"
    before = project.tree()

    # applied again: already rolled back, nothing to do (not "no good release", not further back)
    for test in (False, True):
        ret = project.states.rolled_back(name=PROJECT, checks="skip", test=test)
        assert ret.result is True, ret.comment
        assert ret.changes == {}
    assert project.tree() == before


def test_rolled_back_does_not_keep_going_back(project):
    project.deploy("r0")
    project.deploy("r1")
    project.deploy("r2")
    assert project.states.rolled_back(name=PROJECT, checks="skip").changes["current"]["new"] == "r1"
    ret = project.states.rolled_back(name=PROJECT, checks="skip")
    assert ret.result is True and ret.changes == {}
    assert project.current == "r1"
    assert project.meta("r0")["status"] == "good" and project.meta("r1")["status"] == "good"


def test_rolled_back_to_a_given_release(project):
    project.deploy("r0")
    project.deploy("r1")
    project.deploy("r2")
    ret = project.states.rolled_back(name=PROJECT, to="r0", checks="skip")
    assert ret.result is True and ret.changes == {"current": {"old": "r2", "new": "r0"}}
    ret = project.states.rolled_back(name=PROJECT, to="r0", checks="skip")
    assert ret.result is True and ret.changes == {} and "already on r0" in ret.comment
    ret = project.states.rolled_back(name=PROJECT, to="r9")
    assert ret.result is False and "r9 is not prepared" in ret.comment
    assert project.current == "r0"


def test_rolled_back_without_a_good_release(project):
    project.deploy("r1", status="prepared")
    ret = project.states.rolled_back(name=PROJECT)
    assert ret.result is False and "No good release to roll back to" in ret.comment
    assert project.current == "r1"
