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
