"""The ``deploy_summary`` outputter: the end of a salt-run deploy.* run without ``--out``, a pure
function of the runner's return (returns of 4 and 100 nodes, as the runner shapes them)."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "deploy_summary", os.path.join(HERE, "..", "..", "_output", "deploy_summary.py"))
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)

OLD = "rainbow_pro_v1.0.0_master_2016-08-10_10-00-00_xuliangwei"
NEW = "rainbow_pro_v1.1.0_master_2016-08-11_11-11-05_xuliangwei"
WHERE = {"project": "rainbow", "env": "pro"}


def release_return(web=3, failed=(), batch=10, result=None):
    """A release's return: pre-1, then stage gray (web-1), then stage all in batches of ``batch``."""
    webs = [f"web-{i}" for i in range(1, web + 1)]
    nodes = {"pre-1": {"old": OLD, "new": NEW, "result": "ok", "seconds": 0.41}}
    batches = [{"stage": "gray", "batch": 1, "nodes": webs[:1], "seconds": 1.1}]
    rest = webs[1:]
    for i in range(0, len(rest), batch):
        batches.append({"stage": "all", "batch": i // batch + 1, "nodes": rest[i:i + batch], "seconds": 1.2})
    for i, node in enumerate(webs):
        nodes[node] = {"old": OLD, "new": NEW, "result": "ok", "seconds": 0.5, "out_of_lb": round(1.0 + i / 1000, 3),
                       "lb": "ready"}
    for node in failed:
        nodes[node].update(result="failed", error="restart: reload exited 3", new=OLD)
    ret = {"result": result or ("failure" if failed else "success"), "retcode": 1 if failed else 0, "release": NEW,
           "run": "r-1", "seconds": 42.5, "nodes": nodes,
           "timings": {"build": 0.1, "prepare": 3.2, "preprod": 0.5, "batches": batches, "salt_calls": 20},
           "ref": "master", "commit": "5f2b0c1e9a3d4b6f8e7a1c2d3e4f5a6b7c8d9e0f", "version": "v1.1.0"}
    if failed:
        ret["error"] = f"{len(failed)} node(s) failed ({', '.join(failed)}), more than max_failures=0: stopped"
    return ret


def lines(data, fun="release"):
    return summary.summarize(data, fun=fun, **WHERE).splitlines()


@pytest.mark.parametrize("web", [3, 99])
def test_a_successful_release_is_short_and_names_the_release_and_the_next_command(web):
    out = lines(release_return(web=web))
    assert out[0] == "release success in 42.5s, run r-1"
    assert f"release: {NEW}" in out
    assert "  version v1.1.0, commit 5f2b0c1e9a3d, ref master" in out
    assert "  preprod: pre-1 ok" in out
    assert "  stage gray: web-1 ok" in out
    assert f"  stage all: {web - 1} ok" in out if web - 1 > summary.FOLD else "  stage all: web-2, web-3 ok" in out
    assert out[-1] == "next: salt-run deploy.rollback project=rainbow env=pro   (back to the last good release)"
    assert any(line.startswith(f"longest out of the LB: {round(1.0 + (web - 1) / 1000, 3)}s (web-{web})")
               for line in out)
    assert len(out) <= 12
    assert "xuliangwei" not in "\n".join(out[2:])  # the release is named once, not per node


def test_failures_are_always_listed_with_their_error_at_any_scale():
    out = lines(release_return(web=99, failed=("web-7", "web-42")))
    assert out[0] == "release failure (exit 1) in 42.5s, run r-1"
    assert "  stage all: 96 ok" in out
    assert "    web-7 failed: restart: reload exited 3" in out
    assert "    web-42 failed: restart: reload exited 3" in out
    assert any(line.startswith("error: 2 node(s) failed (web-7, web-42)") for line in out)
    assert out[-1].startswith("next: salt-run deploy.rollback project=rainbow env=pro")
    assert len(out) <= 25


def test_lb_states_other_than_ready_are_named():
    data = release_return(web=3)
    data["nodes"]["web-2"]["lb"] = "maint"
    assert "LB states: maint: web-2; ready: web-1, web-3" in lines(data)


def test_a_paused_release_offers_promote_and_abort():
    data = release_return(web=3, result="paused")
    data.update(retcode=5, paused={"stage": "gray", "next": "all", "switched": ["pre-1", "web-1"]})
    out = lines(data)
    assert out[0] == "release paused (exit 5) in 42.5s, run r-1"
    assert "next: salt-run deploy.promote project=rainbow env=pro   (go on)" in out
    assert "   or salt-run deploy.abort project=rainbow env=pro   (revert the nodes it switched)" in out


def test_an_aborted_release_with_its_rollback():
    data = release_return(web=3, result="aborted")
    data.update(retcode=4, error="aborted by SIGTERM: stopped before stage all batch 1", rolled_back={
        "result": "success", "to": {"pre-1": OLD, "web-1": OLD}, "failed": [], "reason": "aborted by SIGTERM",
        "nodes": {"pre-1": {"new": OLD, "result": "ok"}, "web-1": {"new": OLD, "result": "ok"}}})
    out = lines(data)
    assert out[0] == "release aborted (exit 4) in 42.5s, run r-1"
    assert f"rolled back: success, 2 node(s) back to {OLD}" in out
    assert "error: aborted by SIGTERM: stopped before stage all batch 1" in out
    assert out[-1].startswith("next: salt-run deploy.history project=rainbow env=pro")


def test_deploy_abort_of_a_paused_run_whose_revert_failed_on_a_node():
    data = {"result": "aborted", "retcode": 1, "release": NEW, "run": "r-1", "seconds": 3.0, "nodes": {},
            "timings": {}, "rolled_back": {
                "result": "failure", "to": {"web-1": OLD, "web-2": OLD}, "failed": ["web-2"], "reason": "aborted",
                "nodes": {"web-1": {"new": OLD, "result": "ok"},
                          "web-2": {"result": "failed", "error": "restart: exit 1"}}}}
    out = lines(data, fun="abort")
    assert out[0] == "abort aborted (exit 1) in 3.0s, run r-1"
    assert "  web-2 failed: restart: exit 1" in out
    assert out[-1].startswith("next: salt-run deploy.rollback project=rainbow env=pro   (the nodes")


@pytest.mark.parametrize("web", [3, 99])
def test_a_rollback(web):
    data = release_return(web=web)
    for key in ("ref", "commit", "version"):
        del data[key]
    data.update(release=OLD, to=OLD)
    out = lines(data, fun="rollback")
    assert out[0] == "rollback success in 42.5s, run r-1"
    assert f"release: {OLD}" in out
    assert out[-1] == "next: salt-run deploy.release project=rainbow env=pro ref=<fixed ref>   (release a fix)"
    assert len(out) <= 12


def test_an_emergency_rollback_has_one_group_of_nodes():
    nodes = {f"web-{i}": {"old": NEW, "new": OLD, "result": "ok", "seconds": 0.4} for i in range(1, 101)}
    nodes["web-5"].update(result="refused", error="its releases changed again during the rollback: not switched")
    data = {"result": "failure", "retcode": 1, "release": OLD, "seconds": 9.1, "nodes": nodes, "timings": {},
            "to": OLD, "target_from": "record", "changed_since_record": ["web-5"]}
    out = lines(data, fun="rollback")
    assert "  nodes: 99 ok" in out
    assert "    web-5 refused: its releases changed again during the rollback: not switched" in out
    assert "  changed since the master's record: web-5" in out
    assert out[-1].startswith("next: salt-run deploy.rollback project=rainbow env=pro emergency=True")


def test_a_test_true_plan_is_folded():
    plan = ["preprod: pre-1 (not behind the LB): switch, restart, checks"] + [
        f"stage all batch {i}/25: web-{i} (haproxy on lb-1: drain+maint, then restore)" for i in range(1, 26)]
    data = {"result": None, "comment": "test=True: nothing was changed", "release": NEW,
            "commit": "5f2b0c1e9a3d4b6f8e7a1c2d3e4f5a6b7c8d9e0f", "plan": plan, "down": []}
    out = lines(data)
    assert out[0] == "release plan (test=True, nothing was changed)"
    assert f"  {plan[0]}" in out and "  … 18 more" in out
    assert out[-1] == "next: salt-run deploy.release project=rainbow env=pro   (for real)"
    assert len(out) <= 15


def test_refused_and_requested():
    refused = {"result": "refused", "error": "unknown env 'qa' for project 'rainbow': pillar has pro, test",
               "retcode": 2}
    assert lines(refused) == ["release refused (exit 2): unknown env 'qa' for project 'rainbow': pillar has pro, test",
                              "nothing was changed"]
    requested = {"result": "requested", "run": "r-1", "action": "promote",
                 "comment": "run r-1 waits after stage gray: asked it to promote"}
    assert lines(requested, fun="promote") == ["promote requested: run r-1 waits after stage gray: asked it to promote"]


def test_warnings_are_shown():
    data = release_return(web=3)
    data["warnings"] = ["restored LB state of web-2 left detached by an interrupted run: {'web-2': 'ready'}"]
    assert "warning: restored LB state of web-2 left detached by an interrupted run: {'web-2': 'ready'}" in lines(data)


def test_anything_else_is_json_and_the_command_line_names_project_and_env():
    assert summary.summarize(["a"]) == '[\n  "a"\n]'
    assert summary._command_line(["project=rainbow", "env=pro", "ref=v1"]) == ("rainbow", "pro")  # pylint: disable=protected-access
    assert summary._command_line(["rainbow", "pro"]) == ("rainbow", "pro")  # pylint: disable=protected-access
    assert summary._command_line([]) == (None, None)  # pylint: disable=protected-access
    out = summary.summarize(release_return(web=3))
    assert out.splitlines()[-1].startswith("next: salt-run deploy.rollback project=<project> env=<env>")


def test_the_outputter_reads_the_command_line_from_salt_run_opts(monkeypatch):
    monkeypatch.setattr(summary, "__opts__", {"fun": "deploy.rollback", "arg": ["project=rainbow", "env=test"]},
                        raising=False)
    data = release_return(web=3)
    assert summary.output(data).splitlines()[0].startswith("rollback success")
    assert "project=rainbow env=test" in summary.output(data).splitlines()[-1]
