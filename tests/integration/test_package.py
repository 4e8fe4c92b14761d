"""
One package that holds everything (docs/install.md, the pip route): ``python -m build`` makes an sdist
and, from it, a wheel; ``twine check`` passes; the wheel, installed with its dependencies into a fresh
virtualenv of its own (no system or outer site-packages), holds the modules, the runner and its package
(namespaced: ``saltext_deploy/master``, nothing named ``deploy_master`` in site-packages), the console,
the node-preparation states; Salt's loader finds the modules from it, and the real
``salt-run`` answers ``deploy.version`` from it.

Builds no daemons: an sdist, a wheel and a virtualenv of its own, in a temporary folder.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# what the wheel must hold (and the installed tree, below site-packages)
MUST_HOLD = (
    "saltext_deploy/__init__.py", "saltext_deploy/__main__.py",
    "saltext_deploy/_modules/deploy.py", "saltext_deploy/_modules/deploy_lb.py",
    "saltext_deploy/_states/deploy.py",
    "saltext_deploy/_runners/deploy.py", "saltext_deploy/_runners/deploy_notify.py",
    "saltext_deploy/_output/deploy_progress.py", "saltext_deploy/_output/deploy_summary.py",
    "saltext_deploy/_netapi/deploy_console.py",
    "saltext_deploy/master/__init__.py", "saltext_deploy/master/contract.py", "saltext_deploy/master/store.py",
    "saltext_deploy/master/store_etcd.py", "saltext_deploy/master/source/git.py",
    "saltext_deploy/master/source/svn.py",
    "saltext_deploy/console/index.html", "saltext_deploy/console/app.js", "saltext_deploy/console/app.css",
    "saltext_deploy/salt/deploy/init.sls",
)

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
    "state": inspect.getfile(states["deploy.prepared"].func),
    "runner": inspect.getfile(runners["deploy.release"].func),
    "package": sys.modules["deploy_master"].__file__,
    "version": runners["deploy.version"](),
}))
"""


def _version():
    with open(os.path.join(REPO, "_utils", "deploy_master", "__init__.py"), encoding="utf-8") as fh:
        return re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)


def _run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, **kwargs)
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def test_the_wheel_holds_everything_and_installs_into_a_fresh_venv():
    tmp = tempfile.mkdtemp(prefix="dpl-pkg-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        # 1. sdist, then the wheel built from it; twine's metadata check
        copy = os.path.join(tmp, "src")  # a clean copy: no build/ or egg-info left in the checkout
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", ".sandbox", "artifacts"))
        dist = os.path.join(tmp, "dist")
        _run([sys.executable, "-m", "build", "-o", dist, copy], env=env, cwd=tmp)
        built = sorted(os.listdir(dist))
        version = _version()
        assert built == [f"salt_deploy-{version}-py3-none-any.whl", f"salt_deploy-{version}.tar.gz"], built
        _run([sys.executable, "-m", "twine", "check", "--strict", *[os.path.join(dist, n) for n in built]], env=env)
        wheel = os.path.join(dist, built[0])
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            meta = zf.read(f"salt_deploy-{version}.dist-info/METADATA").decode()
            entry_points = zf.read(f"salt_deploy-{version}.dist-info/entry_points.txt").decode()
        missing = [n for n in MUST_HOLD if n not in names]
        assert not missing, missing
        assert f"salt_deploy-{version}.dist-info/LICENSE" in names
        tops = {n.split("/")[0] for n in names}
        assert tops == {"saltext_deploy", f"salt_deploy-{version}.dist-info"}, tops
        assert "License: Apache-2.0" in meta and "Requires-Python: >=3.10" in meta
        for kind in ("module_dirs", "states_dirs", "runner_dirs", "outputter_dirs", "netapi_dirs"):
            assert f"{kind} = saltext_deploy:" in entry_points
        with tarfile.open(os.path.join(dist, built[1])) as tf:
            sdist = set(tf.getnames())
        for name in ("LICENSE", "CHANGELOG.md", "salt/deploy/init.sls"):
            assert f"salt_deploy-{version}/{name}" in sdist, name

        # 2. a fresh venv of its own, the wheel and its dependencies from the index
        venv = os.path.join(tmp, "venv")
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", venv], env=env)
        python = os.path.join(venv, "bin", "python")
        cfg = _run([python, "-c", "import sys; print(sys.prefix != sys.base_prefix)"], env=env, cwd=tmp)
        assert cfg.strip() == "True"
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as fh:
            assert "include-system-site-packages = false" in fh.read()
        _run([python, "-m", "pip", "install", "-q", wheel], env=env, cwd=tmp)
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env,
                    cwd=tmp).strip()
        installed = [n for n in MUST_HOLD if not os.path.isfile(os.path.join(site, n))]
        assert not installed, installed
        assert not os.path.exists(os.path.join(site, "deploy_master")), "a generic top-level name in site-packages"

        # 3. what it says about itself, from a folder that is not the checkout
        assert _run([python, "-m", "saltext_deploy", "version"], env=env, cwd=tmp).strip() == version
        roots = _run([python, "-m", "saltext_deploy", "file-roots"], env=env, cwd=tmp).strip()
        assert roots == os.path.join(site, "saltext_deploy", "salt")
        assert os.path.isfile(os.path.join(roots, "deploy", "init.sls"))

        # 4. Salt's loader finds the modules, the states and the runner (with its package) in it
        found = json.loads(_run([python, "-c", PROBE, os.path.join(tmp, "cache")], env=env,
                                cwd=tmp).strip().splitlines()[-1])
        for kind in ("module", "state", "runner"):
            assert found[kind].startswith(os.path.join(site, "saltext_deploy")), (kind, found[kind])
        assert found["package"] == os.path.join(site, "saltext_deploy", "master", "__init__.py")
        assert found["version"]["salt-deploy"] == version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

