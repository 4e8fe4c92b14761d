"""deploy_lb.swap: the batch just done back in the LB and the next one out, in one call.

Through Salt's loaders on the nginx driver (a real upstream file, rewritten the driver's way;
``nginx`` is ``/bin/true`` here: no daemon).  The LB minion's record of prior states is what
``attach`` and ``deploy.unlock`` restore from: after a swap it holds exactly the servers out.
"""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError


def _lb(folder):
    upstream = os.path.join(folder, "upstream.conf")
    with open(upstream, "w", encoding="utf-8") as fh:
        fh.write("upstream rainbow {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n"
                 "    server 127.0.0.1:8083 down;\n}\n")
    return {"driver": "nginx", "upstream_file": upstream, "nginx": ["/bin/true"],
            "servers": {"web-1": "127.0.0.1:8081", "web-2": "127.0.0.1:8082", "web-3": "127.0.0.1:8083"}}


def _record(project, lb):
    name = "nginx-" + lb["upstream_file"].strip("/").replace("/", "_")
    path = os.path.join(project.loaders.opts["cachedir"], "deploy_lb", f"{name}.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def lb(project):
    folder = os.path.join(project.workdir, "lb")
    os.makedirs(folder)
    conf = _lb(folder)
    yield conf
    project.loaders.modules.deploy_lb.attach(conf, ["web-1", "web-2", "web-3"])


def test_swap_restores_one_batch_and_detaches_the_next(project, lb):
    mod = project.loaders.modules.deploy_lb
    mod.detach(lb, ["web-1"])
    assert mod.status(lb, ["web-1", "web-2"])["states"] == {"web-1": "maint", "web-2": "ready"}
    ret = mod.swap(lb, ["web-2", "web-3"], restore=["web-1"])
    assert ret["restored"] == {"web-1": "ready"}
    assert ret["prior"] == {"web-2": "ready", "web-3": "maint"}
    assert mod.status(lb, ["web-1", "web-2", "web-3"])["states"] == {"web-1": "ready", "web-2": "maint",
                                                                      "web-3": "maint"}
    assert _record(project, lb) == {"web-2": "ready", "web-3": "maint"}
    mod.attach(lb, ["web-2", "web-3"])
    # the operator's maint on web-3 is kept
    assert mod.status(lb, ["web-1", "web-2", "web-3"])["states"] == {"web-1": "ready", "web-2": "ready",
                                                                      "web-3": "maint"}
    assert _record(project, lb) == {}


def test_swap_refuses_a_server_both_restored_and_detached(project, lb):
    mod = project.loaders.modules.deploy_lb
    mod.detach(lb, ["web-1"])
    with pytest.raises(CommandExecutionError, match="web-1 both to restore and to detach"):
        mod.swap(lb, ["web-1", "web-2"], restore=["web-1"])
    assert _record(project, lb) == {"web-1": "ready"}  # nothing changed
    assert mod.status(lb, ["web-2"])["states"] == {"web-2": "ready"}


def _serve():
    """A web server on a free loopback port: what ``wait_up`` asks of an nginx LB's server."""
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  # pylint: disable=invalid-name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_each_acts_on_the_lbs_naming_this_minion_and_waits_until_up(project, lb):
    """``deploy_lb.each``: the runner's one call per step.  Two LBs on this minion (two upstream files),
    a third on another minion (left alone); ``attach`` with ``wait_up`` waits for the servers put back."""
    mod = project.loaders.modules.deploy_lb
    me = project.loaders.opts["id"]
    second = os.path.join(os.path.dirname(lb["upstream_file"]), "upstream-2.conf")
    with open(lb["upstream_file"], encoding="utf-8") as src, open(second, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    server = _serve()
    try:
        web1 = f"127.0.0.1:{server.server_address[1]}"
        for path in (lb["upstream_file"], second):
            with open(path, encoding="utf-8") as fh:
                text = fh.read().replace("127.0.0.1:8081", web1)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        servers = {**lb["servers"], "web-1": web1}
        lbs = [{**lb, "servers": servers, "name": "a", "minion": me},
               {**lb, "servers": servers, "upstream_file": second, "name": "b", "minion": me},
               {"name": "elsewhere", "minion": "lb-9", "driver": "nginx", "upstream_file": "/nonexistent"}]
        out = mod.each(lbs, "detach", ["web-1", "web-2"])
        assert sorted(out["lbs"]) == ["a", "b"] and all(r["ok"] for r in out["lbs"].values()), out
        assert out["lbs"]["b"]["ret"]["prior"] == {"web-1": "ready", "web-2": "ready"}
        # web-1 answers, web-2 (127.0.0.1:8082) does not: web-2 is not UP within the wait
        out = mod.each(lbs, "attach", ["web-1", "web-2"], wait_up=1)
        assert all(r["ret"]["restored"] == {"web-1": "ready", "web-2": "ready"} for r in out["lbs"].values())
        assert set(out["not_up"]) == {"a", "b"} and set(out["not_up"]["a"]) == {"web-2"}, out
        assert 1 <= out["wait_seconds"] < 5
        # swap: web-2 restored but not UP: nothing taken out ("held"), the runner decides
        mod.each(lbs, "detach", ["web-2"])
        out = mod.each(lbs, "swap", ["web-1"], restore=["web-2"], wait_up=0.5)
        assert out["held"] and mod.status(lbs[0], ["web-1"])["states"] == {"web-1": "ready"}
        out = mod.each(lbs, "swap", ["web-2"], restore=["web-1"], wait_up=5)
        assert not out.get("not_up") and not out.get("held"), out
        assert mod.status(lbs[1], ["web-2"])["states"] == {"web-2": "maint"}
        mod.each(lbs, "attach", ["web-2"])
    finally:
        server.shutdown()
