"""
The two install routes of docs/install.md:

1. `pip install .`: the wheel carries the modules and registers them under the `salt.loader`
   entry points; Salt's loader finds them from the installed package alone.
2. the classic route: the underscore folders in file_roots, then `saltutil.sync_all` on the
   minions and `saltutil.sync_runners` + `saltutil.sync_utils` + `saltutil.sync_output` on the master.

On both routes the runner imports the master-side package `deploy_master` (`_utils/`): from the
installed distribution (where it is `saltext_deploy/master`, found under that name once Salt's loader
imported `saltext_deploy`), or from the master's synced `extmods/utils`, which Salt puts on sys.path.

Route 1 needs no daemons (a wheel in a temporary folder); route 2 uses the session cluster's master.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = r"""
import inspect, json, sys
import salt.config, salt.loader
opts = salt.config.minion_config(None)
opts.update({"file_client": "local", "cachedir": sys.argv[1], "extension_modules": sys.argv[1] + "/extmods"})
mods = salt.loader.minion_mods(opts)
states = salt.loader.states(opts, mods, salt.loader.utils(opts), {})
master = salt.config.master_config(None)
master.update({"cachedir": sys.argv[1], "extension_modules": sys.argv[1] + "/extmods-master"})
runners = salt.loader.runner(master)
print(json.dumps({
    "module": inspect.getfile(mods["deploy.prepare"].func),
    "lb": inspect.getfile(mods["deploy_lb.detach"].func),
    "state": inspect.getfile(states["deploy.prepared"].func),
    "runner": inspect.getfile(runners["deploy.release"].func),
    "package": sys.modules["deploy_master"].__file__,
    "source": sys.modules["deploy_master.source.git"].__file__,
}))
"""

# The classic route on a master where salt-deploy is not installed: the probe hides the installed
# distribution (its import finder and its salt.loader entry points), reads a master config as
# salt-run does (which puts extmods/utils on sys.path), loads the runner from extmods/runners and
# runs functions that need no pillar.
CLASSIC_PROBE = r"""
import importlib.util, inspect, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != sys.argv[2] and not p.startswith(sys.argv[2] + "/_")]
import salt.utils.entrypoints as eps
_iter = eps.iter_entry_points
eps.iter_entry_points = lambda group, name=None: [
    ep for ep in _iter(group, name) if not ep.value.startswith("saltext_deploy")]
assert importlib.util.find_spec("saltext_deploy") is None and importlib.util.find_spec("deploy_master") is None, \
    "salt-deploy is importable without the classic route"
import salt.config, salt.loader
opts = salt.config.master_config(sys.argv[1])
runners = salt.loader.runner(opts)
print(json.dumps({
    "runner": inspect.getfile(runners["deploy.release"].func),
    "package": sys.modules["deploy_master"].__file__,
    "source": sys.modules["deploy_master.source.git"].__file__,
    "history": runners["deploy.history"](project="rainbow", limit=1),
    "stats": runners["deploy.stats"](project="nosuchproject"),
}))
"""


def test_pip_install_registers_the_modules_through_entry_points():
    tmp = tempfile.mkdtemp(prefix="dpl-wheel-")
    try:
        wheel_dir = os.path.join(tmp, "wheel")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, REPO],
            check=True, capture_output=True, text=True,
        )
        (wheel,) = [os.path.join(wheel_dir, n) for n in os.listdir(wheel_dir) if n.endswith(".whl")]
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        for path in ("saltext_deploy/_modules/deploy.py", "saltext_deploy/_modules/deploy_lb.py",
                     "saltext_deploy/_states/deploy.py", "saltext_deploy/_runners/deploy.py",
                     "saltext_deploy/master/__init__.py", "saltext_deploy/master/store.py",
                     "saltext_deploy/master/source/git.py"):
            assert path in names
        assert not [n for n in names if n.startswith("deploy_master/")], "the runner's package is namespaced"
        for line in ("module_dirs = saltext_deploy:get_module_dirs", "states_dirs = saltext_deploy:get_states_dirs",
                     "runner_dirs = saltext_deploy:get_runner_dirs"):
            assert line in entry_points
        # install it (no file_roots, no sync) and let Salt's loader find everything from it
        target = os.path.join(tmp, "site")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
                       check=True, capture_output=True, text=True)
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, os.path.join(tmp, "cache")],
            check=True, capture_output=True, text=True, cwd=tmp,
            env={**os.environ, "PYTHONPATH": target},
        )
        found = __import__("json").loads(probe.stdout.strip().splitlines()[-1])
        for kind in ("module", "lb", "state", "runner"):
            assert found[kind].startswith(os.path.join(target, "saltext_deploy")), (kind, found[kind])
        for kind in ("package", "source"):  # the runner's package, from the wheel too
            assert found[kind].startswith(os.path.join(target, "saltext_deploy", "master")), (kind, found[kind])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_classic_route_file_roots_and_sync(cluster):
    c = cluster
    file_root = c.master.config["file_roots"]["base"][0]
    for folder in ("_modules", "_states", "_runners", "_output"):
        shutil.copytree(os.path.join(REPO, folder), os.path.join(file_root, folder),
                        ignore=shutil.ignore_patterns("__pycache__", "__init__.py"), dirs_exist_ok=True)
    shutil.copytree(os.path.join(REPO, "_utils"), os.path.join(file_root, "_utils"),  # a package: keep __init__.py
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    try:
        ret = c.salt.run("saltutil.sync_all", minion_tgt="web-1")
        assert ret.returncode == 0, ret
        assert "modules.deploy" in ret.data["modules"] and "modules.deploy_lb" in ret.data["modules"]
        assert "states.deploy" in ret.data["states"]
        extmods = c.minions["web-1"].config["extension_modules"]
        assert os.path.isfile(os.path.join(extmods, "modules", "deploy.py"))
        assert os.path.isfile(os.path.join(extmods, "states", "deploy.py"))
        runners = c.run_cli.run("saltutil.sync_runners")
        assert runners.returncode == 0, runners
        assert "runners.deploy" in runners.data
        extmods_master = c.master.config["extension_modules"]
        assert os.path.isfile(os.path.join(extmods_master, "runners", "deploy.py"))
        utils = c.run_cli.run("saltutil.sync_utils")
        assert utils.returncode == 0, utils
        assert "utils.deploy_master.store" in utils.data and "utils.deploy_master.source.git" in utils.data
        assert os.path.isfile(os.path.join(extmods_master, "utils", "deploy_master", "source", "git.py"))
        output = c.run_cli.run("saltutil.sync_output")  # salt-run's progress lines and summary
        assert output.returncode == 0, output
        assert {"output.deploy_progress", "output.deploy_summary"} <= set(output.data)
        assert os.path.isfile(os.path.join(extmods_master, "output", "deploy_summary.py"))
        # the runner works on this route alone: its package comes from extmods/utils
        config = os.path.join(c.work, "classic-master.conf")
        with open(config, "w", encoding="utf-8") as fh:
            __import__("json").dump({"extension_modules": extmods_master, "cachedir": c.master.config["cachedir"],
                                     "root_dir": c.master.config["root_dir"], "id": "classic-probe",
                                     "file_roots": {"base": list(c.master.config["file_roots"]["base"])}}, fh)
        probe = subprocess.run([sys.executable, "-c", CLASSIC_PROBE, config, REPO], capture_output=True, text=True,
                               cwd=c.work, check=False)
        assert probe.returncode == 0, probe.stderr[-3000:]
        found = __import__("json").loads(probe.stdout.strip().splitlines()[-1])
        assert found["runner"] == os.path.join(extmods_master, "runners", "deploy.py")
        assert found["package"] == os.path.join(extmods_master, "utils", "deploy_master", "__init__.py")
        assert found["source"] == os.path.join(extmods_master, "utils", "deploy_master", "source", "git.py")
        assert isinstance(found["history"], list)
        assert found["stats"]["releases"] == {"success": 0, "failure": 0, "interrupted": 0, "aborted": 0, "paused": 0}
        # the synced modules answer
        listed = c.call("web-1", "sys.list_functions", "deploy")
        assert "deploy.prepare" in listed.data and "deploy.switch" in listed.data
    finally:
        for folder in ("_modules", "_states", "_runners", "_output", "_utils"):
            shutil.rmtree(os.path.join(file_root, folder), ignore_errors=True)
