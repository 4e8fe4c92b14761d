"""
The two install routes of README.md, "Install":

1. `pip install .`: the wheel carries the modules and registers them under the `salt.loader`
   entry points; Salt's loader finds them from the installed package alone.
2. the classic route: the underscore folders in file_roots, then `saltutil.sync_all` on the
   minions and `saltutil.sync_runners` on the master.
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
                     "saltext_deploy/_states/deploy.py", "saltext_deploy/_runners/deploy.py"):
            assert path in names
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
        for kind, path in found.items():
            assert path.startswith(os.path.join(target, "saltext_deploy")), (kind, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_classic_route_file_roots_and_sync(cluster):
    c = cluster
    file_root = c.master.config["file_roots"]["base"][0]
    for folder in ("_modules", "_states", "_runners"):
        shutil.copytree(os.path.join(REPO, folder), os.path.join(file_root, folder),
                        ignore=shutil.ignore_patterns("__pycache__", "__init__.py"), dirs_exist_ok=True)
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
        assert os.path.isfile(os.path.join(c.master.config["extension_modules"], "runners", "deploy.py"))
        # the synced modules answer
        listed = c.call("web-1", "sys.list_functions", "deploy")
        assert "deploy.prepare" in listed.data and "deploy.switch" in listed.data
    finally:
        for folder in ("_modules", "_states", "_runners"):
            shutil.rmtree(os.path.join(file_root, folder), ignore_errors=True)
